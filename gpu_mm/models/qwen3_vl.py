"""Qwen3-VL (and Qwen3-VL-MoE, Qwen3.5, which share its processors): the family's spec.

Images are Qwen2-VL's arithmetic with patch 16 and mean/std 0.5. Videos follow transformers'
``Qwen3VLVideoProcessor``: ``int(total / fps_src * fps)`` frames clamped to [4, 768] and to the clip
(an odd count is padded by repeating the last frame), ``linspace(0, total - 1, n).round()`` indices, and
pixel bounds on the whole clip (frames x height x width) with an optional per-frame cap. There is no
``second_per_grid_ts``: the prompt precedes each temporal step with ``<{t:.1f} seconds>``, so the features
carry ``video_timestamps`` (seconds per temporal step, as ``Qwen3VLProcessor`` computes them) and each
item report its frame indices and source fps.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Literal

import torch

from .. import ops
from ..features import TimestampedFeatures
from ..options import RequestOptions
from . import register_family
from .base import ModelSpec, VideoSampling, or_default, processor_config_fields

__all__ = ["Qwen3VLConfig", "Qwen3VLFeatures", "nframes", "sample_indices", "smart_resize", "timestamps"]

smart_resize = ops.smart_resize_clip


@dataclasses.dataclass(frozen=True)
class Qwen3VLConfig(ModelSpec):
    """Qwen3-VL preprocessing settings. Defaults are the published Qwen3-VL models' configs (which differ
    from the transformers classes' own defaults: build from a model folder with
    :meth:`gpu_mm.Preprocessor.from_pretrained` to follow the model you serve)."""

    family: ClassVar[str] = "qwen3_vl"
    model_types: ClassVar[tuple[str, ...]] = ("qwen3_vl", "qwen3_vl_moe", "qwen3_5", "qwen3_5_moe")
    processor_classes: ClassVar[tuple[str, ...]] = ("Qwen3VLProcessor",)
    options: ClassVar[frozenset[str]] = frozenset(
        {"fps", "nframes", "video_start", "video_end", "min_pixels", "max_pixels", "total_pixels"})

    patch_size: int = 16
    temporal_patch_size: int = 2
    merge_size: int = 2
    image_min_pixels: int = 65536
    image_max_pixels: int = 16777216
    video_min_pixels: int = 4096
    """Lower bound of a whole clip's frames x height x width after resizing (transformers' video
    ``size["shortest_edge"]``)."""
    video_max_pixels: int = 25165824
    """Upper bound of a whole clip's frames x height x width (``size["longest_edge"]``); a request's
    ``total_pixels`` overrides it."""
    image_mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    image_std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    fps: float | None = 2.0
    """Frames sampled per second of video (None: every frame, within [min_frames, max_frames])."""
    min_frames: int = 4
    max_frames: int = 768
    cap_pixels_per_frame: bool = False
    """transformers' ``cap_pixels_per_frame``: each frame's pixels at most ``max_video_tokens`` merged
    tokens or an even share of ``video_max_pixels``, at least 1.05 x ``video_min_pixels`` (qwen-vl-utils'
    rule). Off by default, as in transformers 5.24."""
    max_video_tokens: int = 768
    video_resample: Literal["bicubic", "bilinear"] = "bicubic"
    output_dtype: torch.dtype = torch.float32
    sampling: Literal["transformers", "sglang"] = "transformers"
    """``transformers``: ``Qwen3VLVideoProcessor``'s rule (above). ``sglang``: SGLang 0.5's Qwen-VL video path,
    which serves Qwen3-VL with its Qwen2-VL rule (``fps`` frames per second, an even count in
    [min_frames, max_frames], truncated linspace indices), resizes each frame bilinearly to multiples of
    ``sglang_factor`` within its per-frame bounds, and only then lets transformers resize to this family's
    clip bounds; gpu-mm plans the same frames and both sizes (its SGLang plug-in uses this)."""
    sglang_factor: int = 28
    sglang_min_pixels: int = 128 * 28 * 28
    sglang_max_pixels: int = 768 * 28 * 28
    sglang_total_pixels: float = 128000 * 28 * 28 * 0.9

    def image_target(self, height: int, width: int, options: RequestOptions) -> tuple[int, int]:
        return ops.smart_resize(height, width, self.factor, or_default(options.min_pixels, self.image_min_pixels),
                                or_default(options.max_pixels, self.image_max_pixels))

    def _video_target(self, frames: int, size: tuple[int, int], options: RequestOptions) -> tuple[int, int]:
        # A clip shorter than one temporal patch (transformers refuses it) is sized as its padded patch.
        frames = max(frames, self.temporal_patch_size)
        lo = self.video_min_pixels
        hi = or_default(options.total_pixels, self.video_max_pixels)
        if self.cap_pixels_per_frame:
            frame_cap = self.max_video_tokens * self.factor**2
            hi = max(min(frame_cap, hi // frames), int(lo * 1.05)) * frames
        return ops.smart_resize_clip(frames, size[0], size[1], temporal_factor=self.temporal_patch_size,
                                     factor=self.factor, min_pixels=lo, max_pixels=hi)

    def validate(self) -> None:
        super().validate()
        if self.sampling not in ("transformers", "sglang"):
            raise ValueError(f"sampling must be 'transformers' or 'sglang', got {self.sampling!r}")

    def sample_video(self, total: int, video_fps: float, size: tuple[int, int],
                     options: RequestOptions) -> VideoSampling:
        if self.sampling == "sglang":
            return self._sample_video_sglang(total, video_fps, size, options)
        start, end = ops.frame_range(total, video_fps, options.video_start, options.video_end)
        count = end - start + 1
        fps = None if options.nframes is not None else or_default(options.fps, self.fps)
        n = nframes(count, video_fps, fps=fps, num_frames=options.nframes, min_frames=self.min_frames,
                                 max_frames=self.max_frames)
        indices = sample_indices(start, end, n)
        return VideoSampling(indices, n / count * video_fps, self._video_target(n, size, options), video_fps)

    def _sample_video_sglang(self, total: int, video_fps: float, size: tuple[int, int],
                             options: RequestOptions) -> VideoSampling:
        tp = self.temporal_patch_size
        start, end = ops.frame_range(total, video_fps, options.video_start, options.video_end)
        try:
            fps = None if options.nframes is not None else or_default(options.fps, self.fps)
            n = ops.nframes_qwen_vl_utils(end - start + 1, video_fps, fps=fps, nframes=options.nframes,
                                          min_frames=self.min_frames, max_frames=self.max_frames, frame_factor=tp)
        except ValueError as exc:
            raise ValueError(f"cannot sample frames: {exc}") from None
        indices = ops.sample_indices_sglang(start, end, n)
        frame_max = ops.video_max_pixels_qwen_vl_utils(
            len(indices), min_pixels=self.sglang_min_pixels, frame_max_pixels=self.sglang_max_pixels,
            total_pixels=self.sglang_total_pixels, frame_factor=tp)
        presize = ops.smart_resize(size[0], size[1], self.sglang_factor, self.sglang_min_pixels, int(frame_max))
        return VideoSampling(indices, n / (end - start + 1) * video_fps,
                             self._video_target(len(indices), presize, options), video_fps, presize=presize)

    def sample_frames(self, frames: int, size: tuple[int, int], options: RequestOptions) -> VideoSampling:
        """Decoded frames are taken as already sampled, at ``fps`` (their timestamps are ``i / fps``)."""
        sample_fps = float(options.fps or self.fps or 2.0)
        return VideoSampling(list(range(frames)), sample_fps, self._video_target(frames, size, options), None)

    def video_fields(self, videos: Sequence[VideoSampling]) -> dict[str, Any]:
        return {"video_timestamps": [timestamps(v.indices, v.video_fps or v.sample_fps,
                                                             self.temporal_patch_size) for v in videos]}

    @classmethod
    def from_pretrained_dict(cls, model_type: str, image: Mapping[str, Any],
                             video: Mapping[str, Any] | None) -> Qwen3VLConfig:
        return cls(**processor_config_fields(image, video, video_patching=True,
                                             video_ints=("min_frames", "max_frames", "max_video_tokens"),
                                             video_bools=("cap_pixels_per_frame",)))


@dataclasses.dataclass
class Qwen3VLFeatures(TimestampedFeatures):
    """Model inputs for Qwen3-VL, plus a report per item and each video's timestamps: the mean time of each
    temporal step's frames (the prompt's ``<{t:.1f} seconds>``)."""


register_family(Qwen3VLConfig, Qwen3VLFeatures, preprocessor_name="Qwen3VLPreprocessor")


# ---------------------------------------------------------------- the family's arithmetic (transformers 5.24)


def nframes(total_frames: int, video_fps: float, *, fps: float | None = 2.0, num_frames: int | None = None,
                     min_frames: int = 4, max_frames: int = 768) -> int:
    """Frames transformers' ``Qwen3VLVideoProcessor.sample_frames`` takes: ``num_frames`` as given, else
    ``int(total / video_fps * fps)`` clamped to ``[min_frames, max_frames]`` and to ``total`` (not rounded to
    the temporal patch: an odd count is padded later by repeating the last frame)."""
    if num_frames is not None:
        return num_frames
    if fps is None:
        return min(max(total_frames, min_frames), max_frames)
    n = int(total_frames / video_fps * fps)
    return min(max(n, min_frames), max_frames, total_frames)


def sample_indices(start: int, end: int, n: int) -> list[int]:
    """``np.linspace(start, end, n).round()`` (float64, half to even), as transformers' Qwen3-VL samples."""
    import numpy as np

    return np.linspace(start, end, n).round().astype(int).tolist()


def timestamps(indices: Sequence[int], video_fps: float, temporal_patch_size: int = 2) -> list[float]:
    """Seconds of each temporal step: the mean of its first and last frame's time (the last index repeated to
    fill a partial step), as transformers' ``Qwen3VLProcessor._calculate_timestamps``."""
    indices = list(indices)
    if len(indices) % temporal_patch_size:
        indices.extend(indices[-1] for _ in range(temporal_patch_size - len(indices) % temporal_patch_size))
    times = [i / video_fps for i in indices]
    return [(times[i] + times[i + temporal_patch_size - 1]) / 2 for i in range(0, len(times), temporal_patch_size)]
