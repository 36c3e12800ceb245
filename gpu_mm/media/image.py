"""Image decoding to uint8 RGB ``[3, H, W]`` tensors, with one documented colour policy.

Policy (the same pixels transformers' Qwen2-VL processors see when given the decoded image):
* EXIF orientation is applied (as transformers' ``load_image`` and browsers do);
* transparency (alpha channel or palette transparency) is composited onto white (as transformers'
  ``convert_to_rgb`` and qwen-vl-utils' ``to_rgb`` do);
* grayscale is replicated to three channels; CMYK and other modes use Pillow's conversion to RGB;
* 16-bit images are reduced to 8 bits by keeping the high byte (Pillow would clip them instead).
"""

from __future__ import annotations

import dataclasses
import functools
import io
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from ..errors import DecodeError, LimitExceeded, UnsupportedMedia
from ..errors import describe as _describe
from .jpeg_header import read_jpeg_header
from .sources import MediaLimits, Source

__all__ = ["ImageInfo", "decode_image", "decode_jpeg_cuda", "probe_image"]

_JPEG = b"\xff\xd8\xff"


@dataclasses.dataclass(frozen=True)
class ImageInfo:
    """Header facts of an image, read without decoding its pixels."""

    width: int
    height: int
    """As displayed: after the EXIF orientation (transposing orientations swap the stored sides)."""
    format: str
    mode: str
    orientation: int = 1
    """EXIF orientation tag (1-8; 1 = as stored)."""


def _open(src: Source) -> Any:
    from PIL import Image, UnidentifiedImageError

    assert src.data is not None
    try:
        # Pillow warns above its MAX_IMAGE_PIXELS (89.5 Mpx): a line in the log, once per process, since gpu-mm's
        # own max_image_pixels, checked from the header right after, is the limit (and Pillow refuses more than
        # twice its number). Not silenced per call: warnings.catch_warnings is not thread-safe, and planning and
        # slot threads open images at once.
        return Image.open(io.BytesIO(src.data))
    except UnidentifiedImageError:
        raise UnsupportedMedia(src.item, "not a recognised image format") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:  # the warning: under -W error
        raise LimitExceeded(src.item, f"image header declares too many pixels ({exc})") from None
    except Exception as exc:  # noqa: BLE001 - Pillow's plugins raise many types on hostile headers
        raise DecodeError(src.item, f"corrupt image header: {_describe(exc)}") from None


def _pillow_header(src: Source) -> ImageInfo:
    """An encoded image's header facts as Pillow reads them (the EXIF orientation too)."""
    img = _open(src)
    info = ImageInfo(img.width, img.height, img.format or "?", img.mode)
    if img.format in ("JPEG", "MPO", "TIFF", "WEBP") or "exif" in img.info:
        try:
            orientation = img.getexif().get(0x0112, 1)
        except Exception as exc:  # noqa: BLE001 - a hostile EXIF block
            raise DecodeError(src.item, f"corrupt EXIF data: {_describe(exc)}") from None
        if orientation in (2, 3, 4, 5, 6, 7, 8):
            info = dataclasses.replace(info, orientation=int(orientation))
        if orientation in (5, 6, 7, 8):  # transposed: height and width swap
            info = dataclasses.replace(info, width=img.height, height=img.width)
    return info


def probe_image(src: Source, limits: MediaLimits = MediaLimits()) -> ImageInfo:
    """Read size and format of an encoded or decoded image, checking the pixel limit.

    Raises:
        UnsupportedMedia, DecodeError, LimitExceeded.
    """
    if src.kind == "encoded":
        data = src.data or b""
        header = read_jpeg_header(data) if data.startswith(_JPEG) else None
        info = _pillow_header(src) if header is None else ImageInfo(header.width, header.height, "JPEG", header.mode,
                                                                     header.orientation)
    elif src.kind == "pil":
        img = src.pixels
        info = ImageInfo(img.width, img.height, "PIL", img.mode)
    else:
        arr = _as_hwc(src)
        info = ImageInfo(arr.shape[1], arr.shape[0], "array", f"{arr.shape[2]}ch")
    if info.width < 1 or info.height < 1:
        raise DecodeError(src.item, f"image has no pixels ({info.width}x{info.height})")
    if info.width * info.height > limits.max_image_pixels:
        raise LimitExceeded(
            src.item,
            f"{info.width}x{info.height} = {info.width * info.height} pixels is over "
            f"max_image_pixels={limits.max_image_pixels}",
        )
    return info


def decode_image(src: Source, limits: MediaLimits = MediaLimits(), info: ImageInfo | None = None) -> torch.Tensor:
    """Decode one item to a uint8 RGB ``[3, H, W]`` CPU tensor (channels-last in memory) following the module's
    colour policy.

    ``info``: the item's :func:`probe_image` result when the caller has it (its header is then not
    parsed again; the limits were checked when it was made).

    Raises:
        UnsupportedMedia, DecodeError, LimitExceeded.
    """
    if info is None:
        info = probe_image(src, limits)
    if src.kind == "array":
        return _array_to_rgb(src)
    fast = _decode_jpeg_fast(src, info)
    if fast is not None:
        return fast
    img = _open(src) if src.kind == "encoded" else src.pixels
    try:
        return _pil_to_rgb(img)
    except MemoryError:
        raise
    except Exception as exc:  # noqa: BLE001 - Pillow's decoders raise many types on hostile data
        raise DecodeError(src.item, f"cannot decode image: {_describe(exc)}") from None


def apply_exif_orientation(image: torch.Tensor, orientation: int) -> torch.Tensor:
    """Turn a ``[..., H, W]`` image as stored into the image as displayed for EXIF ``orientation``, the way
    Pillow's ``ImageOps.exif_transpose`` does, with tensor ops on any device (nvJPEG does not apply EXIF)."""
    h, w = -2, -1
    if orientation == 2:
        return image.flip(w)
    if orientation == 3:
        return image.flip(h, w)
    if orientation == 4:
        return image.flip(h)
    if orientation == 5:
        return image.transpose(h, w)
    if orientation == 6:
        return image.transpose(h, w).flip(w)  # 90 degrees clockwise
    if orientation == 7:
        return image.transpose(h, w).flip(h, w)
    if orientation == 8:
        return image.transpose(h, w).flip(h)  # 90 degrees counter-clockwise
    return image


_JPEG_OPS = ("image::decode_jpeg(Tensor data, int mode, bool apply_exif_orientation=False) -> Tensor",
              "image::decode_jpegs_cuda(Tensor[] encoded_images, int mode, Device device) -> Tensor[]")
_RGB = 3  # torchvision's ImageReadMode.RGB


def jpeg_codec() -> Callable[[Any, str], Any] | None:
    """torchvision's JPEG decoder (libjpeg-turbo on the CPU, nvJPEG on CUDA) as ``decode(data, device)``: RGB, EXIF not
    applied, ``data`` one uint8 CPU tensor of a file's bytes or a list of them (one batched nvJPEG call on CUDA).
    None once torchvision has none (0.29 deprecated its image codecs for removal, in favour of torchcodec's): Pillow
    then decodes every image (the same libjpeg-turbo pixels) and CUDA has no nvJPEG (``image_decoder="auto"``
    decodes on the CPU). torchcodec's own JPEG decoder is not the fallback: it loads the system's FFmpeg libraries
    (gpu-mm keeps those and decord's out of one process, :func:`gpu_mm.media.video.decord.refuse_together`), it
    applies the EXIF orientation itself on the CPU, and its nvJPEG path has not run on a card here.

    torchvision's registered ops are called directly when their schemas are the ones known here: its Python
    ``decode_jpeg`` warns of the deprecation on every call, and silencing that takes ``warnings.catch_warnings``,
    which is not thread-safe (concurrent slot threads restore each other's filters: an operator's filter can be
    lost and the deprecation can escape, or become an error under ``-W error``)."""
    try:
        from torchvision.io import ImageReadMode, decode_jpeg
    except ImportError:
        return None
    return functools.partial(_decode, *_registered_jpeg_ops(), functools.partial(_decode_through_wrapper, decode_jpeg,
                                                                                 ImageReadMode.RGB))


@functools.cache
def _registered_jpeg_ops() -> tuple[Any, Any]:
    """torchvision's CPU and CUDA JPEG ops, each None where this torchvision does not register it with the schema
    known here (that device then goes through the Python wrapper)."""
    ops = []
    for name, schema in zip(("decode_jpeg", "decode_jpegs_cuda"), _JPEG_OPS):
        try:
            op = getattr(torch.ops.image, name).default
        except (AttributeError, RuntimeError):  # pragma: no cover - not registered by this torchvision
            op = None
        ops.append(op if op is not None and str(op._schema) == schema else None)
    return ops[0], ops[1]


def _decode(cpu: Any, cuda: Any, wrapper: Callable[[Any, str], Any], data: Any, device: str) -> Any:
    where = torch.device(device)
    if where.type == "cpu" and cpu is not None:
        return [cpu(d, _RGB, False) for d in data] if isinstance(data, list) else cpu(data, _RGB, False)
    if where.type == "cuda" and cuda is not None:
        return cuda(data, _RGB, where) if isinstance(data, list) else cuda([data], _RGB, where)[0]
    return wrapper(data, device)  # a torchvision whose ops differ from the ones known here


def _decode_through_wrapper(decode_jpeg: Callable[..., Any], rgb: Any, data: Any, device: str) -> Any:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning, message=".*image decoding.*")
        return decode_jpeg(data, mode=rgb, device=device)


def _decode_jpeg_fast(src: Source, info: ImageInfo, device: str = "cpu") -> torch.Tensor | None:
    """torchvision's JPEG decoder (libjpeg-turbo on the CPU, nvJPEG on CUDA) for plain RGB/grayscale
    JPEGs (``info`` from :func:`probe_image`); None when Pillow must decode instead (CMYK/YCCK, not
    a JPEG, or a torchvision without image codecs)."""
    if not is_plain_jpeg(src, info):
        return None  # not a JPEG, or CMYK / YCCK: Pillow decodes it
    decode = jpeg_codec()
    if decode is None:
        return None  # no JPEG codec in torchvision: Pillow decodes it
    data = torch.frombuffer(bytearray(src.data or b""), dtype=torch.uint8)
    try:
        _before_nvjpeg(device)
        # EXIF is applied here, on either device: torchvision applies it on the CPU only.
        image = decode(data, device)
    except RuntimeError as exc:
        raise DecodeError(src.item, f"corrupt JPEG: {exc}") from None
    # libjpeg-turbo's HWC buffer seen as [3, H, W]: kept so (no copy), the layout torch's uint8 resize
    # kernels are fastest on (2.2x faster here than on a contiguous copy, which itself costs 1.8 ms at 1080p).
    return apply_exif_orientation(image, info.orientation)


def _before_nvjpeg(device: str) -> None:
    """torchvision's CUDA ``decode_jpeg`` allocates its outputs on the current stream but writes them from
    nvJPEG's own stream without waiting for the current one (pytorch/vision#9606): a block freed on the
    current stream while its kernels are still queued can be handed to the decoder and overwritten under
    them. So the current (slot) stream's earlier work finishes first. The decode itself runs under
    torchvision's global lock and ends with a synchronize, so JPEG decodes do not overlap across slots
    anyway; gpu-mm sends a call's JPEGs as one batch instead."""
    if device.startswith("cuda"):
        torch.cuda.current_stream(torch.device(device)).synchronize()


def is_plain_jpeg(src: Source, info: ImageInfo) -> bool:
    """Whether torchvision's JPEG decoder (libjpeg-turbo / nvJPEG) takes this item: an encoded RGB or
    grayscale JPEG (CMYK/YCCK go to Pillow for its colour conversion)."""
    return src.kind == "encoded" and (src.data or b"").startswith(_JPEG) and info.mode in ("RGB", "L")


def jpeg_draft_scale(src: Source, info: ImageInfo, target: tuple[int, int]) -> int:
    """The largest JPEG DCT scale denominator (2, 4 or 8) at which the decoded image still covers ``target``
    (height, width) in both sides; 1 when none does or the item is not a plain JPEG."""
    if not is_plain_jpeg(src, info):
        return 1
    for scale in (8, 4, 2):
        if info.height // scale >= target[0] and info.width // scale >= target[1]:
            return scale
    return 1


def decode_jpeg_scaled(src: Source, info: ImageInfo, scale: int) -> torch.Tensor:
    """A plain JPEG decoded at 1/``scale`` of its size by libjpeg's DCT scaling (Pillow's ``draft``): far less
    work for a large photo that is resized down anyway, at a small cost in fidelity (see the README's fast
    JPEG mode). uint8 ``[3, H/scale, W/scale]`` (sides rounded up), EXIF applied.

    Raises:
        DecodeError: a corrupt JPEG.
    """
    img = _open(src)
    stored = (img.width, img.height)
    try:
        img.draft("RGB", (-(-stored[0] // scale), -(-stored[1] // scale)))
        return _pil_to_rgb(img)
    except (OSError, SyntaxError, ValueError) as exc:
        raise DecodeError(src.item, f"corrupt JPEG: {exc}") from None


def decode_jpegs(items: Sequence[tuple[Source, ImageInfo]], device: str = "cpu") -> list[torch.Tensor]:
    """Decode plain JPEGs (:func:`is_plain_jpeg`) in one call: nvJPEG's batched (hardware where the chip
    has it) decoder on CUDA, libjpeg-turbo one by one on the CPU. uint8 ``[3, H, W]`` each, EXIF applied.

    Raises:
        DecodeError: naming the first corrupt item (the batch is retried one by one to find it).
    """
    decode = jpeg_codec()
    if decode is None:  # Pillow, one by one (image_decoder="nvjpeg" is refused without torchvision's codecs)
        return [decode_image(src, info=info) for src, info in items]
    data = [torch.frombuffer(bytearray(src.data or b""), dtype=torch.uint8) for src, _ in items]
    try:
        _before_nvjpeg(device)
        images = decode(data, device)
    except RuntimeError:
        out = []
        for src, info in items:  # torchvision returns nothing for a failed batch: find the bad item
            image = _decode_jpeg_fast(src, info, device)
            assert image is not None  # plain JPEGs only
            out.append(image)
        return out
    return [apply_exif_orientation(image, info.orientation) for image, (_, info) in zip(images, items)]


def decode_jpeg_cuda(
    src: Source, device: str = "cuda", limits: MediaLimits = MediaLimits(), info: ImageInfo | None = None
) -> torch.Tensor | None:
    """Decode a plain JPEG with nvJPEG into a uint8 ``[3, H, W]`` CUDA tensor; None for anything else
    (the caller then decodes on the CPU and uploads). ``info`` as for :func:`decode_image`.

    Raises:
        DecodeError, LimitExceeded: as :func:`decode_image`.
    """
    if src.kind != "encoded" or not (src.data or b"").startswith(_JPEG):
        return None  # not a JPEG: skip the header parse, the CPU path will do it
    return _decode_jpeg_fast(src, info if info is not None else probe_image(src, limits), device)


BAND_PIXELS = 1 << 20
"""Pixels converted at a time from Pillow's image into the output, so conversion buffers stay small."""


def _pil_to_rgb(img: Any) -> torch.Tensor:
    """Pillow image -> uint8 ``[3, H, W]``, converted band by band into the output: the same per-pixel
    conversions as converting the whole image (``convert``, alpha composite on white), without whole-image
    RGBA, composite, RGB and array copies (a 67 Mpx RGBA PNG took ~25 bytes per pixel that way)."""
    from PIL import Image, ImageOps

    img.load()
    img = ImageOps.exif_transpose(img) or img
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img).astype(np.uint32)
        if img.mode != "I" or arr.max(initial=0) > 255:
            arr = (arr >> 8).astype(np.uint32)
        rgb = np.repeat(arr.astype(np.uint8)[..., None], 3, axis=-1)
        return torch.from_numpy(rgb).permute(2, 0, 1)
    alpha = "A" in img.getbands() or img.info.get("transparency") is not None
    width, height = img.size
    # Filled as H x W x 3 (each band one plain copy) and returned as a [3, H, W] view of it: the layout the
    # resize kernels prefer, see _decode_jpeg_fast.
    out = torch.empty((height, width, 3), dtype=torch.uint8)
    rows = max(1, BAND_PIXELS // max(width, 1))
    for top in range(0, height, rows):
        band = img.crop((0, top, width, min(height, top + rows)))
        if alpha:
            rgba = band.convert("RGBA")
            white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            band = Image.alpha_composite(white, rgba)
        rgb = np.array(band.convert("RGB"))  # a writable band-sized copy
        out[top : top + rgb.shape[0]] = torch.from_numpy(rgb)
    return out.permute(2, 0, 1)


def _as_hwc(src: Source) -> np.ndarray:
    arr = src.pixels
    if isinstance(arr, torch.Tensor):
        arr = arr.detach().cpu().numpy()
    arr = np.asarray(arr)
    if arr.dtype != np.uint8:
        raise UnsupportedMedia(src.item, f"image arrays must be uint8, got {arr.dtype}")
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3:
        raise UnsupportedMedia(src.item, f"image arrays must be HxW, HxWxC or CxHxW, got shape {arr.shape}")
    if arr.shape[-1] not in (1, 3, 4) and arr.shape[0] in (1, 3, 4):
        arr = np.moveaxis(arr, 0, -1)
    if arr.shape[-1] not in (1, 3, 4):
        raise UnsupportedMedia(src.item, f"image arrays need 1, 3 or 4 channels, got shape {arr.shape}")
    return arr


def _array_to_rgb(src: Source) -> torch.Tensor:
    arr = _as_hwc(src)
    if arr.shape[-1] == 1:
        arr = np.repeat(arr, 3, axis=-1)
    elif arr.shape[-1] == 4:
        alpha = arr[..., 3:].astype(np.float32) / 255.0
        arr = np.round(arr[..., :3] * alpha + 255.0 * (1.0 - alpha)).astype(np.uint8)
    if not arr.flags.writeable or any(stride < 0 for stride in arr.strides):
        arr = arr.copy()  # torch views neither read-only nor reversed numpy memory
    return torch.from_numpy(arr).permute(2, 0, 1)  # read in place: nothing downstream writes into it
