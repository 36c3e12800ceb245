"""Whisper log-mel features (gpu_mm.audio) against transformers' own ``WhisperFeatureExtractor`` (5.25, built in
code with Qwen2.5-Omni's and Qwen3-Omni's settings: 128 mel bins, 300 s chunks), on the same samples: the features and
the attention mask, for clips of 0.5 s to 10 min, single and batched, both padding rules (Qwen2.5-Omni pads every
clip to 300 s and cuts longer ones; Qwen3-Omni pads to the longest clip), computed exactly as transformers does and by
the fast path that skips frames of pure padding.

Tolerance: the exact path is transformers' sequence of torch ops on the same inputs, so the features are equal bit for
bit (asserted). The fast path transforms shorter buffers: an FFT or a matrix product of another shape may round a last
bit differently (none did here), so it is held to 1e-5 (the features are of order 1)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")
from transformers import WhisperFeatureExtractor  # noqa: E402
from transformers.audio_utils import mel_filter_bank as reference_bank  # noqa: E402

from gpu_mm.audio import log_mel, mel_filter_bank  # noqa: E402

FAST_TOL = 1e-5


def clips(*seconds: float, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    t = [np.arange(int(s * 16000)) / 16000 for s in seconds]
    return [(0.2 * np.sin(2 * np.pi * 300 * (1 + i) * x) + 0.05 * rng.standard_normal(x.size)).astype(np.float32)
            for i, x in enumerate(t)]


def reference(batch, padding):
    fe = WhisperFeatureExtractor(feature_size=128, chunk_length=300)
    out = fe(batch, sampling_rate=16000, padding=padding, truncation=padding == "max_length",
             return_attention_mask=True, return_tensors="pt")
    return out["input_features"], out["attention_mask"]


def test_the_mel_filter_bank_is_transformers():
    for mels in (80, 128):
        assert np.array_equal(mel_filter_bank(mels), reference_bank(
            num_frequency_bins=201, num_mel_filters=mels, min_frequency=0.0, max_frequency=8000.0,
            sampling_rate=16000, norm="slaney", mel_scale="slaney"))


@pytest.mark.parametrize("seconds", [(0.5,), (1.0, 3.3), (10.0, 0.7, 61.0), (0.01,), (0.02, 0.01)])
@pytest.mark.parametrize("padding", ["max_length", "longest"])
def test_features_and_mask_equal_transformers(seconds, padding):
    if padding == "longest" and max(seconds) * 16000 <= 200:
        with pytest.raises(RuntimeError):  # transformers' STFT cannot pad so short a batch
            reference(clips(*seconds), padding)
        with pytest.raises(ValueError, match="201 samples|more than 200"):
            log_mel(clips(*seconds), padding=padding)
        return
    batch = clips(*seconds)
    want, want_mask = reference(batch, padding)
    exact, mask = log_mel(batch, padding=padding, exact=True)
    assert exact.dtype == torch.float32 and exact.shape == want.shape and torch.equal(exact, want)
    assert torch.equal(mask, want_mask.to(torch.int32))
    fast, fast_mask = log_mel(batch, padding=padding, exact=False)
    assert float((fast - want).abs().max()) <= FAST_TOL and torch.equal(fast_mask, mask)


@pytest.mark.slow
def test_ten_minutes_cut_at_300_s_or_padded_to_the_longest():
    batch = clips(600.0, 5.0)
    for padding in ("max_length", "longest"):
        want, want_mask = reference(batch, padding)
        got, mask = log_mel(batch, padding=padding)
        assert got.shape == want.shape and float((got - want).abs().max()) <= FAST_TOL
        assert torch.equal(mask, want_mask.to(torch.int32))
    assert want.shape[-1] == 60000 and int(mask[0].sum()) == 60000 and int(mask[1].sum()) == 500


def test_a_silent_clip_is_the_floor_everywhere():
    want, _ = reference([np.zeros(16000, np.float32)], "longest")
    got, _ = log_mel([np.zeros(16000, np.float32)], padding="longest")
    assert torch.equal(got, want) and float(got.max()) == float(got.min()) == -1.5


def test_audio_token_counts_equal_each_omni_processors_rule():
    """Every frame count from 1 to 30000 (300 s), against the installed transformers' own functions."""
    from transformers.models.qwen2_5_omni.processing_qwen2_5_omni import (
        _get_feat_extract_output_lengths as qwen2_5,
    )
    from transformers.models.qwen3_omni_moe.processing_qwen3_omni_moe import (
        _get_feat_extract_output_lengths as qwen3,
    )

    from gpu_mm.audio import audio_tokens

    frames = np.arange(1, 30001)
    assert [audio_tokens(int(n), "qwen2_5_omni") for n in frames] == qwen2_5(frames).tolist()
    assert [audio_tokens(int(n), "qwen3_omni_moe") for n in frames] == qwen3(frames).tolist()
    short = frames[:500]
    assert [audio_tokens(int(n), "qwen3_omni_moe", n_window=25) for n in short] == qwen3(short, 25).tolist()
    with pytest.raises(ValueError):
        audio_tokens(10, "whisper")  # type: ignore[arg-type]


@pytest.mark.parametrize(("feature_size", "chunk_length"), [(80, 30), (128, 300)])
def test_the_feature_extractor_drop_in_gives_transformers_own_output(tmp_path, monkeypatch, feature_size,
                                                                     chunk_length):
    """``GpuMMWhisperFeatureExtractor`` against the stock class, called the ways Whisper and the Omni processors call
    it: one array, a list, a batch array, padding to max_length / longest, with and without the attention mask,
    truncation, a clip ending in true silence, an all-silent clip; the same keys, shapes, dtypes and values. A
    dithered extractor runs transformers' own code (the same random draw gives the same output). Saved, it loads as
    the stock class."""
    from transformers import AutoFeatureExtractor

    import gpu_mm.integrations.hf as hf
    from gpu_mm.integrations.hf import GpuMMWhisperFeatureExtractor

    computed = []
    monkeypatch.setattr(hf, "log_mel", lambda *a, **k: computed.append(1) or log_mel(*a, **k))
    stock = WhisperFeatureExtractor(feature_size=feature_size, chunk_length=chunk_length)
    ours = GpuMMWhisperFeatureExtractor(feature_size=feature_size, chunk_length=chunk_length)
    silent_end = np.concatenate([clips(1.5)[0], np.zeros(8000, np.float32)])
    calls = [
        (clips(2.0)[0], {}),
        (clips(1.0, 3.3), {"return_attention_mask": True}),
        (clips(1.0, 3.3), {"padding": "longest", "return_attention_mask": True}),
        (np.stack(clips(2.0, 2.0)), {"padding": "longest"}),
        ([silent_end, np.zeros(4000, np.float32)], {"padding": "longest", "return_attention_mask": True}),
        (clips(40.0), {"truncation": True}),
    ]
    for audio, kw in calls:
        want = stock(audio, sampling_rate=16000, return_tensors="pt", **kw)
        got = ours(audio, sampling_rate=16000, return_tensors="pt", **kw)
        assert set(got) == set(want)
        for key in want:
            assert got[key].dtype == want[key].dtype and torch.equal(got[key], want[key]), (key, kw)
    assert len(computed) == len(calls)  # gpu-mm computed every call
    dithered = (WhisperFeatureExtractor(feature_size=feature_size, dither=0.1),
                GpuMMWhisperFeatureExtractor(feature_size=feature_size, dither=0.1))
    outs = []
    for fe in dithered:
        torch.manual_seed(0)
        outs.append(fe(clips(1.0), sampling_rate=16000, return_tensors="pt")["input_features"])
    assert torch.equal(outs[0], outs[1])
    ours.save_pretrained(tmp_path)
    assert type(AutoFeatureExtractor.from_pretrained(tmp_path)) is WhisperFeatureExtractor
    assert type(GpuMMWhisperFeatureExtractor.from_pretrained(tmp_path)) is GpuMMWhisperFeatureExtractor
