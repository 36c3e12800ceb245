"""What a call returns, whatever the family: the features (each family's :class:`Features` subclass adds its own
fields), a report per item, and how each item's pixels were decoded. Plain data: the families' specs and the
pipeline both build on it."""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

import torch

__all__ = ["Decoded", "Features", "ItemReport", "TimestampedFeatures"]


@dataclasses.dataclass(frozen=True)
class Decoded:
    """How an item's pixels were obtained."""

    backend: str
    """Video: the decoder's registered name (``pyav``, ``dali``, ``dali-cpu``, ``pynvvideocodec``, ``torchcodec``,
    ``decord``); images: ``nvjpeg`` or ``cpu`` (libjpeg-turbo or Pillow); ``array``: decoded pixels were given."""
    fallback_reason: str | None = None
    """Why the configured video decoder did not decode this item (``backend`` is then ``pyav``)."""
    batch_size: int = 1
    """Items decoded in the same call (plain JPEGs batched on one slot job)."""
    threads: int = 1
    """Threads that decoded a video's keyframe runs at once (more than 1 with spare cores:
    :mod:`gpu_mm.pipeline.split_decode`)."""

    def __str__(self) -> str:
        if self.batch_size > 1:
            name = "cpu (libjpeg-turbo)" if self.backend == "cpu" else self.backend
            return f"{name}, batch of {self.batch_size}"
        name = "cpu (libjpeg-turbo/pillow)" if self.backend == "cpu" else self.backend
        if self.threads > 1:
            name = f"{name}, {self.threads} keyframe runs at once"
        return name if self.fallback_reason is None else f"{name} (fallback: {self.fallback_reason})"


@dataclasses.dataclass
class ItemReport:
    """What happened to one item: its plan, the decoder used, and per-stage seconds."""

    kind: Literal["image", "video", "audio"]
    item: str
    source_size: tuple[int, int]
    """(height, width) as decoded."""
    resized: tuple[int, int]
    grid_thw: tuple[int, int, int]
    num_tokens: int
    """Placeholder tokens after the merge: t*h*w / merge**2."""
    decoder: str
    """How the pixels were obtained, in words (:attr:`decoded` holds the same as fields)."""
    frame_indices: list[int] | None = None
    sample_fps: float | None = None
    video_fps: float | None = None
    timings: dict[str, float] = dataclasses.field(default_factory=dict)
    cache: Literal["hit", "miss", "coalesced"] | None = None
    """``hit``: served from the feature cache; ``coalesced``: joined a computation of the same content
    already in flight; ``miss``: computed (and kept); None: the cache is off or the item is not cacheable."""
    decoded: Decoded | None = None
    """The decoder backend, the fallback reason (if any) and the batch size."""
    working_bytes: int = 0
    """The peak working memory its plan stated (what ``memory_budget_bytes`` is checked against; 0 for a cache
    hit, which decodes nothing)."""
    seconds: float | None = None
    """An audio item's decoded length (at 16 kHz); its ``grid_thw`` is ``(1, mel bins, valid feature frames)``
    and its ``source_size`` / ``resized`` are zeros."""


@dataclasses.dataclass
class Features:
    """Model inputs for one call (absent modalities are None), plus a report per item. Each family's
    features class adds its own per-video fields."""

    pixel_values: torch.Tensor | None = None
    image_grid_thw: torch.Tensor | None = None
    pixel_values_videos: torch.Tensor | None = None
    video_grid_thw: torch.Tensor | None = None
    items: list[ItemReport] = dataclasses.field(default_factory=list)
    handle: Any = None
    """With an output pool: the :class:`gpu_mm.handoff.FeatureHandle` of the block holding these tensors
    (send it to the consumer; ``pool.release(handle)`` once it is done with them)."""

    def processor_output(self, input_text: Any = None) -> dict[str, Any]:
        """What ``process_mm_data_async`` returns: :meth:`to_dict` plus ``input_text`` and ``items``."""
        out = self.to_dict()
        out["input_text"] = input_text
        out["items"] = self.items
        return out

    def to_dict(self) -> dict[str, Any]:
        """The keys and dtypes the family's transformers processor returns for pixels (absent modalities
        left out)."""
        out: dict[str, Any] = {}
        for key in ("pixel_values", "image_grid_thw", "pixel_values_videos", "video_grid_thw"):
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        return out


@dataclasses.dataclass
class TimestampedFeatures(Features):
    """Features of a family whose prompt states each temporal step's time (Qwen3-VL, GLM): ``video_timestamps``
    goes with :meth:`processor_output`, which a serving engine builds the prompt from."""

    video_timestamps: list[list[float]] | None = None
    """Per video, the seconds of each temporal step (which moment of the step is the family's rule)."""

    def processor_output(self, input_text: Any = None) -> dict[str, Any]:
        """:meth:`to_dict`, ``input_text``, ``items`` and ``video_timestamps``."""
        out = super().processor_output(input_text)
        if self.video_timestamps is not None:
            out["video_timestamps"] = self.video_timestamps
        return out
