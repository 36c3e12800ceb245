"""Qwen2.5-Omni and Qwen3-Omni (their thinkers' inputs): Qwen2-VL images and videos plus Whisper log-mel audio.

Vision is the Qwen2-VL path (:class:`gpu_mm.Qwen2VLConfig`, these families' patch sizes from the model folder);
each video's seconds per temporal step go out as ``video_second_per_grid``, the Omni processors' name. Audio items
are decoded to 16 kHz mono (:func:`gpu_mm.media.audio.decode_audio`) and their features computed together, as the
family's processor computes them with transformers' ``WhisperFeatureExtractor`` (:func:`gpu_mm.audio.log_mel`):
``input_features`` ``(clips, 128, frames)`` and ``feature_attention_mask`` ``(clips, frames)``.

Padding: Qwen2.5-Omni pads (and cuts) every clip to 300 s; Qwen3-Omni pads to the longest clip of the call, as
``Qwen3OmniMoeProcessor`` does for the clips it is given at once (vLLM gives it one clip at a time: call with one
clip for its features).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Literal

import numpy as np
import torch

from .. import audio as audio_ops
from ..features import Features
from . import register_family
from .base import VideoSampling
from .qwen2_vl import Qwen2VLConfig

__all__ = ["Qwen2_5OmniConfig", "Qwen3OmniConfig", "QwenOmniFeatures", "audio_in_video_placeholder"]


@dataclasses.dataclass(frozen=True)
class _OmniSpec(Qwen2VLConfig):
    """What both Omni families share: the Qwen2-VL vision spec and the Whisper front end's settings."""

    modalities: ClassVar[tuple[str, ...]] = ("image", "video", "audio")
    options: ClassVar[frozenset[str]] = Qwen2VLConfig.options | {"use_audio_in_video"}

    second_per_grid_ts: bool = False
    audio_padding: Literal["max_length", "longest"] = "max_length"
    """``max_length``: every clip padded (and cut) to ``audio_max_samples``; ``longest``: to the call's longest."""
    audio_max_samples: int = 300 * audio_ops.SAMPLE_RATE
    """The feature extractor's ``n_samples`` (``chunk_length`` x 16000): ``max_length``'s length."""
    num_mel_bins: int = 128
    """The feature extractor's ``feature_size``."""
    n_window: int = 50
    """Qwen3-Omni's audio encoder window (its token count rule); unused by Qwen2.5-Omni."""

    def validate(self) -> None:
        super().validate()
        if self.audio_padding not in ("max_length", "longest"):
            raise ValueError(f"audio_padding must be 'max_length' or 'longest', got {self.audio_padding!r}")
        for name in ("audio_max_samples", "num_mel_bins", "n_window"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.audio_padding == "max_length" and self.audio_max_samples <= audio_ops.N_FFT // 2:
            raise ValueError(f"audio_max_samples must be over {audio_ops.N_FFT // 2}, got {self.audio_max_samples}")

    def video_fields(self, videos: Sequence[VideoSampling]) -> dict[str, Any]:
        """``video_second_per_grid``: seconds per temporal step of each video, at the rate its frames were taken."""
        return {"video_second_per_grid": [self.temporal_patch_size / (v.sample_fps or 1.0) for v in videos]}

    def audio_features(self, clips: Sequence[torch.Tensor], device: str | torch.device) -> dict[str, torch.Tensor]:
        """The call's clips (1-D float32 at 16 kHz, in order) as ``input_features`` and ``feature_attention_mask``."""
        features, mask = audio_ops.log_mel(clips, num_mels=self.num_mel_bins, padding=self.audio_padding,
                                           max_samples=self.audio_max_samples, device=device)
        return {"input_features": features, "feature_attention_mask": mask}

    def audio_working_bytes(self, samples: Sequence[int]) -> int:
        """A bound on :meth:`audio_features`' memory for clips of ``samples``: per padded frame, the complex STFT,
        its power, the mel product and the output (float32)."""
        total = self.audio_max_samples if self.audio_padding == "max_length" else max(samples, default=0)
        bins = audio_ops.N_FFT // 2 + 1
        per_frame = bins * 8 + bins * 4 + 2 * self.num_mel_bins * 4
        return len(samples) * (audio_ops.num_frames(total) + 1) * per_frame + len(samples) * total * 4

    def audio_token_count(self, frames: int) -> int:
        """Audio placeholder tokens for a clip of ``frames`` valid feature frames (its mask's sum)."""
        return audio_ops.audio_tokens(frames, self.family, n_window=self.n_window)  # type: ignore[arg-type]

    @classmethod
    def from_pretrained_dict(cls, model_type: str, image: Mapping[str, Any],
                             video: Mapping[str, Any] | None) -> Qwen2VLConfig:
        """The Qwen2-VL settings of the model's configs, and the feature extractor's (``feature_size``,
        ``n_samples`` or ``chunk_length``), which a published model keeps beside the image processor's."""
        spec = super().from_pretrained_dict(model_type, image, video)
        # The processor passes its own video pixel bounds to the video processor, whatever that one's config says.
        kw: dict[str, Any] = {"second_per_grid_ts": False, "video_min_pixels": cls.video_min_pixels,
                              "video_max_pixels": cls.video_max_pixels}
        if isinstance(image.get("feature_size"), int):
            kw["num_mel_bins"] = image["feature_size"]
        if isinstance(image.get("n_samples"), int):
            kw["audio_max_samples"] = image["n_samples"]
        elif isinstance(image.get("chunk_length"), (int, float)):
            kw["audio_max_samples"] = int(image["chunk_length"] * audio_ops.SAMPLE_RATE)
        return dataclasses.replace(spec, **kw)


@dataclasses.dataclass(frozen=True)
class Qwen2_5OmniConfig(_OmniSpec):
    """Qwen2.5-Omni: every clip padded to 300 s (``Qwen2_5OmniProcessor`` asks for ``max_length`` padding); video
    frames between 128 and 768 merged tokens' pixels (the processor's ``videos_kwargs``)."""

    family: ClassVar[str] = "qwen2_5_omni"
    model_types: ClassVar[tuple[str, ...]] = ("qwen2_5_omni",)
    processor_classes: ClassVar[tuple[str, ...]] = ("Qwen2_5OmniProcessor",)


@dataclasses.dataclass(frozen=True)
class Qwen3OmniConfig(_OmniSpec):
    """Qwen3-Omni: clips padded to the call's longest, none cut; 16-pixel patches."""

    family: ClassVar[str] = "qwen3_omni_moe"
    model_types: ClassVar[tuple[str, ...]] = ("qwen3_omni_moe",)
    processor_classes: ClassVar[tuple[str, ...]] = ("Qwen3OmniMoeProcessor",)

    patch_size: int = 16
    video_min_pixels: int = 128 * 32 * 32
    video_max_pixels: int = 768 * 32 * 32
    audio_padding: Literal["max_length", "longest"] = "longest"


@dataclasses.dataclass
class QwenOmniFeatures(Features):
    """Model inputs for a Qwen Omni thinker: pixels as Qwen2-VL's, ``video_second_per_grid``, and the audio
    features (``input_features``, ``feature_attention_mask``), plus a report per item."""

    video_second_per_grid: list[float] | None = None
    input_features: torch.Tensor | None = None
    feature_attention_mask: torch.Tensor | None = None

    def to_dict(self) -> dict[str, Any]:
        """The keys and dtypes the family's transformers processor returns for media (absent ones left out)."""
        out = super().to_dict()
        if self.video_second_per_grid is not None:
            out["video_second_per_grid"] = torch.tensor(self.video_second_per_grid, dtype=torch.float32)
        for key in ("input_features", "feature_attention_mask"):
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        return out


def audio_in_video_placeholder(family: Literal["qwen2_5_omni", "qwen3_omni_moe"], grid_thw: Sequence[int],
                               merge_size: int, second_per_grid: float, audio_tokens: int, *,
                               position_id_per_seconds: float | None = None,
                               seconds_per_chunk: float = 2.0) -> list[tuple[str, int]]:
    """The placeholder run the family's processor writes for a video with its own audio (``use_audio_in_video``),
    between the audio start and end tokens: ``[("video", n), ("audio", m), ...]`` in order, video and audio
    tokens interleaved by time (Qwen2.5-Omni: in chunks of ``seconds_per_chunk``; Qwen3-Omni: token by token).
    ``position_id_per_seconds`` defaults to the family's (25 and 13)."""
    t, h, w = (int(v) for v in grid_thw)
    per_step = (h // merge_size) * (w // merge_size)
    pps = position_id_per_seconds if position_id_per_seconds is not None else (
        25 if family == "qwen2_5_omni" else 13.0)
    video_pos = np.repeat(np.arange(t), per_step) * second_per_grid * pps
    audio_pos = np.arange(audio_tokens)
    runs: list[tuple[str, int]] = []

    def add(kind: str, n: int) -> None:
        if n <= 0:
            return
        if runs and runs[-1][0] == kind:
            runs[-1] = (kind, runs[-1][1] + n)
        else:
            runs.append((kind, n))

    if family == "qwen2_5_omni":
        per_chunk = int(pps * seconds_per_chunk)
        video_chunks, audio_chunks = _chunk_lengths(video_pos, per_chunk), _chunk_lengths(audio_pos, per_chunk)
        for j in range(max(len(video_chunks), len(audio_chunks))):
            if j < len(video_chunks):
                add("video", video_chunks[j])
            if j < len(audio_chunks):
                add("audio", audio_chunks[j])
        return runs
    v = a = 0
    while v < len(video_pos) and a < len(audio_pos):
        if video_pos[v] <= audio_pos[a]:
            add("video", 1)
            v += 1
        else:
            add("audio", 1)
            a += 1
    add("video", len(video_pos) - v)
    add("audio", len(audio_pos) - a)
    return runs


def _chunk_lengths(positions: np.ndarray, per_chunk: int) -> list[int]:
    """Lengths of the runs of ``positions`` (increasing) below 1, 2, 3 ... times ``per_chunk`` (Qwen2.5-Omni's
    ``get_chunked_index``: each position at or past the next boundary starts a chunk)."""
    lengths: list[int] = []
    start, boundary = 0, 1
    for i, p in enumerate(positions):
        if p >= boundary * per_chunk:
            lengths.append(i - start)
            start = i
            boundary += 1
    lengths.append(len(positions) - start)
    return lengths


register_family(Qwen2_5OmniConfig, QwenOmniFeatures, preprocessor_name="Qwen2_5OmniPreprocessor")
register_family(Qwen3OmniConfig, QwenOmniFeatures, preprocessor_name="Qwen3OmniPreprocessor")
