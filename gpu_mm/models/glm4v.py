"""GLM-4.1V / GLM-4.5V (``glm4v``, ``glm4v_moe``) and GLM-4.6V (``glm46v``): the families' specs.

Qwen2-VL's patch layout (patch 14, merge 2, temporal patch 2, CLIP mean/std, bicubic) with GLM's own sizes and
frames, as transformers' ``Glm4vImageProcessor`` / ``Glm4vVideoProcessor`` (and ``Glm46V*``) compute them:

- An image's pixel budget counts the temporal patch: ``smart_resize`` of a 2-frame clip (an image is one frame
  repeated to fill it), tiny images scaled up first.
- A video's budget is shared by all its sampled frames, so its frame size depends on the frame count: the spec
  samples first, then sizes (:func:`gpu_mm.ops.smart_resize_clip`).
- GLM-4.1V samples at ``fps`` (2) over at most ``max_duration`` (300 s): ``ceil`` indices, de-duplicated, an odd
  count completed by repeating the last frame. GLM-4.6V picks its rate from the clip's duration (3 fps up to
  30 s, 1 fps up to 300 s, 0.5 fps beyond, at most 640 frames).
- The prompt follows each temporal step with its first frame's time (GLM-4.1V writes ``int(t)``, GLM-4.6V
  ``{t:.1f} seconds``): the features carry ``video_timestamps``, seconds per temporal step.

A video's duration is ``frames / fps``, as transformers' own video loaders set it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch

from .. import ops
from ..features import TimestampedFeatures
from ..options import RequestOptions
from . import register_family
from .base import ModelSpec, VideoSampling, or_default, processor_config_fields

__all__ = ["Glm46VConfig", "Glm4vConfig", "Glm4vFeatures", "sample_indices_glm46v", "sample_indices_glm4v",
           "timestamps"]


@dataclasses.dataclass(frozen=True)
class Glm4vConfig(ModelSpec):
    """GLM-4.1V / GLM-4.5V preprocessing settings; defaults are transformers 5.25's ``Glm4vImageProcessor`` and
    ``Glm4vVideoProcessor`` defaults (build from a model folder to follow the model you serve)."""

    family: ClassVar[str] = "glm4v"
    model_types: ClassVar[tuple[str, ...]] = ("glm4v", "glm4v_moe")
    processor_classes: ClassVar[tuple[str, ...]] = ("Glm4vProcessor",)
    options: ClassVar[frozenset[str]] = frozenset({"fps", "min_pixels", "max_pixels", "total_pixels"})

    patch_size: int = 14
    temporal_patch_size: int = 2
    merge_size: int = 2
    image_min_pixels: int = 112 * 112
    """Lower bound of an image's 2 x height x width (``size["shortest_edge"]``)."""
    image_max_pixels: int = 28 * 28 * 15000
    """Upper bound of an image's 2 x height x width (``size["longest_edge"]``)."""
    video_min_pixels: int = 112 * 112
    """Lower bound of a whole clip's frames x height x width."""
    video_max_pixels: int = 28 * 28 * 2 * 30000
    """Upper bound of a whole clip's frames x height x width; a request's ``total_pixels`` overrides it."""
    image_mean: tuple[float, float, float] = ops.OPENAI_CLIP_MEAN
    image_std: tuple[float, float, float] = ops.OPENAI_CLIP_STD
    fps: float | None = 2.0
    max_duration: int = 300
    """Seconds of video sampled at ``fps``; a longer clip gets ``max_duration * fps`` frames spread over it."""
    video_resample: str = "bicubic"
    output_dtype: torch.dtype = torch.float32

    def image_target(self, height: int, width: int, options: RequestOptions) -> tuple[int, int]:
        tp = self.temporal_patch_size
        return ops.smart_resize_clip(tp, height, width, temporal_factor=tp, factor=self.factor,
                                     min_pixels=or_default(options.min_pixels, self.image_min_pixels),
                                     max_pixels=or_default(options.max_pixels, self.image_max_pixels))

    def _video_target(self, frames: int, size: tuple[int, int], options: RequestOptions) -> tuple[int, int]:
        frames = max(frames, self.temporal_patch_size)
        return ops.smart_resize_clip(frames, size[0], size[1], temporal_factor=self.temporal_patch_size,
                                     factor=self.factor, min_pixels=self.video_min_pixels,
                                     max_pixels=or_default(options.total_pixels, self.video_max_pixels))

    def _indices(self, total: int, video_fps: float, options: RequestOptions) -> list[int]:
        return sample_indices_glm4v(total, video_fps, float(or_default(options.fps, self.fps or 2.0)),
                                    self.max_duration)

    def sample_video(self, total: int, video_fps: float, size: tuple[int, int],
                     options: RequestOptions) -> VideoSampling:
        if total < 1 or video_fps <= 0:
            raise ValueError(f"cannot sample frames from {total} frames at {video_fps} fps")
        indices = self._indices(total, video_fps, options)
        return VideoSampling(indices, len(indices) / total * video_fps,
                             self._video_target(len(indices), size, options), video_fps)

    def sample_frames(self, frames: int, size: tuple[int, int], options: RequestOptions) -> VideoSampling:
        """Decoded frames are taken as already sampled, at ``fps`` (their timestamps are ``i / fps``); an odd
        count is completed by repeating the last frame, as transformers pads it."""
        sample_fps = float(options.fps or self.fps or 2.0)
        return VideoSampling(list(range(frames)), sample_fps, self._video_target(frames, size, options), None)

    def video_fields(self, videos: Sequence[VideoSampling]) -> dict[str, Any]:
        return {"video_timestamps": [timestamps(v.indices, v.video_fps or v.sample_fps, self.temporal_patch_size)
                                     for v in videos]}

    @classmethod
    def from_pretrained_dict(cls, model_type: str, image: Mapping[str, Any],
                             video: Mapping[str, Any] | None) -> Glm4vConfig:
        return cls(**processor_config_fields(image, video, video_patching=True, video_ints=("max_duration",)))


@dataclasses.dataclass(frozen=True)
class Glm46VConfig(Glm4vConfig):
    """GLM-4.6V: GLM-4.1V's sizes with its own frame rule (the rate follows the clip's duration; no ``fps``)."""

    family: ClassVar[str] = "glm46v"
    model_types: ClassVar[tuple[str, ...]] = ("glm46v",)
    processor_classes: ClassVar[tuple[str, ...]] = ("Glm46VProcessor",)
    options: ClassVar[frozenset[str]] = frozenset({"min_pixels", "max_pixels", "total_pixels"})

    def _indices(self, total: int, video_fps: float, options: RequestOptions) -> list[int]:
        return sample_indices_glm46v(total, video_fps, self.temporal_patch_size)


@dataclasses.dataclass
class Glm4vFeatures(TimestampedFeatures):
    """Model inputs for GLM-4.1V / 4.5V / 4.6V, plus a report per item and each video's timestamps: each temporal
    step's first frame (what the prompt writes after the step)."""


register_family(Glm4vConfig, Glm4vFeatures, preprocessor_name="Glm4vPreprocessor")
register_family(Glm46VConfig, Glm4vFeatures, preprocessor_name="Glm46VPreprocessor")


# ---------------------------------------------------------------- the families' arithmetic (transformers 5.25)


def _unique_even(indices: Sequence[int]) -> list[int]:
    """Repeats dropped (first kept, order kept), then an odd count completed by repeating the last index."""
    out = list(dict.fromkeys(int(i) for i in indices))
    if not out:  # transformers fails on it (an index error); a typed refusal here
        raise ValueError("the clip is too short to sample a frame from")
    if len(out) & 1:
        out.append(out[-1])
    return out


def sample_indices_glm4v(total: int, video_fps: float, fps: float, max_duration: int) -> list[int]:
    """``Glm4vVideoProcessor.sample_frames`` for a clip of ``total`` frames at ``video_fps``."""
    import numpy as np

    last = total - 1
    duration = total / video_fps
    if duration <= max_duration:
        n = max(int(math.floor(duration * fps)), 1)
        indices = [min(last, int(math.ceil(i * video_fps / fps))) for i in range(n)]
    else:
        n = int(max_duration * fps)
        if n >= total:
            indices = list(range(total))
        else:
            indices = [min(last, int(math.ceil(t * video_fps))) for t in np.linspace(0, duration, n, endpoint=True)]
    return _unique_even(indices)


def sample_indices_glm46v(total: int, video_fps: float, temporal_patch_size: int = 2) -> list[int]:
    """``Glm46VVideoProcessor.sample_frames``: 3 fps up to 30 s, 1 fps up to 300 s, 0.5 fps beyond (at most
    2400 s counted), ``temporal_patch_size`` frames per sampled step, at most 640 frames."""
    import numpy as np

    duration = total / video_fps
    effective = min(duration, 2400)
    target_fps = 3 if effective <= 30 else 1 if effective <= 300 else 0.5
    extract = min(int(effective * target_fps * temporal_patch_size), 640)
    max_second = int(duration)
    if total < extract:
        indices = np.linspace(0, total - 1, extract, dtype=int).tolist()
    else:
        indices = []
        current = 0.0
        step = 1 / (temporal_patch_size * target_fps)
        per_frame = 1 / video_fps
        for i in range(total):
            if i * per_frame >= current:
                current += step
                indices.append(i)
                if current >= max_second:
                    break
    if len(indices) < extract:
        start, end = (0, max(total - 1, 0)) if not indices else (indices[0], indices[-1])
        indices = np.linspace(start, end, extract, dtype=int).tolist()
    elif len(indices) > extract:
        indices = np.linspace(0, total - 1, extract, dtype=int).tolist()
    return _unique_even(indices)


def timestamps(indices: Sequence[int], video_fps: float, temporal_patch_size: int = 2) -> list[float]:
    """Seconds of each temporal step's first frame (``metadata.timestamps[::2]`` in ``Glm4vProcessor``)."""
    return [i / video_fps for i in list(indices)[::temporal_patch_size]]
