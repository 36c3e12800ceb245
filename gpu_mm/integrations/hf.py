"""transformers drop-ins: Qwen2-VL's image and video processors, Qwen3-VL's video processor and GLM-4.1V's image
and video processors (and GLM-4.6V's video processor), with their pixel work (resize, rescale, normalize, patchify)
done by gpu-mm.

Each drop-in subclasses the stock transformers class and overrides only ``_preprocess``, the step that runs
after transformers has fetched, sampled (``do_sample_frames`` with ``video_metadata``), converted and
batched the input. So every input form and option transformers accepts behaves exactly as there: gpu-mm
computes the features when the call is one it implements (see :func:`handled`), with identical output
(the tests compare them exactly); anything else runs transformers' own ``_preprocess``. Nothing is refused.

Saved drop-ins stay stock: ``to_dict`` (and so ``save_pretrained``) writes the transformers class name, so a
folder saved with the drop-ins loads with ``AutoImageProcessor`` / ``AutoVideoProcessor`` /
``AutoProcessor`` wherever transformers is installed, gpu-mm or not; ``GpuMM...from_pretrained(folder)``
gets the drop-ins back. Each drop-in's valid-kwargs class is its stock class's (named
``<DropIn>Kwargs`` / ``<DropIn>InitKwargs`` here, as transformers' convention asks).
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import numpy as np
from transformers import (
    BatchFeature,
    Gemma3ImageProcessor,
    Glm4vImageProcessor,
    Glm4vVideoProcessor,
    Glm46VVideoProcessor,
    GotOcr2ImageProcessor,
    InternVLVideoProcessor,
    Qwen2VLImageProcessor,
    Qwen2VLVideoProcessor,
    Qwen3VLVideoProcessor,
    WhisperFeatureExtractor,
)
from transformers.models.gemma3.image_processing_gemma3 import Gemma3ImageProcessorKwargs
from transformers.models.glm4v.image_processing_glm4v import Glm4vImageProcessorKwargs
from transformers.models.glm4v.video_processing_glm4v import Glm4vVideoProcessorInitKwargs
from transformers.models.glm46v.video_processing_glm46v import Glm46VVideoProcessorInitKwargs
from transformers.models.got_ocr2.image_processing_got_ocr2 import GotOcr2ImageProcessorKwargs
from transformers.models.internvl.video_processing_internvl import InternVLVideoProcessorInitKwargs
from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessorKwargs
from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessorInitKwargs
from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessorInitKwargs

from ..audio import log_mel
from ..models.gemma3 import Gemma3Config
from ..models.glm4v import Glm4vConfig
from ..models.internvl import InternVLConfig
from ..models.qwen2_vl import Qwen2VLConfig
from ..models.qwen3_vl import Qwen3VLConfig
from ..pipeline.families import (
    Gemma3Preprocessor,
    Glm4vPreprocessor,
    InternVLPreprocessor,
    Qwen2VLPreprocessor,
    Qwen3VLPreprocessor,
)
from .service import service_calls

__all__ = ["GpuMMGemma3ImageProcessor", "GpuMMGlm46VVideoProcessor", "GpuMMGlm4vImageProcessor",
           "GpuMMGlm4vVideoProcessor", "GpuMMGotOcr2ImageProcessor", "GpuMMInternVLVideoProcessor",
           "GpuMMQwen2VLImageProcessor", "GpuMMQwen2VLVideoProcessor", "GpuMMQwen3VLVideoProcessor",
           "GpuMMWhisperFeatureExtractor", "adopt_drop_ins",
           "drop_in_classes", "handled", "pixel_mode"]

# The drop-ins take exactly their stock classes' keyword arguments.
GpuMMQwen2VLImageProcessorKwargs = Qwen2VLImageProcessorKwargs
GpuMMQwen2VLVideoProcessorInitKwargs = Qwen2VLVideoProcessorInitKwargs
GpuMMQwen3VLVideoProcessorInitKwargs = Qwen3VLVideoProcessorInitKwargs
GpuMMGlm4vImageProcessorKwargs = Glm4vImageProcessorKwargs
GpuMMGotOcr2ImageProcessorKwargs = GotOcr2ImageProcessorKwargs
GpuMMGemma3ImageProcessorKwargs = Gemma3ImageProcessorKwargs
GpuMMInternVLVideoProcessorInitKwargs = InternVLVideoProcessorInitKwargs
GpuMMGlm4vVideoProcessorInitKwargs = Glm4vVideoProcessorInitKwargs
GpuMMGlm46VVideoProcessorInitKwargs = Glm46VVideoProcessorInitKwargs

# One gpu-mm preprocessor per (drop-in instance, device, config), kept outside the instance so that
# to_dict() / save_pretrained() / deepcopy see only transformers' attributes.
_PREPROCESSORS: weakref.WeakKeyDictionary[Any, dict[Any, Any]] = weakref.WeakKeyDictionary()


def handled(items: list[Any], kwargs: dict[str, Any], *, frames: bool) -> bool:
    """Whether gpu-mm computes a ``_preprocess`` call (its keyword arguments ``kwargs``) itself: resize on,
    bicubic, one of the two pixel modes (:func:`pixel_mode`), ``size`` with both pixel bounds, and every item
    a uint8 3-channel tensor on one device (``[C, H, W]`` images or ``[T, C, H, W]`` videos, as transformers
    hands them over). Any other call runs transformers' own code."""
    size = kwargs.get("size")
    return bool(_pixel_call(kwargs, "bicubic") and size is not None and size.shortest_edge and size.longest_edge
                and _pixel_tensors(items, frames))


def fixed_size_handled(items: list[Any], kwargs: dict[str, Any], resample: str, *, frames: bool = False) -> bool:
    """:func:`handled` for the processors that resize every image to one size (``size`` with ``height`` and
    ``width``): resize on with ``resample``, no center crop, one of the two pixel modes, uint8 ``[C, H, W]``
    images (``[T, C, H, W]`` videos) on one device."""
    size = kwargs.get("size")
    return bool(_pixel_call(kwargs, resample) and not kwargs.get("do_center_crop") and size is not None
                and size.height and size.width and _pixel_tensors(items, frames))


def _pixel_call(kwargs: dict[str, Any], resample: str) -> bool:
    """Resize on with ``resample``, in one of the two pixel modes."""
    return bool(kwargs.get("do_resize") and _resample(kwargs.get("resample")) == resample
                and pixel_mode(kwargs) is not None)


def _pixel_tensors(items: list[Any], frames: bool) -> bool:
    """Every item a non-empty uint8 3-channel tensor (``[C, H, W]``, or ``[T, C, H, W]`` with ``frames``), all on
    one device."""
    import torch

    ndim = 4 if frames else 3
    return bool(items) and all(
        isinstance(x, torch.Tensor) and x.dtype == torch.uint8 and x.ndim == ndim and x.shape[-3] == 3
        and x.shape[-1] > 0 and x.shape[-2] > 0 for x in items) and len({x.device for x in items}) == 1


def pixel_mode(kwargs: dict[str, Any]) -> Any:
    """The output dtype of a call's pixel options, when gpu-mm implements them: ``torch.float32`` for rescale by
    1/255 then normalize (1 or 3 values each), ``torch.uint8`` for neither (the resized pixels as they are:
    vLLM's ``mm_device_do_normalize`` asks for that); None for any other combination."""
    import torch

    rescale, normalize = kwargs.get("do_rescale"), kwargs.get("do_normalize")
    if (rescale and normalize and kwargs.get("rescale_factor") == 1 / 255
            and _rgb(kwargs.get("image_mean")) is not None and _rgb(kwargs.get("image_std")) is not None):
        return torch.float32
    if not rescale and not normalize:
        return torch.uint8
    return None


class _DropIn:
    """What every drop-in shares: the choice between gpu-mm and transformers' own ``_preprocess``, stock names
    when saved, one gpu-mm preprocessor per config."""

    _stock: type
    _items: ClassVar[str]
    """The name transformers passes the batch under: ``images`` (positionally) or ``videos`` (by keyword)."""

    def _preprocess(self, *args: Any, **kwargs: Any) -> BatchFeature:
        items = args[0] if args else kwargs[self._items]
        options = {k: v for k, v in kwargs.items() if k != self._items}
        if len(args) <= 1 and self._handles(items, options) and self._computes(items, options):
            return self._features(items, options)
        return super()._preprocess(*args, **kwargs)  # type: ignore[misc,no-any-return]

    def _handles(self, items: list[Any], options: dict[str, Any]) -> bool:
        """Whether the call is one gpu-mm implements (:func:`handled`, or :func:`fixed_size_handled` for the
        fixed-size processors)."""
        return handled(items, options, frames=self._items == "videos")

    def _computes(self, items: list[Any], options: dict[str, Any]) -> bool:
        """A family's further condition beyond :meth:`_handles`."""
        return True

    def _features(self, items: list[Any], options: dict[str, Any]) -> BatchFeature:
        raise NotImplementedError

    def _image_rows(self, config_class: type[Any], preprocessor: type[Any], images: list[Any],
                    options: dict[str, Any]) -> BatchFeature:
        """Patch-row families' images (Qwen2-VL, GLM): the call's patching, pixel bounds and pixel mode."""
        ps, tp, ms = self._patching(options)
        size = options["size"]
        config = config_class(patch_size=ps, temporal_patch_size=tp, merge_size=ms,
                              image_min_pixels=int(size.shortest_edge), image_max_pixels=int(size.longest_edge),
                              **self._pixels(options))
        # Channels-first images handed over channels-last, so no shape is ever ambiguous.
        feats = self._run(preprocessor, images, config, images=[x.permute(1, 2, 0) for x in images])
        return BatchFeature({"pixel_values": feats.pixel_values, "image_grid_thw": feats.image_grid_thw},
                            tensor_type=options.get("return_tensors"))

    def _patching(self, options: dict[str, Any]) -> tuple[int, int, int]:
        """(patch, temporal patch, merge) of a call: its options, else the processor's own."""
        return tuple(options.get(name) or getattr(self, name)  # type: ignore[return-value]
                     for name in ("patch_size", "temporal_patch_size", "merge_size"))

    @staticmethod
    def _pixels(options: dict[str, Any]) -> dict[str, Any]:
        """The config fields of a call's pixel mode: ``output_dtype``, and the mean and std as three floats each
        when it normalizes (:func:`handled` made sure they are)."""
        dtype = pixel_mode(options)
        mean, std = _rgb(options.get("image_mean")), _rgb(options.get("image_std"))
        if mean is None or std is None:  # uint8 output: no normalization, so they do not matter
            return {"output_dtype": dtype}
        return {"output_dtype": dtype, "image_mean": mean, "image_std": std}

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = super().to_dict()  # type: ignore[misc]
        key = "video_processor_type" if "video_processor_type" in out else "image_processor_type"
        out[key] = self._stock.__name__
        return out

    def __repr__(self) -> str:
        # What it saves and what a reload gives, word for word (type() still names the drop-in).
        return f"{self._stock.__name__} {self.to_json_string()}"  # type: ignore[attr-defined]

    def _run(self, cls: type[Any], items: list[Any], config: Any, **call: Any) -> Any:
        """``items`` through this drop-in's gpu-mm preprocessor for ``config`` (made once per device and config;
        no feature cache: a drop-in computes every call, as the transformers class it replaces does), or through the
        node's service when one serves the family (:mod:`gpu_mm.integrations.service`; pixels on the CPU)."""
        device = items[0].device
        if device.type == "cpu":
            service = service_calls(cls.config_class.family)
            if service is not None:
                return service(config, **call)
        name = "cpu" if device.type == "cpu" else str(device)
        cache = _PREPROCESSORS.setdefault(self, {})
        key = (cls, name, config)
        if key not in cache:
            cache[key] = cls(name, config=config, video_decoder="pyav", cache_bytes=0)
        return cache[key](**call)


class GpuMMQwen2VLImageProcessor(_DropIn, Qwen2VLImageProcessor):  # type: ignore[misc]  # _DropIn._preprocess takes the stock call
    """transformers' ``Qwen2VLImageProcessor`` (torchvision backend) with gpu-mm's pixel work."""

    _stock = Qwen2VLImageProcessor
    _items = "images"
    valid_kwargs = GpuMMQwen2VLImageProcessorKwargs

    def _features(self, images: list[Any], options: dict[str, Any]) -> BatchFeature:
        return self._image_rows(Qwen2VLConfig, Qwen2VLPreprocessor, images, options)


class GpuMMQwen2VLVideoProcessor(_DropIn, Qwen2VLVideoProcessor):  # type: ignore[misc]  # _DropIn._preprocess takes the stock call
    """transformers' ``Qwen2VLVideoProcessor`` with gpu-mm's pixel work (``cap_pixels_per_frame`` included)."""

    _stock = Qwen2VLVideoProcessor
    _items = "videos"
    valid_kwargs = GpuMMQwen2VLVideoProcessorInitKwargs

    def _features(self, videos: list[Any], options: dict[str, Any]) -> BatchFeature:
        ps, tp, ms = self._patching(options)
        size = options["size"]
        config = Qwen2VLConfig(
            patch_size=ps, temporal_patch_size=tp, merge_size=ms, **self._pixels(options), sampling="hf",
            video_min_pixels=int(size.shortest_edge), video_max_pixels=int(size.longest_edge),
            cap_pixels_per_frame=bool(options.get("cap_pixels_per_frame")),
            video_total_pixels=int(self.max_video_tokens * (ps * ms) ** 2 * 0.9))
        return _video_features(self._run(Qwen2VLPreprocessor, videos, config,
                                         videos=[x.permute(0, 2, 3, 1) for x in videos]), options)


class _WholeClipVideo(_DropIn):
    """Video families whose pixel budget covers the whole clip (Qwen3-VL, GLM): transformers refuses a clip
    shorter than one temporal patch, and so these leave it to transformers."""

    _items = "videos"

    def _computes(self, videos: list[Any], options: dict[str, Any]) -> bool:
        return all(v.shape[0] >= self._patching(options)[1] for v in videos)


class GpuMMQwen3VLVideoProcessor(_WholeClipVideo, Qwen3VLVideoProcessor):  # type: ignore[misc]  # _DropIn._preprocess takes the stock call
    """transformers' ``Qwen3VLVideoProcessor`` with gpu-mm's pixel work (whole-clip bounds, per-frame cap)."""

    _stock = Qwen3VLVideoProcessor
    valid_kwargs = GpuMMQwen3VLVideoProcessorInitKwargs

    def _features(self, videos: list[Any], options: dict[str, Any]) -> BatchFeature:
        ps, tp, ms = self._patching(options)
        size = options["size"]
        config = Qwen3VLConfig(
            patch_size=ps, temporal_patch_size=tp, merge_size=ms, video_min_pixels=int(size.shortest_edge),
            video_max_pixels=int(size.longest_edge), **self._pixels(options),
            cap_pixels_per_frame=bool(options.get("cap_pixels_per_frame")), max_video_tokens=self.max_video_tokens)
        return _video_features(self._run(Qwen3VLPreprocessor, videos, config,
                                         videos=[x.permute(0, 2, 3, 1) for x in videos]), options)


class GpuMMGlm4vImageProcessor(_DropIn, Glm4vImageProcessor):  # type: ignore[misc]  # _DropIn._preprocess takes the stock call
    """transformers' ``Glm4vImageProcessor`` (GLM-4.1V, 4.5V; GLM-4.6V's is the same computation) with gpu-mm's
    pixel work: GLM's budget counting the temporal patch."""

    _stock = Glm4vImageProcessor
    _items = "images"
    valid_kwargs = GpuMMGlm4vImageProcessorKwargs

    def _features(self, images: list[Any], options: dict[str, Any]) -> BatchFeature:
        return self._image_rows(Glm4vConfig, Glm4vPreprocessor, images, options)


class _GlmVideo(_WholeClipVideo):
    """GLM's video pixel work, the same for GLM-4.1V and GLM-4.6V (their frame rules run before ``_preprocess``):
    the whole clip's budget shared by its frames."""

    def _features(self, videos: list[Any], options: dict[str, Any]) -> BatchFeature:
        ps, tp, ms = self._patching(options)
        size = options["size"]
        config = Glm4vConfig(patch_size=ps, temporal_patch_size=tp, merge_size=ms,
                             video_min_pixels=int(size.shortest_edge), video_max_pixels=int(size.longest_edge),
                             **self._pixels(options))
        return _video_features(self._run(Glm4vPreprocessor, videos, config,
                                         videos=[x.permute(0, 2, 3, 1) for x in videos]), options)


class GpuMMGlm4vVideoProcessor(_GlmVideo, Glm4vVideoProcessor):  # type: ignore[misc]  # _DropIn._preprocess takes the stock call
    """transformers' ``Glm4vVideoProcessor`` with gpu-mm's pixel work."""

    _stock = Glm4vVideoProcessor
    valid_kwargs = GpuMMGlm4vVideoProcessorInitKwargs


class GpuMMGlm46VVideoProcessor(_GlmVideo, Glm46VVideoProcessor):  # type: ignore[misc]  # _DropIn._preprocess takes the stock call
    """transformers' ``Glm46VVideoProcessor`` with gpu-mm's pixel work."""

    _stock = Glm46VVideoProcessor
    valid_kwargs = GpuMMGlm46VVideoProcessorInitKwargs


class _WholeImages(_DropIn):
    """Drop-ins whose outputs are whole images (tiles, crops): transformers returns a list of them per call and a
    count per image, made tensors by ``return_tensors``; so do these."""

    _items = "images"
    _resample: ClassVar[str]

    def _handles(self, items: list[Any], options: dict[str, Any]) -> bool:
        return fixed_size_handled(items, options, self._resample)

    def _whole(self, cls: type[Any], images: list[Any], config: Any, count: str,
               options: dict[str, Any]) -> BatchFeature:
        """The images' outputs as transformers lists them, with the family's per-image ``count``."""
        feats = self._run(cls, images, config, images=[x.permute(1, 2, 0) for x in images])
        return BatchFeature({"pixel_values": list(feats.pixel_values.unbind(0)),
                             count: getattr(feats, count).tolist()}, tensor_type=options.get("return_tensors"))


class GpuMMGotOcr2ImageProcessor(_WholeImages, GotOcr2ImageProcessor):  # type: ignore[misc]  # _DropIn._preprocess takes the stock call
    """transformers' ``GotOcr2ImageProcessor`` (InternVL's, and GOT-OCR2's) with gpu-mm's pixel work: the tile grid,
    one resize of the whole image, the tiles and the thumbnail (``crop_to_patches``), or one resize."""

    _stock = GotOcr2ImageProcessor
    _resample = "bicubic"
    valid_kwargs = GpuMMGotOcr2ImageProcessorKwargs

    def _features(self, images: list[Any], options: dict[str, Any]) -> BatchFeature:
        size = options["size"]
        config = InternVLConfig(tile_size=(int(size.height), int(size.width)),
                                crop_to_patches=bool(options.get("crop_to_patches")),
                                min_patches=int(options.get("min_patches") or 1),
                                max_patches=int(options.get("max_patches") or 12), **self._pixels(options))
        return self._whole(InternVLPreprocessor, images, config, "num_patches", options)


class GpuMMGemma3ImageProcessor(_WholeImages, Gemma3ImageProcessor):  # type: ignore[misc]  # _DropIn._preprocess takes the stock call
    """transformers' ``Gemma3ImageProcessor`` with gpu-mm's pixel work: one fixed-size bilinear resize, and with
    ``do_pan_and_scan`` the crops after the whole image."""

    _stock = Gemma3ImageProcessor
    _resample = "bilinear"
    valid_kwargs = GpuMMGemma3ImageProcessorKwargs

    def _computes(self, images: list[Any], options: dict[str, Any]) -> bool:
        # Pan-and-scan needs its three settings (transformers fails without them; so must this) and at least two
        # crops (gpu-mm's config refuses fewer; transformers' own code handles that case).
        names = ("pan_and_scan_min_crop_size", "pan_and_scan_max_num_crops", "pan_and_scan_min_ratio_to_activate")
        if not options.get("do_pan_and_scan"):
            return True
        return all(options.get(n) is not None for n in names) and int(options["pan_and_scan_max_num_crops"]) >= 2

    def _features(self, images: list[Any], options: dict[str, Any]) -> BatchFeature:
        size = options["size"]
        pan: dict[str, Any] = {}
        if options.get("do_pan_and_scan"):
            pan = {"do_pan_and_scan": True,
                   "pan_and_scan_min_crop_size": int(options["pan_and_scan_min_crop_size"]),
                   "pan_and_scan_max_num_crops": int(options["pan_and_scan_max_num_crops"]),
                   "pan_and_scan_min_ratio_to_activate": float(options["pan_and_scan_min_ratio_to_activate"])}
        config = Gemma3Config(size=(int(size.height), int(size.width)), **pan, **self._pixels(options))
        return self._whole(Gemma3Preprocessor, images, config, "num_crops", options)


class GpuMMInternVLVideoProcessor(_DropIn, InternVLVideoProcessor):  # type: ignore[misc]  # _DropIn._preprocess takes the stock call
    """transformers' ``InternVLVideoProcessor`` with gpu-mm's pixel work: each frame resized to one tile."""

    _stock = InternVLVideoProcessor
    _items = "videos"
    valid_kwargs = GpuMMInternVLVideoProcessorInitKwargs

    def _handles(self, videos: list[Any], options: dict[str, Any]) -> bool:
        return fixed_size_handled(videos, options, "bicubic", frames=True)

    def _features(self, videos: list[Any], options: dict[str, Any]) -> BatchFeature:
        size = options["size"]
        config = InternVLConfig(tile_size=(int(size.height), int(size.width)), **self._pixels(options))
        feats = self._run(InternVLPreprocessor, videos, config, videos=[x.permute(0, 2, 3, 1) for x in videos])
        per_video = list(feats.pixel_values_videos.split(feats.video_num_patches.tolist()))
        return BatchFeature({"pixel_values_videos": per_video}, tensor_type=options.get("return_tensors"))


def _resample(resample: Any) -> str | None:
    """``bicubic`` or ``bilinear`` for transformers' ``resample`` (a PIL enum value or torchvision's mode)."""
    from torchvision.transforms.v2 import InterpolationMode

    if resample == 3 or resample == InterpolationMode.BICUBIC:
        return "bicubic"
    if resample == 2 or resample == InterpolationMode.BILINEAR:
        return "bilinear"
    return None


def _video_features(feats: Any, options: dict[str, Any]) -> BatchFeature:
    return BatchFeature({"pixel_values_videos": feats.pixel_values_videos, "video_grid_thw": feats.video_grid_thw},
                        tensor_type=options.get("return_tensors"))


def _rgb(value: Any) -> tuple[float, float, float] | None:
    """A mean or std as three floats (transformers also takes one float for all channels)."""
    if isinstance(value, (int, float)):
        return float(value), float(value), float(value)
    if isinstance(value, (list, tuple)) and len(value) == 3 and all(isinstance(v, (int, float)) for v in value):
        return float(value[0]), float(value[1]), float(value[2])
    return None


def _bicubic(resample: Any) -> bool:
    """Whether transformers' ``resample`` (a PIL enum value or torchvision's mode) means bicubic."""
    return _resample(resample) == "bicubic"


def _sizes(size: Any, min_pixels: Any, max_pixels: Any) -> tuple[int, int]:
    """(min, max) pixels from a transformers ``size`` dict, ``min_pixels`` / ``max_pixels`` taking precedence."""
    size = dict(size or {})
    lo = min_pixels if min_pixels is not None else size.get("shortest_edge")
    hi = max_pixels if max_pixels is not None else size.get("longest_edge")
    return int(lo), int(hi)


class GpuMMWhisperFeatureExtractor(WhisperFeatureExtractor):
    """transformers' ``WhisperFeatureExtractor`` (the audio front end of Qwen2.5-Omni and Qwen3-Omni) with gpu-mm's
    log-mel (:func:`gpu_mm.audio.log_mel`): the same features, each clip's trailing zeros (its padding, or silence
    that ends it) filled with their known value rather than transformed, so a clip padded to 300 s costs about its
    own length. A dithered extractor, or one not at 16 kHz with n_fft 400 and hop 160, runs transformers' own code.
    Saved, it names the stock class."""

    _stock = WhisperFeatureExtractor

    def _torch_extract_fbank_features(self, waveform: Any, device: str = "cpu") -> Any:
        if (self.dither != 0.0 or (self.sampling_rate, self.n_fft, self.hop_length) != (16000, 400, 160)
                or waveform.shape[-1] <= self.n_fft // 2):
            return super()._torch_extract_fbank_features(waveform, device)
        rows = waveform[None] if waveform.ndim == 1 else waveform
        clips = []
        for row in rows:
            nonzero = np.flatnonzero(row)
            clips.append(row[: nonzero[-1] + 1] if nonzero.size else row[:0])
        feats, _ = log_mel(clips, num_mels=self.feature_size, padding="max_length", max_samples=rows.shape[-1],
                           device=device)
        out = feats.cpu().numpy()
        return out[0] if waveform.ndim == 1 else out

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = super().to_dict()
        out["feature_extractor_type"] = self._stock.__name__
        return out


# ------------------------------------------------------------------------------------------ adopting drop-ins


def drop_in_classes() -> dict[type, type]:
    """Each stock transformers class that has a drop-in -> the drop-in."""
    return {drop_in._stock: drop_in for drop_in in (
        GpuMMQwen2VLImageProcessor, GpuMMQwen2VLVideoProcessor, GpuMMQwen3VLVideoProcessor, GpuMMGlm4vImageProcessor,
        GpuMMGlm4vVideoProcessor, GpuMMGlm46VVideoProcessor, GpuMMGotOcr2ImageProcessor, GpuMMInternVLVideoProcessor,
        GpuMMGemma3ImageProcessor, GpuMMWhisperFeatureExtractor)}


_ADOPTED: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()
"""Each stock component met -> its drop-in (one per stock instance: a drop-in keeps its gpu-mm preprocessors for its
life)."""
_adopt_lock = threading.Lock()


def adopt_drop_ins(processor: Any, others: Mapping[type, Callable[[Any], Any]] | None = None) -> Any:
    """Put gpu-mm's drop-ins in place of a processor's stock ``image_processor``, ``video_processor`` and
    ``feature_extractor`` (same settings: built from the stock one's ``to_dict``, once per stock instance); other
    components stay. ``others``: further classes -> how to make their drop-in from an instance (an engine's own
    processor classes). An engine may put a (cached) stock component back on a cached processor, so callers may
    adopt on every call. Returns ``processor``."""
    swaps = drop_in_classes()
    for attr in ("image_processor", "video_processor", "feature_extractor"):
        current: Any = getattr(processor, attr, None)
        make: Any = (others or {}).get(type(current))
        if make is None and type(current) in swaps:
            make = lambda stock, cls=swaps[type(current)]: cls.from_dict(stock.to_dict())  # noqa: E731
        if make is None:
            continue
        with _adopt_lock:
            drop_in = _ADOPTED.get(current)
            if drop_in is None:
                drop_in = _ADOPTED[current] = make(current)
        setattr(processor, attr, drop_in)
    return processor
