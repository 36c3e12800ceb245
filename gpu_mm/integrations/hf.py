"""transformers drop-ins: Qwen2-VL's image and video processors and Qwen3-VL's video processor, with their pixel
work (resize, rescale, normalize, patchify) done by gpu-mm.

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

import weakref
from typing import Any

from transformers import BatchFeature, Qwen2VLImageProcessor, Qwen2VLVideoProcessor, Qwen3VLVideoProcessor
from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessorKwargs
from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessorInitKwargs
from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessorInitKwargs

from ..models.qwen2_vl import Qwen2VLConfig, Qwen2VLPreprocessor
from ..models.qwen3_vl import Qwen3VLConfig, Qwen3VLPreprocessor

__all__ = ["GpuMMQwen2VLImageProcessor", "GpuMMQwen2VLVideoProcessor", "GpuMMQwen3VLVideoProcessor", "handled"]

# The drop-ins take exactly their stock classes' keyword arguments.
GpuMMQwen2VLImageProcessorKwargs = Qwen2VLImageProcessorKwargs
GpuMMQwen2VLVideoProcessorInitKwargs = Qwen2VLVideoProcessorInitKwargs
GpuMMQwen3VLVideoProcessorInitKwargs = Qwen3VLVideoProcessorInitKwargs

# One gpu-mm preprocessor per (drop-in instance, device, config), kept outside the instance so that
# to_dict() / save_pretrained() / deepcopy see only transformers' attributes.
_PREPROCESSORS: weakref.WeakKeyDictionary[Any, dict[Any, Any]] = weakref.WeakKeyDictionary()


def handled(items: list[Any], *, do_resize: bool, resample: Any, do_rescale: bool, rescale_factor: float,
            do_normalize: bool, image_mean: Any, image_std: Any, size: Any, frames: bool) -> bool:
    """Whether gpu-mm computes a ``_preprocess`` call itself: resize on, bicubic, rescale by 1/255, normalize
    on with 1 or 3 values, ``size`` with both pixel bounds, and every item a uint8 3-channel tensor on one
    device (``[C, H, W]`` images or ``[T, C, H, W]`` videos, as transformers hands them over). Any other
    call runs transformers' own code."""
    import torch

    ndim = 4 if frames else 3
    return bool(
        do_resize and do_rescale and do_normalize and rescale_factor == 1 / 255 and _bicubic(resample)
        and _rgb(image_mean) is not None and _rgb(image_std) is not None
        and size is not None and size.shortest_edge and size.longest_edge and items
        and all(isinstance(x, torch.Tensor) and x.dtype == torch.uint8 and x.ndim == ndim and x.shape[-3] == 3
                and x.shape[-1] > 0 and x.shape[-2] > 0 for x in items)
        and len({x.device for x in items}) == 1
    )


class _DropIn:
    """What every drop-in shares: stock names when saved, one gpu-mm preprocessor per config."""

    _stock: type

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = super().to_dict()  # type: ignore[misc]
        key = "video_processor_type" if "video_processor_type" in out else "image_processor_type"
        out[key] = self._stock.__name__
        return out

    def __repr__(self) -> str:
        # What it saves and what a reload gives, word for word (type() still names the drop-in).
        return f"{self._stock.__name__} {self.to_json_string()}"  # type: ignore[attr-defined]

    def _gpu_mm(self, cls: type[Any], items: list[Any], config: Any) -> Any:
        device = items[0].device
        name = "cpu" if device.type == "cpu" else str(device)
        cache = _PREPROCESSORS.setdefault(self, {})
        key = (cls, name, config)
        if key not in cache:
            # No feature cache: a drop-in computes every call, as the transformers class it replaces does.
            cache[key] = cls(name, config=config, video_decoder="pyav", cache_bytes=0)
        return cache[key]


class GpuMMQwen2VLImageProcessor(_DropIn, Qwen2VLImageProcessor):
    """transformers' ``Qwen2VLImageProcessor`` (torchvision backend) with gpu-mm's pixel work."""

    _stock = Qwen2VLImageProcessor
    valid_kwargs = GpuMMQwen2VLImageProcessorKwargs

    def _preprocess(  # type: ignore[override]  # Qwen2VLImageProcessor's own signature
            self, images: list[Any], do_resize: bool, size: Any, resample: Any, do_rescale: bool,
            rescale_factor: float, do_normalize: bool, image_mean: Any, image_std: Any, patch_size: int,
            temporal_patch_size: int, merge_size: int, disable_grouping: bool | None, return_tensors: Any,
            **kwargs: Any) -> BatchFeature:
        mean, std = _rgb(image_mean), _rgb(image_std)
        if mean is None or std is None or not handled(
                images, do_resize=do_resize, resample=resample, do_rescale=do_rescale, rescale_factor=rescale_factor,
                do_normalize=do_normalize, image_mean=image_mean, image_std=image_std, size=size, frames=False):
            return super()._preprocess(  # type: ignore[no-any-return]
                images, do_resize=do_resize, size=size, resample=resample, do_rescale=do_rescale,
                rescale_factor=rescale_factor, do_normalize=do_normalize, image_mean=image_mean,
                image_std=image_std, patch_size=patch_size, temporal_patch_size=temporal_patch_size,
                merge_size=merge_size, disable_grouping=disable_grouping, return_tensors=return_tensors, **kwargs)
        config = Qwen2VLConfig(patch_size=patch_size, temporal_patch_size=temporal_patch_size, merge_size=merge_size,
                               image_min_pixels=int(size.shortest_edge), image_max_pixels=int(size.longest_edge),
                               image_mean=mean, image_std=std)
        pre = self._gpu_mm(Qwen2VLPreprocessor, images, config)
        # Channels-first images handed over channels-last, so no shape is ever ambiguous.
        feats = pre(images=[x.permute(1, 2, 0) for x in images])
        return BatchFeature({"pixel_values": feats.pixel_values, "image_grid_thw": feats.image_grid_thw},
                            tensor_type=return_tensors)


class GpuMMQwen2VLVideoProcessor(_DropIn, Qwen2VLVideoProcessor):
    """transformers' ``Qwen2VLVideoProcessor`` with gpu-mm's pixel work (``cap_pixels_per_frame`` included)."""

    _stock = Qwen2VLVideoProcessor
    valid_kwargs = GpuMMQwen2VLVideoProcessorInitKwargs

    def _preprocess(  # type: ignore[override]  # Qwen2VLVideoProcessor's own signature
            self, videos: list[Any], do_resize: bool, size: Any, resample: Any, do_rescale: bool,
            rescale_factor: float, do_normalize: bool, image_mean: Any, image_std: Any,
            patch_size: int | None = None, temporal_patch_size: int | None = None, merge_size: int | None = None,
            cap_pixels_per_frame: bool | None = None, return_tensors: Any = None, **kwargs: Any) -> BatchFeature:
        mean, std = _rgb(image_mean), _rgb(image_std)
        if mean is None or std is None or not handled(
                videos, do_resize=do_resize, resample=resample, do_rescale=do_rescale, rescale_factor=rescale_factor,
                do_normalize=do_normalize, image_mean=image_mean, image_std=image_std, size=size, frames=True):
            return super()._preprocess(  # type: ignore[no-any-return]
                videos, do_resize=do_resize, size=size, resample=resample, do_rescale=do_rescale,
                rescale_factor=rescale_factor, do_normalize=do_normalize, image_mean=image_mean,
                image_std=image_std, patch_size=patch_size, temporal_patch_size=temporal_patch_size,
                merge_size=merge_size, cap_pixels_per_frame=cap_pixels_per_frame, return_tensors=return_tensors,
                **kwargs)
        ps, tp, ms = patch_size or self.patch_size, temporal_patch_size or self.temporal_patch_size, \
            merge_size or self.merge_size
        config = Qwen2VLConfig(
            patch_size=ps, temporal_patch_size=tp, merge_size=ms, image_mean=mean, image_std=std, sampling="hf",
            video_min_pixels=int(size.shortest_edge), video_max_pixels=int(size.longest_edge),
            cap_pixels_per_frame=bool(cap_pixels_per_frame),
            video_total_pixels=int(self.max_video_tokens * (ps * ms) ** 2 * 0.9))
        pre = self._gpu_mm(Qwen2VLPreprocessor, videos, config)
        feats = pre(videos=[x.permute(0, 2, 3, 1) for x in videos])
        return BatchFeature({"pixel_values_videos": feats.pixel_values_videos, "video_grid_thw": feats.video_grid_thw},
                            tensor_type=return_tensors)


class GpuMMQwen3VLVideoProcessor(_DropIn, Qwen3VLVideoProcessor):
    """transformers' ``Qwen3VLVideoProcessor`` with gpu-mm's pixel work (whole-clip bounds, per-frame cap)."""

    _stock = Qwen3VLVideoProcessor
    valid_kwargs = GpuMMQwen3VLVideoProcessorInitKwargs

    def _preprocess(  # type: ignore[override]  # Qwen3VLVideoProcessor's own signature
            self, videos: list[Any], do_resize: bool, size: Any, resample: Any, do_rescale: bool,
            rescale_factor: float, do_normalize: bool, image_mean: Any, image_std: Any,
            patch_size: int | None = None, temporal_patch_size: int | None = None, merge_size: int | None = None,
            cap_pixels_per_frame: bool | None = None, return_tensors: Any = None, **kwargs: Any) -> BatchFeature:
        mean, std = _rgb(image_mean), _rgb(image_std)
        tp = temporal_patch_size or self.temporal_patch_size
        if mean is None or std is None or any(v.shape[0] < tp for v in videos) or not handled(
                videos, do_resize=do_resize, resample=resample, do_rescale=do_rescale, rescale_factor=rescale_factor,
                do_normalize=do_normalize, image_mean=image_mean, image_std=image_std, size=size, frames=True):
            # (a clip shorter than one temporal patch: transformers refuses it, and so it must here)
            return super()._preprocess(  # type: ignore[no-any-return]
                videos, do_resize=do_resize, size=size, resample=resample, do_rescale=do_rescale,
                rescale_factor=rescale_factor, do_normalize=do_normalize, image_mean=image_mean,
                image_std=image_std, patch_size=patch_size, temporal_patch_size=temporal_patch_size,
                merge_size=merge_size, cap_pixels_per_frame=cap_pixels_per_frame, return_tensors=return_tensors,
                **kwargs)
        config = Qwen3VLConfig(
            patch_size=patch_size or self.patch_size, temporal_patch_size=tp,
            merge_size=merge_size or self.merge_size, video_min_pixels=int(size.shortest_edge),
            video_max_pixels=int(size.longest_edge), image_mean=mean, image_std=std,
            cap_pixels_per_frame=bool(cap_pixels_per_frame), max_video_tokens=self.max_video_tokens)
        pre = self._gpu_mm(Qwen3VLPreprocessor, videos, config)
        feats = pre(videos=[x.permute(0, 2, 3, 1) for x in videos])
        return BatchFeature({"pixel_values_videos": feats.pixel_values_videos, "video_grid_thw": feats.video_grid_thw},
                            tensor_type=return_tensors)


def _rgb(value: Any) -> tuple[float, float, float] | None:
    """A mean or std as three floats (transformers also takes one float for all channels)."""
    if isinstance(value, (int, float)):
        return float(value), float(value), float(value)
    if isinstance(value, (list, tuple)) and len(value) == 3 and all(isinstance(v, (int, float)) for v in value):
        return float(value[0]), float(value[1]), float(value[2])
    return None


def _bicubic(resample: Any) -> bool:
    """Whether transformers' ``resample`` (a PIL enum value or torchvision's mode) means bicubic."""
    from torchvision.transforms.v2 import InterpolationMode

    return resample == 3 or resample == InterpolationMode.BICUBIC


def _sizes(size: Any, min_pixels: Any, max_pixels: Any) -> tuple[int, int]:
    """(min, max) pixels from a transformers ``size`` dict, ``min_pixels`` / ``max_pixels`` taking precedence."""
    size = dict(size or {})
    lo = min_pixels if min_pixels is not None else size.get("shortest_edge")
    hi = max_pixels if max_pixels is not None else size.get("longest_edge")
    return int(lo), int(hi)
