"""transformers drop-ins: Qwen2-VL image and video processors and the Qwen3-VL video processor, whose
work is done by gpu-mm.

``GpuMMQwen2VLImageProcessor`` / ``GpuMMQwen2VLVideoProcessor`` subclass transformers' own classes, so
``Qwen2VLProcessor(image_processor=..., video_processor=..., tokenizer=...)`` accepts them and
``processor(text=..., images=..., videos=...)`` yields the same ``input_ids`` and features. Calls using
options gpu-mm does not implement (``do_resize=False``, ``do_sample_frames=True``, video paths ...)
are passed to transformers' implementation unchanged, so behaviour never silently differs.

``GpuMMQwen3VLVideoProcessor`` lets transformers do what is cheap and input-dependent (fetching, frame
sampling from the metadata, input formats, metadata) and replaces only its pixel work (resize, rescale,
normalize, patchify) with gpu-mm's, so every input transformers accepts behaves as there.
"""

from __future__ import annotations

from typing import Any

from transformers import BatchFeature, Qwen2VLImageProcessor, Qwen2VLVideoProcessor, Qwen3VLVideoProcessor

from ..models.qwen2_vl import Qwen2VLConfig, Qwen2VLPreprocessor
from ..models.qwen3_vl import Qwen3VLConfig, Qwen3VLPreprocessor

__all__ = ["GpuMMQwen2VLImageProcessor", "GpuMMQwen2VLVideoProcessor", "GpuMMQwen3VLVideoProcessor"]

# Options whose default value gpu-mm implements; any other value goes to transformers.
_DEFAULT_FLAGS = {"do_resize": True, "do_rescale": True, "do_normalize": True, "do_convert_rgb": True}
_PASSTHROUGH = {"return_tensors", "device", "input_data_format", "data_format", "disable_grouping",
                "return_metadata", "video_metadata"}


def _sizes(size: Any, min_pixels: Any, max_pixels: Any) -> tuple[int, int]:
    size = dict(size or {})
    lo = min_pixels if min_pixels is not None else size.get("shortest_edge")
    hi = max_pixels if max_pixels is not None else size.get("longest_edge")
    return int(lo), int(hi)


class _GpuMMMixin:
    """Shared plumbing: decide whether gpu-mm handles a call, and build a preprocessor per config."""

    _gpu_mm_cache: dict[Any, Qwen2VLPreprocessor]

    def _gpu_mm(self, device: str, **config: Any) -> Qwen2VLPreprocessor:
        cache = self.__dict__.setdefault("_gpu_mm_cache", {})
        key = (device, tuple(sorted(config.items())))
        if key not in cache:
            # No feature cache: a drop-in computes every call, as the transformers class it replaces does.
            cache[key] = Qwen2VLPreprocessor(device, config=Qwen2VLConfig(**config), video_decoder="pyav",
                                             cache_bytes=0)
        return cache[key]

    def _handled(self, kwargs: dict[str, Any], extra_ok: set[str]) -> bool:
        for name, default in _DEFAULT_FLAGS.items():
            if kwargs.get(name, getattr(self, name, default)) != default:
                return False
        if getattr(self, "resample", 3) not in (3, None) or kwargs.get("resample") not in (3, None):
            return False  # gpu-mm resizes bicubic only (PILImageResampling.BICUBIC == 3)
        if kwargs.get("rescale_factor", getattr(self, "rescale_factor", 1 / 255)) != 1 / 255:
            return False
        unknown = set(kwargs) - set(_DEFAULT_FLAGS) - _PASSTHROUGH - extra_ok - {"resample", "rescale_factor"}
        return not {k for k in unknown if kwargs[k] is not None}


def _device(kwargs: dict[str, Any]) -> str:
    dev = kwargs.get("device")
    return "cpu" if dev is None else str(dev)


class GpuMMQwen2VLImageProcessor(_GpuMMMixin, Qwen2VLImageProcessor):
    """transformers' ``Qwen2VLImageProcessor`` computed by gpu-mm (same signature, ``BatchFeature`` out)."""

    _KW = {"size", "min_pixels", "max_pixels", "image_mean", "image_std", "patch_size", "temporal_patch_size",
           "merge_size"}

    def preprocess(self, images: Any, **kwargs: Any) -> BatchFeature:
        if not self._handled(kwargs, self._KW):
            return super().preprocess(images, **kwargs)
        lo, hi = _sizes(kwargs.get("size") or self.size, kwargs.get("min_pixels"), kwargs.get("max_pixels"))
        pre = self._gpu_mm(
            _device(kwargs), image_min_pixels=lo, image_max_pixels=hi,
            image_mean=tuple(kwargs.get("image_mean") or self.image_mean),
            image_std=tuple(kwargs.get("image_std") or self.image_std),
            patch_size=kwargs.get("patch_size") or self.patch_size,
            temporal_patch_size=kwargs.get("temporal_patch_size") or self.temporal_patch_size,
            merge_size=kwargs.get("merge_size") or self.merge_size,
        )
        flat = _flatten(images)
        feats = pre(images=flat)
        return BatchFeature({"pixel_values": feats.pixel_values, "image_grid_thw": feats.image_grid_thw},
                            tensor_type=kwargs.get("return_tensors"))


class GpuMMQwen2VLVideoProcessor(_GpuMMMixin, Qwen2VLVideoProcessor):
    """transformers' ``Qwen2VLVideoProcessor`` computed by gpu-mm for decoded frames (T x H x W x C or
    T x C x H x W arrays/tensors) without frame sampling; anything else goes to transformers."""

    _KW = {"size", "min_pixels", "max_pixels", "image_mean", "image_std", "patch_size", "temporal_patch_size",
           "merge_size", "do_sample_frames", "cap_pixels_per_frame", "fps", "num_frames", "min_frames",
           "max_frames", "max_video_tokens"}

    def preprocess(self, videos: Any, **kwargs: Any) -> BatchFeature:
        flat = _flatten_videos(videos)
        sample = kwargs.get("do_sample_frames", self.do_sample_frames)
        cap = kwargs.get("cap_pixels_per_frame", self.cap_pixels_per_frame)
        if sample or cap or flat is None or not self._handled(kwargs, self._KW):
            return super().preprocess(videos, **kwargs)
        lo, hi = _sizes(kwargs.get("size") or self.size, kwargs.get("min_pixels"), kwargs.get("max_pixels"))
        pre = self._gpu_mm(
            _device(kwargs), sampling="hf", video_min_pixels=lo, video_max_pixels=hi,
            image_mean=tuple(kwargs.get("image_mean") or self.image_mean),
            image_std=tuple(kwargs.get("image_std") or self.image_std),
            patch_size=kwargs.get("patch_size") or self.patch_size,
            temporal_patch_size=kwargs.get("temporal_patch_size") or self.temporal_patch_size,
            merge_size=kwargs.get("merge_size") or self.merge_size,
        )
        feats = pre(videos=flat)
        return BatchFeature({"pixel_values_videos": feats.pixel_values_videos, "video_grid_thw": feats.video_grid_thw},
                            tensor_type=kwargs.get("return_tensors"))


def _flatten(images: Any) -> list[Any]:
    if isinstance(images, (list, tuple)):
        out: list[Any] = []
        for x in images:
            out.extend(_flatten(x))
        return out
    return [images]


def _flatten_videos(videos: Any) -> list[Any] | None:
    """A flat list of 4-D frame arrays, or None when the input is anything else (paths, frame lists)."""
    import numpy as np
    import torch

    items = videos if isinstance(videos, (list, tuple)) else [videos]
    out: list[Any] = []
    for v in items:
        if isinstance(v, (list, tuple)) and len(v) == 1:
            v = v[0]
        if isinstance(v, torch.Tensor) and v.ndim == 4 and v.dtype == torch.uint8:
            out.append(v)
        elif isinstance(v, np.ndarray) and v.ndim == 4 and v.dtype == np.uint8:
            out.append(v)
        else:
            return None
    return out


class GpuMMQwen3VLVideoProcessor(Qwen3VLVideoProcessor):
    """transformers' ``Qwen3VLVideoProcessor`` whose resize, rescale, normalize and patchify run in gpu-mm.

    transformers still fetches, samples (``do_sample_frames`` with ``video_metadata``) and converts the input
    as it always does, then hands the frames to ``_preprocess``; there gpu-mm computes the features when the
    options are ones it implements (resize bicubic, rescale by 1/255, normalize), and transformers' own
    ``_preprocess`` otherwise. Results are identical to the stock class (the tests compare them exactly).
    """

    def _preprocess(  # type: ignore[override]  # Qwen3VLVideoProcessor's own signature
            self, videos: list[Any], do_resize: bool, size: Any, resample: Any, do_rescale: bool,
                    rescale_factor: float, do_normalize: bool, image_mean: Any, image_std: Any,
                    patch_size: int | None = None, temporal_patch_size: int | None = None,
                    merge_size: int | None = None, cap_pixels_per_frame: bool | None = None,
                    return_tensors: Any = None, **kwargs: Any) -> BatchFeature:
        import torch

        mean, std = _rgb(image_mean), _rgb(image_std)
        handled = (do_resize and do_rescale and do_normalize and rescale_factor == 1 / 255 and _bicubic(resample)
                   and mean is not None and std is not None and size is not None
                   and size.shortest_edge and size.longest_edge and videos
                   and all(isinstance(v, torch.Tensor) and v.dtype == torch.uint8 and v.ndim == 4 and v.shape[1] == 3
                           for v in videos)
                   and len({v.device for v in videos}) == 1)
        if not handled or mean is None or std is None:
            return super()._preprocess(  # type: ignore[no-any-return]
                videos, do_resize=do_resize, size=size, resample=resample, do_rescale=do_rescale,
                rescale_factor=rescale_factor, do_normalize=do_normalize, image_mean=image_mean,
                image_std=image_std, patch_size=patch_size, temporal_patch_size=temporal_patch_size,
                merge_size=merge_size, cap_pixels_per_frame=cap_pixels_per_frame, return_tensors=return_tensors,
                **kwargs)
        config = Qwen3VLConfig(
            patch_size=patch_size or self.patch_size,
            temporal_patch_size=temporal_patch_size or self.temporal_patch_size,
            merge_size=merge_size or self.merge_size, video_min_pixels=int(size.shortest_edge),
            video_max_pixels=int(size.longest_edge), image_mean=mean, image_std=std,
            cap_pixels_per_frame=bool(cap_pixels_per_frame), max_video_tokens=self.max_video_tokens)
        device = videos[0].device
        pre = _preprocessor(self, Qwen3VLPreprocessor, "cpu" if device.type == "cpu" else str(device), config)
        # Channels-first frames handed over channels-last, so no shape is ever ambiguous.
        feats = pre(videos=[v.permute(0, 2, 3, 1) for v in videos])
        return BatchFeature({"pixel_values_videos": feats.pixel_values_videos, "video_grid_thw": feats.video_grid_thw},
                            tensor_type=return_tensors)


def _preprocessor(owner: Any, cls: type[Any], device: str, config: Any) -> Any:
    """One gpu-mm preprocessor per (device, config) per drop-in instance; no feature cache (a drop-in
    computes every call, as the transformers class it replaces does)."""
    cache = owner.__dict__.setdefault("_gpu_mm_cache", {})
    key = (cls, device, config)
    if key not in cache:
        cache[key] = cls(device, config=config, video_decoder="pyav", cache_bytes=0)
    return cache[key]


def _rgb(value: Any) -> tuple[float, float, float] | None:
    """A mean or std as three floats (transformers also takes one float for all channels)."""
    if isinstance(value, (int, float)):
        return float(value), float(value), float(value)
    if isinstance(value, (list, tuple)) and len(value) == 3:
        return float(value[0]), float(value[1]), float(value[2])
    return None


def _bicubic(resample: Any) -> bool:
    """Whether transformers' ``resample`` (a PIL enum value or torchvision's mode) means bicubic."""
    from torchvision.transforms.v2 import InterpolationMode

    return resample == 3 or resample == InterpolationMode.BICUBIC
