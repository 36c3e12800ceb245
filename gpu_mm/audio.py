"""Whisper log-mel features of 16 kHz mono clips, on the CPU or a GPU: what transformers' ``WhisperFeatureExtractor``
computes (the audio front end of Qwen2.5-Omni and Qwen3-Omni), batched over clips.

The computation is transformers' own (its torch path, the one it takes wherever torch is installed): the clips
padded with zeros to one length, ``torch.stft`` (n_fft 400, hop 160, a periodic Hann window, centred with reflect
padding) without its last frame, power spectra through the Slaney-normalized mel filter bank over 0-8 kHz,
``log10`` clamped at 1e-10, each clip's values floored at its maximum minus 8, then ``(x + 4) / 4``. The filter bank
is computed here (:func:`mel_filter_bank`, float64, then float32 as transformers uses it), so transformers is not
needed at run time. On the CPU the features equal transformers' bit for bit when computed the same way
(``exact=True``); see :func:`log_mel` for the faster way used for long padding.

Padding rules (a family picks one): ``"max_length"`` (Qwen2.5-Omni: every clip padded to ``max_samples``, 300 s,
longer ones cut there) and ``"longest"`` (Qwen3-Omni: to the longest clip of the batch, none cut).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch

__all__ = ["SAMPLE_RATE", "audio_tokens", "log_mel", "mel_filter_bank", "num_frames"]

SAMPLE_RATE = 16000
N_FFT = 400
HOP = 160


def _hz_to_mel(freq: np.ndarray) -> np.ndarray:
    """The Slaney mel scale: linear below 1 kHz, logarithmic above (librosa's and transformers' arithmetic)."""
    mels = 3.0 * freq / 200.0
    high = freq >= 1000.0
    mels[high] = 15.0 + np.log(freq[high] / 1000.0) * (27.0 / np.log(6.4))
    return mels


def _mel_to_hz(mels: np.ndarray) -> np.ndarray:
    freq = 200.0 * mels / 3.0
    high = mels >= 15.0
    freq[high] = 1000.0 * np.exp((np.log(6.4) / 27.0) * (mels[high] - 15.0))
    return freq


@functools.lru_cache(maxsize=8)
def mel_filter_bank(num_mels: int = 128, n_fft: int = N_FFT, sample_rate: int = SAMPLE_RATE,
                    max_frequency: float = 8000.0) -> np.ndarray:
    """``(1 + n_fft // 2, num_mels)`` float64 triangular filters, Slaney scale and normalization, 0 Hz to
    ``max_frequency`` (read only)."""
    mel_edges = np.linspace(_hz_to_mel(np.array([0.0]))[0], _hz_to_mel(np.array([max_frequency]))[0], num_mels + 2)
    edges = _mel_to_hz(mel_edges)
    fft_freqs = np.linspace(0, sample_rate // 2, 1 + n_fft // 2)
    diff = np.diff(edges)
    slopes = np.expand_dims(edges, 0) - np.expand_dims(fft_freqs, 1)
    down = -slopes[:, :-2] / diff[:-1]
    up = slopes[:, 2:] / diff[1:]
    filters = np.maximum(np.zeros(1), np.minimum(down, up))
    filters *= np.expand_dims(2.0 / (edges[2 : num_mels + 2] - edges[:num_mels]), 0)
    filters.setflags(write=False)
    return filters


def num_frames(samples: int) -> int:
    """Feature frames of ``samples`` padded samples (the STFT's frames less its last)."""
    return samples // HOP


def log_mel(
    clips: Sequence[np.ndarray | torch.Tensor],
    *,
    num_mels: int = 128,
    padding: Literal["max_length", "longest"] = "max_length",
    max_samples: int = 300 * SAMPLE_RATE,
    device: str | torch.device = "cpu",
    exact: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_features, feature_attention_mask)`` of ``clips`` (1-D float32 samples at 16 kHz), as
    ``WhisperFeatureExtractor(feature_size=num_mels, chunk_length=max_samples / 16000)(clips, padding=...,
    return_attention_mask=True)`` gives them: ``(B, num_mels, F)`` float32 and ``(B, F)`` int32 (1 on frames
    holding a clip's samples), on ``device``.

    ``padding``: ``"max_length"`` pads (and cuts) every clip to ``max_samples``; ``"longest"`` pads to the longest.
    ``exact``: compute every frame of the padded batch, as transformers does (bit for bit on the CPU). Otherwise
    frames lying wholly in a clip's zero padding are filled with their known value (the padding's spectrum is
    zero, so the clip's floor) instead of being transformed: the same to float32 rounding of the FFT and the
    mel product, which see other shapes (none did in the tests, which allow 1e-5); a 1 s clip padded
    to 300 s then costs 1 s of STFT, not 300. ``None``: exact unless some clip is padded by more than 60 s.

    Raises:
        ValueError: no clip, or the padded length is too short for the STFT (201 samples).
    """
    if padding not in ("max_length", "longest"):
        raise ValueError(f"padding must be 'max_length' or 'longest', got {padding!r}")
    waves = [torch.as_tensor(c, dtype=torch.float32).reshape(-1) for c in clips]
    if not waves:
        raise ValueError("log_mel needs at least one clip")
    lengths = [int(w.numel()) for w in waves]
    total = max_samples if padding == "max_length" else max(lengths)
    if padding == "max_length":
        waves = [w[:total] for w in waves]
        lengths = [min(n, total) for n in lengths]
    if total <= N_FFT // 2:  # torch.stft's reflect padding needs more (transformers fails the same way)
        raise ValueError(f"clips padded to {total} samples: the STFT needs more than {N_FFT // 2} "
                         f"({(N_FFT // 2 + 1) / SAMPLE_RATE * 1e3:.1f} ms)")
    frames = num_frames(total)
    if exact is None:
        exact = max(total - n for n in lengths) <= 60 * SAMPLE_RATE
    filters = torch.from_numpy(np.ascontiguousarray(mel_filter_bank(num_mels).T)).to(device, torch.float32)
    window = torch.hann_window(N_FFT, device=device)
    mask = torch.zeros((len(waves), frames), dtype=torch.int32, device=device)
    for i, n in enumerate(lengths):
        mask[i, : min(frames, math.ceil(n / HOP))] = 1
    if exact:
        batch = torch.zeros((len(waves), total), dtype=torch.float32, device=device)
        for i, w in enumerate(waves):
            batch[i, : w.numel()] = w.to(device)
        return _features(batch, filters, window), mask
    out = torch.empty((len(waves), num_mels, frames), dtype=torch.float32, device=device)
    for i, w in enumerate(waves):
        # Frames up to (and one past) the first whose window (centre j * HOP, +-N_FFT/2) lies wholly in the zero
        # padding; the rest are all log10(1e-10) = -10, below or at any clip's maximum, so the floor is the same.
        busy = min(frames, (w.numel() + N_FFT // 2) // HOP + 2)
        part = torch.zeros((1, min(total, busy * HOP + N_FFT)), dtype=torch.float32, device=device)
        part[0, : w.numel()] = w.to(device)
        spec = _log_spec(part, filters, window)[0, :, :busy]
        floor = spec.max() - 8.0
        out[i, :, :busy] = (torch.maximum(spec, floor) + 4.0) / 4.0
        out[i, :, busy:] = (torch.maximum(torch.tensor(-10.0, device=device), floor) + 4.0) / 4.0
    return out, mask


def _log_spec(batch: torch.Tensor, filters: torch.Tensor, window: torch.Tensor) -> torch.Tensor:
    """``log10`` of the mel power spectra of ``batch`` (B, samples), clamped at 1e-10 (transformers' ops)."""
    stft = torch.stft(batch, N_FFT, HOP, window=window, return_complex=True)
    magnitudes = (stft[..., :-1].abs() ** 2).contiguous()
    return torch.clamp(filters @ magnitudes, min=1e-10).log10()


def _features(batch: torch.Tensor, filters: torch.Tensor, window: torch.Tensor) -> torch.Tensor:
    log_spec = _log_spec(batch, filters, window)
    peak = log_spec.max(dim=2, keepdim=True)[0].max(dim=1, keepdim=True)[0]
    return (torch.maximum(log_spec, peak - 8.0) + 4.0) / 4.0


def audio_tokens(feature_frames: int, family: Literal["qwen2_5_omni", "qwen3_omni_moe"], *,
                 n_window: int = 50) -> int:
    """Audio placeholder tokens the family's processor writes for a clip of ``feature_frames`` valid frames (its
    ``feature_attention_mask`` sum): the audio encoder's output length (``_get_feat_extract_output_lengths`` of
    ``Qwen2_5OmniProcessor`` / ``Qwen3OmniMoeProcessor``; Qwen3-Omni's encoder works in chunks of ``2 n_window``
    frames, each giving 13 tokens)."""
    if family == "qwen2_5_omni":
        after_conv = (feature_frames - 1) // 2 + 1
        return (after_conv - 2) // 2 + 1
    if family == "qwen3_omni_moe":
        chunk = n_window * 2
        rest = feature_frames % chunk
        feat = (rest - 1) // 2 + 1
        return ((feat - 1) // 2 + 1 - 1) // 2 + 1 + (feature_frames // chunk) * 13
    raise ValueError(f"no audio token rule for family {family!r}")
