"""The PyNvVideoCodec (NVDEC) backend against a stand-in of its API (``fake_nvcodec``): which frames it asks for
and in what batches, one decoder per stream reopened per item, copies made before the decoder's buffers are asked
for more, typed errors and the per-item fallback. NVDEC itself (colours, seeking, memory) is checked on a card."""

from __future__ import annotations

import dataclasses
import importlib.machinery
import os
import sys

import pytest
import torch

from gpu_mm import BackendUnavailable, DecodeError, UnsupportedMedia
from gpu_mm.media.sources import load_source
from gpu_mm.media.video import available_video_decoders, get_video_decoder, probe_video
from gpu_mm.media.video.nvcodec import FRAMES_PER_BATCH, memory_file
from gpu_mm.pipeline.families import Qwen2VLPreprocessor

import fake_nvcodec
from media_helpers import all_frames, clip

INDICES = [0, 5, 17, 17, 39, 2]


@pytest.fixture
def stream(monkeypatch):
    return fake_nvcodec.install(monkeypatch)


def _decode(decoder, data: bytes, indices, item: str = "video[0]"):
    src = load_source(data, item)
    return decoder.get_frames_at(src, probe_video(src), indices)


def test_planned_frames_in_order_with_repeats(stream):
    data = clip("h264", 40)
    decoder = get_video_decoder("pynvvideocodec")
    got = _decode(decoder, data, INDICES)
    assert got.dtype == torch.uint8 and torch.equal(got, torch.from_numpy(all_frames(data)[INDICES]))
    (built,) = fake_nvcodec.SimpleDecoder.built
    assert built["output_color_type"] == fake_nvcodec.OutputColorType.RGB and built["use_device_memory"]
    assert built["cuda_stream"] == stream.cuda_stream and built["cuda_context"] == 0  # the primary context
    assert (built["max_width"], built["max_height"]) == (128, 96)
    assert fake_nvcodec.SimpleDecoder.batches == [sorted(set(INDICES))]  # each frame once, in stream order
    assert stream.synchronized == 1


def test_frames_are_asked_for_a_batch_at_a_time(stream):
    data = clip("h264", 80)
    indices = list(range(0, 80, 1))[:70]
    got = _decode(get_video_decoder("pynvvideocodec"), data, indices)
    assert torch.equal(got, torch.from_numpy(all_frames(data)[indices]))
    sizes = [len(b) for b in fake_nvcodec.SimpleDecoder.batches]
    assert sizes == [FRAMES_PER_BATCH, FRAMES_PER_BATCH, 70 - 2 * FRAMES_PER_BATCH]
    assert stream.synchronized == len(sizes)  # each batch copied out before the next is asked for


def test_one_decoder_per_stream_reopened_for_each_item(stream):
    decoder = get_video_decoder("pynvvideocodec")
    small, other, large = clip("h264", 40), clip("h264", 30, gop=6), clip("h264", 20, h=192, w=256)
    for data in (small, other, large, small):
        got = _decode(decoder, data, [0, 3])
        assert torch.equal(got, torch.from_numpy(all_frames(data)[[0, 3]]))
    built = fake_nvcodec.SimpleDecoder.built
    # Built for the first clip, reopened for the second, rebuilt for a larger frame, reopened for the last.
    assert [(b["max_width"], b["max_height"]) for b in built] == [(128, 96), (256, 192)]
    assert len(fake_nvcodec.SimpleDecoder.reopened) == 2
    assert all(p.startswith("/proc/self/fd/") for p in fake_nvcodec.SimpleDecoder.reopened)


def test_memory_file_is_the_bytes_and_goes_with_its_block():
    data = os.urandom(3 * 2**20 + 17)
    with memory_file(data) as path:
        with open(path, "rb") as f:
            assert f.read() == data
    assert not os.path.exists(path)


def test_a_stream_it_fails_on_is_a_decode_error_and_the_session_is_rebuilt(stream):
    decoder = get_video_decoder("pynvvideocodec")
    bad, good = clip("h264", 40), clip("h264", 30, gop=6)
    fake_nvcodec.SimpleDecoder.fail_on = {bad[:64].hex()}
    with pytest.raises(DecodeError, match=r"^video\[2\].*PyNvVideoCodec failed: cuvidDecodePicture failed"):
        _decode(decoder, bad, [0, 1], "video[2]")
    assert torch.equal(_decode(decoder, good, [1]), torch.from_numpy(all_frames(good)[[1]]))
    assert len(fake_nvcodec.SimpleDecoder.built) == 2  # the failed session was not reused
    fake_nvcodec.SimpleDecoder.refuse = {bad[:64].hex()}  # the library's bare Exception, at open
    with pytest.raises(DecodeError, match=r"^video\[4\].*PyNvVideoCodec failed: Elementary streams not supported"):
        _decode(decoder, bad, [0], "video[4]")


def test_fewer_frames_than_planned_and_codecs_nvdec_lacks_are_typed(stream, monkeypatch):
    decoder = get_video_decoder("pynvvideocodec")
    data = clip("h264", 40)
    src = load_source(data, "video[1]")
    info = probe_video(src)
    with pytest.raises(UnsupportedMedia, match=r"video\[1\].*'prores'"):
        decoder.get_frames_at(src, dataclasses.replace(info, codec="prores"), [0])
    monkeypatch.setattr(fake_nvcodec.SimpleDecoder, "__len__", lambda self: 10)
    with pytest.raises(DecodeError, match=r"video\[1\].*reaches 10 frames; planned index 39"):
        decoder.get_frames_at(src, info, [0, 39])


def test_the_preprocessor_with_it_equals_pyav_and_falls_back_per_item(stream):
    videos = [clip("h264", 48), clip("h264", 30, gop=6)]
    ref = Qwen2VLPreprocessor("cpu", video_decoder="pyav", cache_bytes=0)(videos=videos)
    pre = Qwen2VLPreprocessor("cpu", video_decoder="pynvvideocodec", cache_bytes=0)
    feats = pre(videos=videos)
    assert [it.decoder for it in feats.items] == ["pynvvideocodec"] * 2
    assert torch.equal(feats.pixel_values_videos, ref.pixel_values_videos)
    fake_nvcodec.SimpleDecoder.fail_on = {videos[1][:64].hex()}
    feats = pre(videos=videos)
    assert feats.items[0].decoder == "pynvvideocodec"
    assert feats.items[1].decoder.startswith("pyav (fallback") and "PyNvVideoCodec failed" in feats.items[1].decoder
    assert torch.equal(feats.pixel_values_videos, ref.pixel_values_videos)


def test_listed_when_installed_and_unavailable_without_it_or_a_gpu(monkeypatch):
    monkeypatch.setitem(sys.modules, "PyNvVideoCodec", None)  # not installed (or failed to load)
    assert "pynvvideocodec" not in available_video_decoders()
    with pytest.raises(BackendUnavailable, match="pip install pynvvideocodec"):
        get_video_decoder("pynvvideocodec")
    fake_nvcodec.install(monkeypatch)
    sys.modules["PyNvVideoCodec"].__spec__ = importlib.machinery.ModuleSpec("PyNvVideoCodec", None)
    assert "pynvvideocodec" in available_video_decoders()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(BackendUnavailable, match="needs a CUDA device"):
        get_video_decoder("pynvvideocodec")


def _real_nvcodec():
    from gpu_mm.media.video.nvcodec import PyNvVideoCodecDecoder

    try:
        return PyNvVideoCodecDecoder()
    except BackendUnavailable as exc:
        pytest.skip(str(exc))


@pytest.mark.cuda
@pytest.mark.parametrize("codec,bframes", [("h264", 0), ("h264", 2), ("hevc", 0), ("vp9", 0)])
def test_nvdec_frames_on_the_gpu_close_to_pyav(codec, bframes):
    """NVDEC's YUV->RGB against swscale's: a few levels apart, more at chroma edges of the noisy pattern (the
    bounds DALI's NVDEC meets, tests/media/video/test_dali.py); a wrong frame would be ~50 apart on average."""
    decoder = _real_nvcodec()
    data = clip(codec, 48, 240, 320, bframes=bframes)
    got = _decode(decoder, data, INDICES)
    assert got.is_cuda and got.shape == (len(INDICES), 240, 320, 3)
    d = (got.cpu().int() - torch.from_numpy(all_frames(data)[INDICES]).int()).abs().float()
    assert d.mean() < 6 and d.median() < 5, (float(d.mean()), float(d.median()))


@pytest.mark.cuda
async def test_nvdec_through_the_async_api_on_slot_streams_matches_the_cpu_path():
    """Slot threads, each with its stream and its own session, reopened across items: the features within NVDEC's
    colour tolerance of the CPU path's, the items say which decoder made them."""
    _real_nvcodec()
    videos = [clip("h264", 48, 240, 320, bframes=2), clip("h264", 30, 240, 320, gop=6), clip("vp9", 40)]
    cpu = Qwen2VLPreprocessor("cpu", cache_bytes=0)(videos=videos)
    pre = Qwen2VLPreprocessor("cuda", video_decoder="pynvvideocodec", num_slots=2, cache_bytes=0)
    try:
        for _ in range(2):
            gpu = await pre.preprocess(videos=videos)
            assert [it.decoder for it in gpu.items] == ["pynvvideocodec"] * 3
            assert torch.equal(gpu.video_grid_thw, cpu.video_grid_thw)
            d = (gpu.pixel_values_videos.float().cpu() - cpu.pixel_values_videos).abs() * (255 * 0.2613)
            assert d.mean() < 6 and d.median() < 5
    finally:
        await pre.aclose()


def test_the_plan_counts_the_batch_the_decoder_holds(stream):
    """Besides the call's frames (as DALI's), the item's working memory counts the one batch of RGB frames
    PyNvVideoCodec holds until they are copied out."""
    from gpu_mm.pipeline import memory

    data = clip("h264", 80)
    nv = Qwen2VLPreprocessor("cpu", video_decoder="pynvvideocodec").plan(videos=[data], nframes=40)[0]
    dali_like = memory.video_call_frames(nv.source_size, nv.chunk, 40)
    assert nv.call == dali_like
    frame = 3 * nv.source_size[0] * nv.source_size[1]
    pyav = Qwen2VLPreprocessor("cpu", video_decoder="pyav", decode_threads=0).plan(videos=[data], nframes=40)[0]
    assert nv.nbytes - pyav.nbytes == (nv.call - nv.chunk) * frame + FRAMES_PER_BATCH * frame
    assert memory.DECODER_HELD_FRAMES["pynvvideocodec"] == FRAMES_PER_BATCH
