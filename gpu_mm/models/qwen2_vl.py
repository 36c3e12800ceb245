"""Qwen2-VL / Qwen2.5-VL: the family's spec (sizes, frame sampling, ``second_per_grid_ts``).

``Qwen2VLPreprocessor`` turns images and videos into ``pixel_values``, ``image_grid_thw``,
``pixel_values_videos``, ``video_grid_thw`` and ``second_per_grid_ts``, the same features transformers'
``Qwen2VLImageProcessor`` / ``Qwen2VLVideoProcessor`` produce from the same decoded pixels.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Literal

import torch

from .. import ops
from ..features import Features
from ..options import RequestOptions
from . import register_family
from .base import ModelSpec, VideoSampling, or_default, processor_config_fields

__all__ = ["Qwen2VLConfig", "Qwen2VLFeatures"]


@dataclasses.dataclass(frozen=True)
class Qwen2VLConfig(ModelSpec):
    """Preprocessing settings; defaults are transformers 5.x Qwen2-VL defaults and qwen-vl-utils sampling."""

    family: ClassVar[str] = "qwen2_vl"
    model_types: ClassVar[tuple[str, ...]] = ("qwen2_vl", "qwen2_5_vl")
    processor_classes: ClassVar[tuple[str, ...]] = ("Qwen2VLProcessor", "Qwen2_5_VLProcessor")

    patch_size: int = 14
    temporal_patch_size: int = 2
    merge_size: int = 2
    image_min_pixels: int = 56 * 56
    image_max_pixels: int = 28 * 28 * 1280
    video_min_pixels: int = 128 * 28 * 28
    video_max_pixels: int = 768 * 28 * 28
    image_mean: tuple[float, float, float] = ops.OPENAI_CLIP_MEAN
    image_std: tuple[float, float, float] = ops.OPENAI_CLIP_STD
    sampling: Literal["qwen_vl_utils", "sglang", "hf"] = "qwen_vl_utils"
    """``qwen_vl_utils``: fps 2, even count in [4, 768], rounded linspace indices, per-frame pixel cap from
    ``video_total_pixels``. ``sglang``: the same but with SGLang's truncated linspace indices (its own
    Qwen-VL video path). ``hf``: transformers' rule (all frames unless ``fps``/``nframes`` given)."""
    fps: float | None = 2.0
    min_frames: int = 4
    max_frames: int = 768
    video_total_pixels: float = 128000 * 28 * 28 * 0.9
    cap_pixels_per_frame: bool = False
    """For the ``hf`` rule: apply transformers' ``cap_pixels_per_frame`` budget."""
    video_resample: Literal["bicubic", "bilinear"] = "bicubic"
    """How video frames are resized: ``bicubic`` as transformers and qwen-vl-utils do; ``bilinear`` as
    SGLang's own Qwen-VL video path does (its plug-in uses it, so its features equal SGLang's)."""
    output_dtype: torch.dtype = torch.float32
    second_per_grid_ts: bool = True
    """Whether features carry ``second_per_grid_ts`` (Qwen2.5-VL's processor returns it, Qwen2-VL's does not;
    SGLang takes it for both)."""

    def validate(self) -> None:
        super().validate()
        if self.sampling not in ("qwen_vl_utils", "sglang", "hf"):
            raise ValueError(f"sampling must be 'qwen_vl_utils', 'sglang' or 'hf', got {self.sampling!r}")

    # ------------------------------------------------------------------ sizes and frames (pure)

    def image_target(self, height: int, width: int, options: RequestOptions) -> tuple[int, int]:
        return ops.smart_resize(height, width, self.factor, or_default(options.min_pixels, self.image_min_pixels),
                                or_default(options.max_pixels, self.image_max_pixels))

    def _frame_max_pixels(self, nframes: int, options: RequestOptions) -> float:
        """qwen-vl-utils' per-frame pixel cap for ``nframes`` frames under this config and request."""
        return ops.video_max_pixels_qwen_vl_utils(
            nframes, min_pixels=or_default(options.min_pixels, self.video_min_pixels),
            frame_max_pixels=self.video_max_pixels,
            total_pixels=or_default(options.total_pixels, self.video_total_pixels),
            max_pixels=options.max_pixels, frame_factor=self.temporal_patch_size,
        )

    def _hf_max_pixels(self, frames: int, options: RequestOptions) -> float:
        """transformers' per-frame bound for ``frames`` frames, with its ``cap_pixels_per_frame`` when set."""
        max_pixels = or_default(options.max_pixels, self.video_max_pixels)
        if self.cap_pixels_per_frame:
            budget = int(self.video_total_pixels)
            max_pixels = max(min(max_pixels, budget * self.temporal_patch_size // frames),
                             int(self.video_min_pixels * 1.05))
        return max_pixels

    def _video_target(self, size: tuple[int, int], max_pixels: float, options: RequestOptions) -> tuple[int, int]:
        min_pixels = int(or_default(options.min_pixels, self.video_min_pixels))
        return ops.smart_resize(size[0], size[1], self.factor, min_pixels, int(max_pixels))

    def sample_video(self, total: int, video_fps: float, size: tuple[int, int],
                     options: RequestOptions) -> VideoSampling:
        tp, nframes = self.temporal_patch_size, options.nframes
        try:
            if total < tp and nframes is None:
                # Fewer frames than one temporal patch (a 1-frame clip): all of them, the last repeated to fill
                # the patch as for an image (qwen-vl-utils refuses such a clip; transformers pads it so).
                indices = list(range(total))
                sample_fps = video_fps
                max_pixels = (self._frame_max_pixels(tp, options) if self.sampling != "hf"
                              else or_default(options.max_pixels, self.video_max_pixels))
            elif self.sampling in ("qwen_vl_utils", "sglang"):
                start, end = ops.frame_range(total, video_fps, options.video_start, options.video_end)
                n = ops.nframes_qwen_vl_utils(
                    end - start + 1, video_fps, fps=None if nframes is not None else or_default(options.fps, self.fps),
                    nframes=nframes, min_frames=self.min_frames, max_frames=self.max_frames, frame_factor=tp,
                )
                sample = ops.sample_indices_sglang if self.sampling == "sglang" else ops.sample_indices_qwen_vl_utils
                indices = sample(start, end, n)
                sample_fps = n / max(end - start + 1, 1e-6) * video_fps
                max_pixels = self._frame_max_pixels(n, options)
            else:
                n_hf = ops.nframes_hf(
                    total, video_fps, fps=options.fps if nframes is None else None, num_frames=nframes,
                    min_frames=self.min_frames, max_frames=self.max_frames, temporal_patch_size=tp,
                )
                indices = ops.sample_indices_hf(total, n_hf)
                sample_fps = len(indices) / total * video_fps
                max_pixels = self._hf_max_pixels(len(indices), options)
        except ValueError as exc:
            raise ValueError(f"cannot sample frames: {exc}") from None
        return VideoSampling(indices, sample_fps, self._video_target(size, max_pixels, options), video_fps)

    def sample_frames(self, frames: int, size: tuple[int, int], options: RequestOptions) -> VideoSampling:
        """Decoded frames are taken as already sampled, at ``fps`` (as qwen-vl-utils treats frame lists)."""
        sample_fps = float(options.fps or self.fps or 2.0)
        if self.sampling != "hf":
            max_pixels = self._frame_max_pixels(frames + (-frames % self.temporal_patch_size), options)
        else:
            max_pixels = self._hf_max_pixels(frames, options)
        return VideoSampling(list(range(frames)), sample_fps, self._video_target(size, max_pixels, options), None)

    def video_fields(self, videos: Sequence[VideoSampling]) -> dict[str, Any]:
        if not self.second_per_grid_ts:
            return {}
        return {"second_per_grid_ts": [self.temporal_patch_size / (v.sample_fps or 1.0) for v in videos]}

    @classmethod
    def from_pretrained_dict(cls, model_type: str, image: Mapping[str, Any],
                             video: Mapping[str, Any] | None) -> Qwen2VLConfig:
        """Sizes and constants from the model's configs; frames sampled by qwen-vl-utils' rule (as the model's
        own serving stacks do) at the video config's ``fps``; ``second_per_grid_ts`` for Qwen2.5-VL only."""
        return cls(second_per_grid_ts=model_type in ("qwen2_5_vl", "Qwen2_5_VLProcessor"),
                   **processor_config_fields(image, video))


@dataclasses.dataclass
class Qwen2VLFeatures(Features):
    """Model inputs for Qwen2-VL / Qwen2.5-VL, plus a report per item."""

    second_per_grid_ts: list[float] | None = None

    def to_dict(self) -> dict[str, Any]:
        """The keys and dtypes a transformers Qwen2-VL / Qwen2.5-VL model consumes (absent ones left out)."""
        out = super().to_dict()
        if self.second_per_grid_ts is not None:
            out["second_per_grid_ts"] = torch.tensor(self.second_per_grid_ts, dtype=torch.float32)
        return out


register_family(Qwen2VLConfig, Qwen2VLFeatures, preprocessor_name="Qwen2VLPreprocessor")
