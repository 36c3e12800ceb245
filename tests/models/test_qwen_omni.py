"""Qwen2.5-Omni and Qwen3-Omni against transformers' own processors (``Qwen2_5OmniProcessor`` and
``Qwen3OmniMoeProcessor`` of the installed version, loaded from a weightless model folder written in code: the stock
Qwen2-VL image and video processors and Whisper's feature extractor with the Omni settings).

What is compared: every tensor the processor returns for media (pixels, grids, ``video_second_per_grid``,
``input_features``, ``feature_attention_mask``) and the placeholder tokens it writes into the prompt (image, video,
audio, and a video with its own audio interleaved). The audio reaches transformers as samples: a 16 kHz mono WAV read
with the standard library's ``wave`` (PCM / 32768, independent of FFmpeg), or, for other codecs and rates, the samples
gpu-mm decoded (its decoder is held to an analytic tone in tests/media/test_audio.py); the features then must be equal.

Tolerance: pixels as the Qwen2-VL tests (the same decoded frames through the same torch ops: equal). Audio features:
bit for bit (gpu-mm computes transformers' sequence of torch ops; the fast path for long padding is exact for
Qwen2.5-Omni's 300 s padding in these cases, held to 1e-5 as in tests/test_audio_features.py)."""

from __future__ import annotations

import io
import wave

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")

import gpu_mm  # noqa: E402
from gpu_mm.media.audio import decode_audio  # noqa: E402
from gpu_mm.media.sources import load_source  # noqa: E402
from gpu_mm.media.synth import make_audio, make_image, make_video  # noqa: E402
from gpu_mm.models.qwen_omni import audio_in_video_placeholder  # noqa: E402

from family_folders import omni_folder  # noqa: E402

FAMILIES = ["qwen2_5_omni", "qwen3_omni_moe"]
# transformers' own interleaving calls np.arange on a 0-d torch tensor, which numpy 2 warns about.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
FAST_TOL = 1e-5


@pytest.fixture(scope="module", params=FAMILIES)
def omni(request, tmp_path_factory):
    folder = omni_folder(request.param, tmp_path_factory.mktemp(request.param))
    processor = transformers.AutoProcessor.from_pretrained(folder)
    return request.param, folder, processor


def wav_samples(data: bytes) -> np.ndarray:
    with wave.open(io.BytesIO(data)) as w:
        assert w.getframerate() == 16000 and w.getnchannels() == 1 and w.getsampwidth() == 2
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    return (pcm / 32768.0).astype(np.float32)


def tokens(processor, ids) -> dict[str, int]:
    tok = processor.tokenizer
    counts = {}
    for name in ("image", "video", "audio"):
        counts[name] = int((ids == tok.convert_tokens_to_ids(getattr(processor, f"{name}_token"))).sum())
    return counts


def run_of(processor, ids) -> list[tuple[str, int]]:
    """The placeholder runs between the audio start and end tokens of a prompt, as (kind, count)."""
    tok = processor.tokenizer
    names = {tok.convert_tokens_to_ids(processor.video_token): "video",
             tok.convert_tokens_to_ids(processor.audio_token): "audio"}
    ids = ids.tolist()
    start = ids.index(tok.convert_tokens_to_ids(processor.audio_bos_token))
    end = ids.index(tok.convert_tokens_to_ids(processor.audio_eos_token))
    runs: list[tuple[str, int]] = []
    for i in ids[start + 1 : end]:
        kind = names[i]
        runs = runs[:-1] + [(kind, runs[-1][1] + 1)] if runs and runs[-1][0] == kind else runs + [(kind, 1)]
    return runs


def reference(processor, model_type, *, images=None, videos=None, audio=None, **kwargs):
    parts = [processor.image_token] * len(images or []) + [processor.video_token] * len(videos or [])
    from_videos = kwargs.get("audio_from_video_indices") or []
    parts += [processor.audio_token] * (len(audio or []) - sum(i is not None for i in from_videos))
    text = "describe " + " ".join(parts)
    if videos:
        kwargs.setdefault("videos_kwargs", {})["fps"] = 2.0  # the rate gpu-mm is told decoded frames were taken at
    return processor(text=[text], images=images, videos=videos, audio=audio, return_tensors="pt", **kwargs)


def test_images_videos_and_audio_equal_the_processors(omni):
    model_type, folder, processor = omni
    pre = gpu_mm.Preprocessor.from_pretrained(folder, device="cpu")
    assert pre.config.family == model_type and pre.config.modalities == ("image", "video", "audio")
    image = make_image(200, 300, seed=3)
    frames = np.stack([np.roll(make_frame(120, 160), 7 * t, axis=1) for t in range(6)])
    clips = [make_audio(s, seed=i) for i, s in enumerate((0.5, 7.3, 61.0))]
    ours = pre(images=[image], videos=[frames], audios=clips)
    from PIL import Image

    want = reference(processor, model_type, images=[Image.open(io.BytesIO(image)).convert("RGB")], videos=[frames],
                     audio=[wav_samples(c) for c in clips])
    got = ours.to_dict()
    for key in ("image_grid_thw", "video_grid_thw", "feature_attention_mask"):
        assert torch.equal(got[key], want[key].to(got[key].dtype)), key
    for key in ("pixel_values", "pixel_values_videos"):
        torch.testing.assert_close(got[key], want[key], rtol=0, atol=1e-6)
    assert torch.allclose(got["video_second_per_grid"], want["video_second_per_grid"].to(torch.float32))
    assert got["input_features"].shape == want["input_features"].shape
    torch.testing.assert_close(got["input_features"], want["input_features"], rtol=0, atol=FAST_TOL)
    counts = tokens(processor, want["input_ids"][0])
    reports = {k: sum(r.num_tokens for r in ours.items if r.kind == k) for k in ("image", "video", "audio")}
    assert reports == counts


def make_frame(h, w):
    from gpu_mm.media.synth import pattern

    return pattern(h, w, seed=5)


@pytest.mark.parametrize("seconds", [0.5, 30.0, 600.0])
def test_one_clip_bit_for_bit_from_a_half_second_to_ten_minutes(omni, seconds):
    model_type, folder, processor = omni
    pre = gpu_mm.Preprocessor.from_pretrained(folder, device="cpu", cache_bytes=0)
    data = make_audio(seconds, noise=0.05)
    got = pre(audios=[data]).to_dict()
    want = reference(processor, model_type, audio=[wav_samples(data)])
    assert got["input_features"].shape == want["input_features"].shape  # 10 min: cut at 300 s by Qwen2.5-Omni only
    assert torch.equal(got["input_features"], want["input_features"])
    assert torch.equal(got["feature_attention_mask"], want["feature_attention_mask"].to(torch.int32))


@pytest.mark.parametrize("codec,fmt,rate,channels", [
    ("flac", "flac", 44100, 2), ("libmp3lame", "mp3", 22050, 1), ("aac", "adts", 48000, 2),
    ("libopus", "ogg", 48000, 1), ("pcm_s16le", "wav", 8000, 1)])
def test_other_codecs_and_rates_give_the_processors_features_of_the_decoded_clip(omni, codec, fmt, rate, channels):
    model_type, folder, processor = omni
    data = make_audio(2.5, rate, codec=codec, fmt=fmt, channels=channels)
    pre = gpu_mm.Preprocessor.from_pretrained(folder, device="cpu")
    got = pre(audios=[data, make_audio(1.0)]).to_dict()
    samples = decode_audio(load_source(data, "clip")).samples
    want = reference(processor, model_type, audio=[samples, wav_samples(make_audio(1.0))])
    assert torch.equal(got["feature_attention_mask"], want["feature_attention_mask"].to(torch.int32))
    torch.testing.assert_close(got["input_features"], want["input_features"], rtol=0, atol=FAST_TOL)


def test_audio_in_video_features_and_interleaved_placeholders_equal_the_processors(omni):
    model_type, folder, processor = omni
    video = make_video(90, 96, 128, fps=30, audio_rate=44100)
    pre = gpu_mm.Preprocessor.from_pretrained(folder, device="cpu")
    ours = pre(videos=[video], use_audio_in_video=True, nframes=6)
    track = next(r for r in ours.items if r.kind == "audio")
    assert track.item.endswith("its audio track") and 2.9 < track.seconds < 3.2
    # transformers is handed the same frames and the track's samples (its own loader needs torchcodec's audio).
    from gpu_mm.media.video import get_video_decoder, probe_video

    src = load_source(video, "v")
    frames = get_video_decoder("pyav").get_frames_at(src, probe_video(src), ours.items[0].frame_indices).numpy()
    samples = decode_audio(load_source(video, "v")).samples
    want = reference(processor, model_type, videos=[frames], audio=[samples], audio_from_video_indices=[0],
                     load_audio_from_video=True)
    got = ours.to_dict()
    torch.testing.assert_close(got["pixel_values_videos"], want["pixel_values_videos"], rtol=0, atol=1e-6)
    torch.testing.assert_close(got["input_features"], want["input_features"], rtol=0, atol=FAST_TOL)
    assert torch.equal(got["feature_attention_mask"], want["feature_attention_mask"].to(torch.int32))
    video_report = ours.items[0]
    runs = audio_in_video_placeholder(model_type, video_report.grid_thw, pre.config.merge_size,
                                      float(got["video_second_per_grid"][0]), track.num_tokens)
    assert runs == run_of(processor, want["input_ids"][0])
    assert len(runs) > 2  # interleaved, not one run of each


def test_a_silent_video_adds_no_audio_and_decoded_frames_are_refused(omni):
    model_type, folder, _ = omni
    pre = gpu_mm.Preprocessor.from_pretrained(folder, device="cpu")
    feats = pre(videos=[make_video(8, 64, 64)], use_audio_in_video=True)
    assert [r.kind for r in feats.items] == ["video"] and feats.input_features is None
    with pytest.raises(gpu_mm.InvalidRequest, match="no audio track"):
        pre(videos=[np.zeros((4, 64, 64, 3), np.uint8)], use_audio_in_video=True)


@pytest.mark.parametrize("frames_per_grid", [0.5, 1.0, 2.0, 4.0 / 3.0])
def test_the_placeholder_interleaving_is_the_processors(omni, frames_per_grid):
    """Pure arithmetic against the processor's own method, over grids and clip lengths."""
    model_type, _, processor = omni
    for t in (1, 3, 8):
        for audio_tokens in (0, 5, 40, 123):
            grid = torch.tensor([t, 8, 12])
            inputs = {"video_grid_thw": [grid], "video_second_per_grid": [frames_per_grid]}
            audio = {"num_audio_tokens": [audio_tokens]}
            pps = 25 if model_type == "qwen2_5_omni" else 13.0
            text = processor.replace_video_with_audio_token(inputs, 0, audio, 0, position_id_per_seconds=pps,
                                                           seconds_per_chunk=2.0)
            body = text[len(processor.audio_bos_token) : -len(processor.audio_eos_token)]
            want: list[tuple[str, int]] = []
            for piece in body.replace(processor.video_token, "v").replace(processor.audio_token, "a"):
                kind = "video" if piece == "v" else "audio"
                want = want[:-1] + [(kind, want[-1][1] + 1)] if want and want[-1][0] == kind else want + [(kind, 1)]
            assert audio_in_video_placeholder(model_type, grid.tolist(), 2, frames_per_grid, audio_tokens) == want


def test_audio_is_cached_by_content_and_refused_where_no_family_takes_it(tmp_path):
    pre = gpu_mm.Preprocessor.for_model("qwen2_5_omni", device="cpu")
    clip = make_audio(2.0)
    first, second = pre(audios=[clip]), pre(audios=[clip])
    assert [r.cache for r in first.items] == ["miss"] and [r.cache for r in second.items] == ["hit"]
    assert torch.equal(first.input_features, second.input_features)
    with pytest.raises(gpu_mm.InvalidRequest, match="takes no audios"):
        gpu_mm.Preprocessor.for_model("qwen2_vl", device="cpu")(audios=[clip])


def test_config_from_a_published_folder_layout(tmp_path):
    """A published Omni model keeps the feature extractor's settings in preprocessor_config.json beside the image
    processor's; the processor's own video pixel bounds win over the video processor config's."""
    import json

    (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwen2_5_omni"}))
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({
        "chunk_length": 30, "feature_size": 80, "n_samples": 480000, "patch_size": 14, "merge_size": 2,
        "temporal_patch_size": 2, "min_pixels": 3136, "max_pixels": 12845056, "processor_class": "Qwen2_5OmniProcessor",
        "image_processor_type": "Qwen2VLImageProcessor", "feature_extractor_type": "WhisperFeatureExtractor"}))
    cfg = gpu_mm.Preprocessor.from_pretrained(tmp_path, device="cpu").config
    assert (cfg.num_mel_bins, cfg.audio_max_samples, cfg.image_max_pixels) == (80, 480000, 12845056)
    assert (cfg.video_min_pixels, cfg.video_max_pixels) == (128 * 28 * 28, 768 * 28 * 28)


@pytest.mark.parametrize("workers", ["threads", "processes"])
def test_the_async_api_gives_the_synchronous_features_and_caches_clips(workers):
    """Audio decodes on a slot's thread (slot processes lay out pixel rows only), then the call's clips become
    features together on a slot; concurrent calls for the same clips get the same features (computed, joined or
    from the cache, as they happen to meet), and a later call finds both clips in the cache."""
    import asyncio

    clip, film = make_audio(4.0, 22050, codec="libmp3lame", fmt="mp3"), make_video(30, 64, 96, audio_rate=44100)
    want = gpu_mm.Preprocessor.for_model("qwen3_omni_moe", device="cpu")(
        images=[make_image(64, 64)], videos=[film], audios=[clip], use_audio_in_video=True).to_dict()

    async def main():
        pre = gpu_mm.Preprocessor.for_model("qwen3_omni_moe", device="cpu", workers=workers, num_slots=2)
        try:
            first, second = await asyncio.gather(*(pre.preprocess(
                images=[make_image(64, 64)], videos=[film], audios=[clip], use_audio_in_video=True)
                for _ in range(2)))
            third = await pre.preprocess(audios=[clip], videos=[film], use_audio_in_video=True, fps=1.0)
            return first, second, third, pre.statistics()
        finally:
            await pre.aclose()

    first, second, third, stats = asyncio.run(main())
    for feats in (first, second):
        got = feats.to_dict()
        assert set(got) == set(want) and all(torch.equal(got[k], want[k]) for k in want)
    assert {r.cache for r in first.items + second.items} <= {"miss", "hit", "coalesced"}
    # The clips' samples depend on no option: another fps still finds them (the video is computed anew).
    assert [(r.kind, r.cache) for r in third.items] == [("video", "miss"), ("audio", "hit"), ("audio", "hit")]
    assert torch.equal(third.input_features, first.input_features)
    assert stats.workers == workers


def test_sglangs_processor_contract_takes_audio_data():
    """``AsyncMMDataProcessor.process(audio_data=...)``, SGLang's signature: the clips' features in the processor
    output beside the images', with a report per item."""
    import asyncio

    clip = make_audio(1.5)

    async def main():
        pre = gpu_mm.Preprocessor.for_model("qwen2_5_omni", device="cpu", workers="threads")
        wrapper = gpu_mm.AsyncMMDataProcessor(pre, timeout_s=60)
        try:
            return await wrapper.process(image_data=[make_image(64, 64)], audio_data=[clip], input_text_or_ids="x")
        finally:
            await wrapper.aclose()
            await pre.aclose()

    out = asyncio.run(main())
    want = gpu_mm.Preprocessor.for_model("qwen2_5_omni", device="cpu")(images=[make_image(64, 64)], audios=[clip])
    assert torch.equal(out["input_features"], want.input_features) and out["input_text"] == "x"
    assert [r.kind for r in out["items"]] == ["image", "audio"]
