"""The audio benchmark line: Whisper log-mel features (Qwen2.5-Omni's settings: 128 bins, every clip padded to 300 s)
of a 60 s clip and of a batch of 16 clips of 5 to 60 s, gpu-mm (:func:`gpu_mm.audio.log_mel`) against transformers'
``WhisperFeatureExtractor`` on the same samples, with its torch path (what it takes wherever torch is installed) and
its numpy path, side by side in one run."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import numpy as np

from .throughput import _sync, speedup, time_side_by_side


def _clip(seconds: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * 16000)) / 16000
    return (0.2 * np.sin(2 * np.pi * 440 * t) + 0.05 * rng.standard_normal(t.size)).astype(np.float32)


@contextlib.contextmanager
def _numpy_path() -> Iterator[None]:
    """transformers' Whisper feature extractor as it runs where torch is not installed (its numpy STFT)."""
    from transformers.models.whisper import feature_extraction_whisper as module

    saved = module.is_torch_available
    module.is_torch_available = lambda: False
    try:
        yield
    finally:
        module.is_torch_available = saved


def audio_bench(device: str, reps: int, *, batch: int = 16) -> dict[str, Any]:
    """``{"60s": ..., "batch<batch>": ...}``: p50s of gpu-mm, transformers (torch) and transformers (numpy).
    (transformers pads each clip to 300 s and transforms all of it: ~0.5 s a clip on 2 cores; ``gpu-mm bench
    --quick`` takes a batch of 4.)"""
    from ..audio import log_mel

    try:
        from transformers import WhisperFeatureExtractor
    except ImportError as exc:
        return {"skipped": f"transformers not installed: {exc}"}
    fe = WhisperFeatureExtractor(feature_size=128, chunk_length=300)
    cases = {"60s": [_clip(60.0, 0)],
             f"batch{batch}": [_clip(5.0 + 55.0 * i / max(1, batch - 1), i) for i in range(batch)]}
    out: dict[str, Any] = {}
    for name, clips in cases.items():
        def ours(clips: list[np.ndarray] = clips) -> Any:
            feats = log_mel(clips, padding="max_length", device=device)
            _sync(device)
            return feats

        def theirs(clips: list[np.ndarray] = clips) -> Any:
            return fe(clips, sampling_rate=16000, padding="max_length", return_attention_mask=True,
                      return_tensors="pt")

        def theirs_numpy(clips: list[np.ndarray] = clips) -> Any:
            with _numpy_path():
                return theirs(clips)

        fns = {"gpu_mm": ours, "transformers": theirs, "transformers_numpy": theirs_numpy}
        times = time_side_by_side(fns, max(2, reps // 3))
        result = speedup(times, "transformers")
        result["speedup_numpy_p50"] = times["transformers_numpy"]["p50_ms"] / times["gpu_mm"]["p50_ms"]
        result["clips"] = len(clips)
        result["seconds"] = round(sum(len(c) for c in clips) / 16000, 1)
        out[name] = result
    return out
