"""What a model family is to gpu-mm: a pure spec (sizes, sampling, output layout), no devices, no pixels.

A family is one module in ``gpu_mm/models/`` holding a frozen dataclass that subclasses :class:`ModelSpec` (its
config: every number that decides its features) and its :class:`gpu_mm.features.Features` subclass, registered with
:func:`gpu_mm.models.register_family`; the pipeline makes its preprocessor class. The pipeline asks the spec where
each image goes (:meth:`ModelSpec.image_target`), which frames of a video to take and at what size
(:meth:`ModelSpec.sample_video`), and what per-video fields the family's model consumes besides pixels
(:meth:`ModelSpec.video_fields`); it does the rest the same way for every family.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch

from ..options import RequestOptions

RESAMPLES = ("bicubic", "bilinear", "pil-bicubic")
"""Resize rules (:func:`gpu_mm.ops.resize`): torch's antialiased bicubic or bilinear kernels, or Pillow's bicubic
filter (code that resizes PIL images)."""

__all__ = ["ImageView", "ModelSpec", "VideoSampling", "fixed_size", "or_default", "pixel_bounds",
           "processor_config_fields", "read_normalization", "read_patching"]


@dataclasses.dataclass(frozen=True)
class VideoSampling:
    """A family's decision for one video: which frames, at what size."""

    indices: list[int]
    """Source frame indices, in order (repeats allowed); padding to the temporal patch is the pipeline's."""
    sample_fps: float
    """Frames per second of the sampled sequence (what the model is told)."""
    target: tuple[int, int]
    """(height, width) every frame is resized to."""
    video_fps: float | None = None
    """The source's frame rate (None: decoded frames were given)."""
    presize: tuple[int, int] | None = None
    """A size to resize to first, bilinearly, before ``target`` (a serving stack that resizes twice, e.g.
    SGLang's Qwen3-VL path); None: one resize."""


@dataclasses.dataclass(frozen=True)
class ImageView:
    """One output image made from a source image (families with ``layout = "pixels"``): ``crop`` (a box of the
    source, before resizing) resized to ``size``, then ``tile`` (a box of the resized image). Views that share
    ``crop`` and ``size`` share one resize."""

    size: tuple[int, int]
    """(height, width) the source (or its ``crop``) is resized to."""
    crop: tuple[int, int, int, int] | None = None
    """(top, left, height, width) of the source, taken before resizing (None: the whole source)."""
    tile: tuple[int, int, int, int] | None = None
    """(top, left, height, width) of the resized image kept (None: all of it)."""

    @property
    def out_size(self) -> tuple[int, int]:
        """(height, width) of the view's output."""
        return (self.tile[2], self.tile[3]) if self.tile is not None else self.size


class ModelSpec:
    """Base of every family's config. Subclasses are frozen dataclasses with at least these fields:
    ``patch_size``, ``temporal_patch_size``, ``merge_size``, ``image_mean``, ``image_std``,
    ``video_resample``, ``output_dtype``; every method is pure arithmetic on the spec and its arguments.
    ``output_dtype=torch.uint8`` means no rescale and no normalization: the features are the resized pixels as
    patch rows, what transformers returns with ``do_rescale=False, do_normalize=False`` (vLLM's default
    ``mm_device_do_normalize`` asks for that and normalizes on the GPU).

    Methods raise ``ValueError`` for an item that cannot be planned (too small, extreme aspect ratio, an
    empty time window); the pipeline turns that into :class:`gpu_mm.LimitExceeded` naming the item.
    """

    family: ClassVar[str]
    """The family's registry name (also its first transformers ``model_type``)."""
    model_types: ClassVar[tuple[str, ...]] = ()
    """transformers ``model_type`` values (``config.json``) this family preprocesses."""
    processor_classes: ClassVar[tuple[str, ...]] = ()
    """transformers processor class names (``processor_class`` in a model folder's configs) of the family."""
    options: ClassVar[frozenset[str]] = frozenset(
        {"fps", "nframes", "video_start", "video_end", "min_pixels", "max_pixels", "total_pixels"})
    """The :class:`gpu_mm.RequestOptions` fields this family reads; a request setting another is refused."""
    modalities: ClassVar[tuple[str, ...]] = ("image", "video")
    """What the family's model takes; an item of another kind is refused."""
    layout: ClassVar[str] = "patches"
    """``patches``: each item's features are rows of flattened patches (``grid`` is its ``grid_thw``; Qwen, GLM).
    ``pixels``: each item's features are whole normalized images, ``(n, 3, height, width)`` (``grid`` is
    ``(n, height, width)``; an image becomes the views :meth:`image_views` names, a video one image per frame)."""
    meta_keys: ClassVar[Mapping[str, str | None]] = {"image": "image_grid_thw", "video": "video_grid_thw"}
    needs_processor_config: ClassVar[bool] = True
    """Whether a model folder of the family must hold an image processor config (False: ``config.json`` says
    all, as for checkpoints that ship no transformers processor)."""
    """Per kind, the key of the per-item tensor beside the pixels (one :meth:`item_meta` per item; None: none)."""
    image_resample: str = "bicubic"
    """How images are resized (one of :data:`RESAMPLES`); a family may make it a config field."""

    patch_size: int
    temporal_patch_size: int
    merge_size: int
    image_mean: tuple[float, float, float]
    image_std: tuple[float, float, float]
    video_resample: str
    output_dtype: torch.dtype

    @property
    def factor(self) -> int:
        """Output sides are multiples of this: one merged token's side in pixels."""
        return self.patch_size * self.merge_size

    @property
    def row_size(self) -> int:
        """Values per output row (one patch of every channel and of the temporal patch's frames)."""
        return 3 * self.temporal_patch_size * self.patch_size**2

    def validate(self) -> None:
        """Raise ``ValueError`` for a setting outside what the family supports."""
        for name in ("patch_size", "temporal_patch_size", "merge_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        for name in ("image_resample", "video_resample"):
            if getattr(self, name) not in RESAMPLES:
                raise ValueError(f"{name} must be one of {RESAMPLES}, got {getattr(self, name)!r}")
        if self.output_dtype not in (torch.float32, torch.float16, torch.bfloat16, torch.uint8):
            raise ValueError(f"output_dtype must be float32, float16, bfloat16 or uint8, got {self.output_dtype!r}")

    def item_shape(self, grid: tuple[int, int, int]) -> tuple[int, ...]:
        """Shape of one item's features: ``(rows, row_size)`` patch rows, or ``(n, 3, height, width)`` images."""
        if self.layout == "pixels":
            return (grid[0], 3, grid[1], grid[2])
        return (math.prod(grid), self.row_size)

    def item_meta(self, grid: tuple[int, int, int]) -> tuple[int, ...]:
        """The item's row of the per-item tensor (:attr:`meta_keys`): its ``grid_thw``; a one-value tuple is
        one number per item (a 1-D tensor)."""
        return grid

    def image_views(self, height: int, width: int, options: RequestOptions) -> list[ImageView]:
        """The outputs a ``height`` x ``width`` image becomes (``layout = "pixels"`` families), in order."""
        raise NotImplementedError

    def grid(self, frames: int, target: tuple[int, int]) -> tuple[int, int, int]:
        """``grid_thw`` of ``frames`` frames at ``target`` (a partial temporal patch is padded)."""
        return (-(-frames // self.temporal_patch_size), target[0] // self.patch_size, target[1] // self.patch_size)

    def image_target(self, height: int, width: int, options: RequestOptions) -> tuple[int, int]:
        raise NotImplementedError

    def sample_video(self, total: int, video_fps: float, size: tuple[int, int],
                     options: RequestOptions) -> VideoSampling:
        """Frames and size for an encoded video of ``total`` frames at ``video_fps``, displayed ``size``."""
        raise NotImplementedError

    def sample_frames(self, frames: int, size: tuple[int, int], options: RequestOptions) -> VideoSampling:
        """Size (and frames: all of them) for ``frames`` already decoded frames of ``size``."""
        raise NotImplementedError

    def video_fields(self, videos: Sequence[VideoSampling]) -> dict[str, Any]:
        """The family's per-call video fields besides pixels and grids (e.g. ``second_per_grid_ts``), as
        attributes of its features class."""
        return {}

    @classmethod
    def from_pretrained_dict(cls, model_type: str, image: Mapping[str, Any],
                             video: Mapping[str, Any] | None) -> ModelSpec:
        """The spec a model folder's ``preprocessor_config.json`` (``image``) and
        ``video_preprocessor_config.json`` (``video``, None when absent) describe."""
        raise NotImplementedError

    @classmethod
    def from_model_folder(cls, model_type: str, image: Mapping[str, Any], video: Mapping[str, Any] | None,
                          model: Mapping[str, Any]) -> ModelSpec:
        """The spec of a model folder: its processor configs (:meth:`from_pretrained_dict`) and, for a family
        whose settings live there, its ``config.json`` (``model``; empty when absent)."""
        return cls.from_pretrained_dict(model_type, image, video)

    def audio_features(self, clips: Sequence[torch.Tensor], device: str | torch.device) -> dict[str, torch.Tensor]:
        """Families that take audio: a call's clips (1-D float32 samples at 16 kHz, in order) as the features their
        processor returns for them, by name (computed together: a padding rule may join them)."""
        raise NotImplementedError

    def audio_working_bytes(self, samples: Sequence[int]) -> int:
        """Families that take audio: a bound on :meth:`audio_features`' memory for clips of ``samples``."""
        raise NotImplementedError

    def audio_token_count(self, frames: int) -> int:
        """Families that take audio: placeholder tokens for a clip of ``frames`` valid feature frames."""
        raise NotImplementedError

    def token_count(self, grid: tuple[int, int, int]) -> int:
        """Placeholder tokens of an item with ``grid``: patches merged ``merge_size`` x ``merge_size``."""
        t, h, w = grid
        return t * h * w // self.merge_size**2


def or_default(value: Any, default: Any) -> Any:
    """``value``, or ``default`` where it is None (a request option left unset)."""
    return default if value is None else value


def pixel_bounds(cfg: Mapping[str, Any]) -> tuple[int | None, int | None]:
    """(min, max) pixels of a transformers processor config: ``min_pixels``/``max_pixels`` or ``size``'s
    ``shortest_edge``/``longest_edge`` (the same bounds under transformers 5's names)."""
    size: Mapping[str, Any] = cfg["size"] if isinstance(cfg.get("size"), Mapping) else {}
    lo = cfg.get("min_pixels", size.get("shortest_edge"))
    hi = cfg.get("max_pixels", size.get("longest_edge"))
    return (int(lo) if isinstance(lo, (int, float)) else None, int(hi) if isinstance(hi, (int, float)) else None)


def read_patching(kw: dict[str, Any], cfg: Mapping[str, Any]) -> None:
    """Patch sizes and normalization constants of a transformers processor config, into ``kw``."""
    for name in ("patch_size", "temporal_patch_size", "merge_size"):
        if isinstance(cfg.get(name), int):
            kw[name] = cfg[name]
    read_normalization(kw, cfg)


def read_normalization(kw: dict[str, Any], cfg: Mapping[str, Any]) -> None:
    """``image_mean`` and ``image_std`` of a transformers processor config (three values each), into ``kw``."""
    for name in ("image_mean", "image_std"):
        value = cfg.get(name)
        if isinstance(value, (list, tuple)) and len(value) == 3:
            kw[name] = tuple(float(v) for v in value)


def fixed_size(cfg: Mapping[str, Any]) -> tuple[int, int] | None:
    """(height, width) of a transformers processor config's fixed ``size`` (``{"height": H, "width": W}``), or
    None where it gives none."""
    size = cfg.get("size")
    if isinstance(size, Mapping) and isinstance(size.get("height"), int) and isinstance(size.get("width"), int):
        return size["height"], size["width"]
    return None


def processor_config_fields(image: Mapping[str, Any], video: Mapping[str, Any] | None, *,
                            video_patching: bool = False, video_ints: tuple[str, ...] = ("min_frames", "max_frames"),
                            video_bools: tuple[str, ...] = ()) -> dict[str, Any]:
    """The spec fields a model folder's processor configs set: patching and normalization, the image pixel
    bounds, the video pixel bounds, ``fps`` and the named integer and boolean video settings (patching too
    from the video config when ``video_patching``). Fields a config leaves out are left out."""
    kw: dict[str, Any] = {}
    read_patching(kw, image)
    for prefix, cfg in (("image", image), ("video", video)):
        if not cfg:
            continue
        if prefix == "video" and video_patching:
            read_patching(kw, cfg)  # the video processor's patching, where it names one
        lo, hi = pixel_bounds(cfg)
        if lo is not None:
            kw[f"{prefix}_min_pixels"] = lo
        if hi is not None:
            kw[f"{prefix}_max_pixels"] = hi
    if video:
        kw.update({name: video[name] for name in video_ints if isinstance(video.get(name), int)})
        kw.update({name: video[name] for name in video_bools if isinstance(video.get(name), bool)})
        if isinstance(video.get("fps"), (int, float)):
            kw["fps"] = float(video["fps"])
    return kw


def spec_to_json(spec: ModelSpec) -> dict[str, Any]:
    """A spec as JSON: its family and every settable field (tuples as lists, a dtype as its name), what
    :func:`spec_from_json` turns back into an equal spec; a service and its clients compare specs this way."""
    fields = {}
    for f in dataclasses.fields(spec):  # type: ignore[arg-type]  # every family's spec is a dataclass
        if not f.init:
            continue
        value = getattr(spec, f.name)
        fields[f.name] = str(value) if isinstance(value, torch.dtype) else list(value) if isinstance(
            value, tuple) else value
    return {"family": spec.family, "fields": fields}


def spec_from_json(data: Mapping[str, Any]) -> ModelSpec:
    """The spec :func:`spec_to_json` wrote.

    Raises:
        ValueError: not such JSON: an unknown family or field, or a value the spec refuses.
    """
    from . import get_family

    if not isinstance(data, Mapping) or not isinstance(data.get("fields"), Mapping):
        raise ValueError("a spec is {'family': name, 'fields': {...}}")
    try:
        cls = get_family(str(data.get("family"))).config_class
    except KeyError as exc:
        raise ValueError(str(exc)) from None
    settable = {f.name: f for f in dataclasses.fields(cls) if f.init}
    kwargs: dict[str, Any] = {}
    for name, value in data["fields"].items():
        if name not in settable:
            raise ValueError(f"{cls.__name__} has no setting {name!r}")
        if isinstance(value, str) and value.startswith("torch."):
            value = getattr(torch, value[len("torch."):], None)
            if not isinstance(value, torch.dtype):
                raise ValueError(f"{name}: not a torch dtype")
        kwargs[name] = tuple(value) if isinstance(value, list) else value
    try:
        return cls(**kwargs)  # type: ignore[no-any-return]
    except TypeError as exc:
        raise ValueError(str(exc)) from None
