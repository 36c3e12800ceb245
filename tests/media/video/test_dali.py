"""DALI video decoding: the CPU operator on VP9/MJPEG here, NVDEC under the ``cuda`` marker; per-item
fallback to PyAV for codecs a backend lacks, reported in the item's decoder name."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gpu_mm import UnsupportedMedia
from gpu_mm.media.sources import load_source
from gpu_mm.media.video import get_video_decoder, probe_video
from gpu_mm.pipeline.families import Qwen2VLPreprocessor

from media_helpers import all_frames, clip

pytest.importorskip("nvidia.dali.experimental.dynamic")

INDICES = [0, 5, 17, 17, 39, 2]


def _check_close_to_pyav(got: torch.Tensor, ref: np.ndarray) -> None:
    """DALI converts YUV->RGB with its own kernels (chroma upsampling, rounding), FFmpeg's swscale with
    others: pixels differ by a few levels, more at sharp chroma edges of the noisy test pattern
    (measured: median 3, p99 ~27). A wrong frame would differ by ~50 on average (the pattern moves
    3-5 px a frame), so a mean under 6 and a median under 5 also prove the right frames were taken."""
    d = (got.cpu().int() - torch.from_numpy(ref).int()).abs().float()
    assert got.shape == ref.shape and got.dtype == torch.uint8
    assert d.mean() < 6 and d.median() < 5, (float(d.mean()), float(d.median()))


@pytest.mark.parametrize("codec", ["vp9", "mjpeg"])
def test_dali_cpu_decodes_planned_frames(codec):
    data = clip(codec, 40)
    src = load_source(data, "video[0]")
    info = probe_video(src)
    got = get_video_decoder("dali-cpu").get_frames_at(src, info, INDICES)
    _check_close_to_pyav(got, all_frames(data)[INDICES])


def test_dali_cpu_refuses_h264_with_a_typed_error():
    src = load_source(clip("h264", 40), "video[3]")
    with pytest.raises(UnsupportedMedia, match="video\\[3\\].*h264"):
        get_video_decoder("dali-cpu").get_frames_at(src, probe_video(src), [0, 1])


def test_preprocessor_falls_back_per_item_and_says_so():
    pre = Qwen2VLPreprocessor("cpu", video_decoder="dali-cpu")
    feats = pre(videos=[clip("vp9", 40), clip("h264", 40)])
    assert feats.items[0].decoder == "dali-cpu"
    assert feats.items[1].decoder.startswith("pyav (fallback")
    # The fallen-back item is exactly what PyAV gives.
    ref = Qwen2VLPreprocessor("cpu", video_decoder="pyav")(videos=[clip("h264", 40)])
    n = ref.pixel_values_videos.shape[0]
    assert torch.equal(feats.pixel_values_videos[-n:], ref.pixel_values_videos)


def test_a_stream_the_backend_fails_on_falls_back_to_pyav(monkeypatch):
    """A DecodeError from a non-PyAV backend (e.g. NVDEC without that codec on this chip) is retried with
    PyAV for that item; if PyAV fails too, PyAV's error names the item."""
    from gpu_mm import Decoded, DecodeError
    from gpu_mm.media.video import register_video_decoder, unregister_video_decoder

    class Failing:
        name = "failing"

        def get_frames_at(self, src, info, indices):
            raise DecodeError(src.item, "this chip's decoder has no such codec")

    register_video_decoder("failing", Failing)
    try:
        feats = Qwen2VLPreprocessor("cpu", video_decoder="failing")(videos=[clip("h264", 40)])
        assert feats.items[0].decoder == "pyav (fallback: this chip's decoder has no such codec)"
        assert feats.items[0].decoded == Decoded("pyav", fallback_reason="this chip's decoder has no such codec")
        ref = Qwen2VLPreprocessor("cpu", video_decoder="pyav")(videos=[clip("h264", 40)])
        assert torch.equal(feats.pixel_values_videos, ref.pixel_values_videos)
        from gpu_mm.media.video import PyAVDecoder

        def pyav_fails(self, src, info, indices):
            raise DecodeError(src.item, "pyav: corrupt too")

        monkeypatch.setattr(PyAVDecoder, "get_frames_at", pyav_fails)
        monkeypatch.setattr(PyAVDecoder, "iter_frames_at", pyav_fails)
        with pytest.raises(DecodeError, match=r"^video\[0\].*pyav: corrupt too"):
            Qwen2VLPreprocessor("cpu", video_decoder="failing")(videos=[clip("h264", 40)])
    finally:
        unregister_video_decoder("failing")


@pytest.mark.cuda
@pytest.mark.parametrize("codec", ["h264", "hevc", "vp9"])
def test_nvdec_frames_on_gpu_close_to_pyav(codec):
    # 160x192: NVDEC's smallest frame is 144x144 for HEVC and 128x128 for VP9 (an H200 said so on 2026-11-28).
    data = clip(codec, 40, 160, 192, bframes=2 if codec != "vp9" else 0)
    src = load_source(data, "video[0]")
    got = get_video_decoder("dali").get_frames_at(src, probe_video(src), INDICES)
    assert got.is_cuda
    _check_close_to_pyav(got, all_frames(data)[INDICES])


@pytest.mark.parametrize("backend", ["mixed", "cpu"])
def test_each_backend_names_a_device_dynamic_mode_accepts(backend, monkeypatch):
    """Dynamic mode takes device types ("cpu", "gpu"), not backends: "mixed" was refused on the first GPU run.
    Checked here against DALI's own device parser (without a GPU it can only object to the device id)."""
    import nvidia.dali.experimental.dynamic as ndd

    from gpu_mm.media.video.dali import DALIVideoDecoder

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    decoder = DALIVideoDecoder(backend)
    try:
        ndd.Device(decoder.ndd_device)
    except (ValueError, RuntimeError) as exc:  # no GPU here: the device id or the CUDA driver, never the type
        assert "device type" not in str(exc), exc


@pytest.mark.cuda
def test_a_clip_below_nvdecs_smallest_frame_falls_back_to_pyav():
    """128x96 HEVC: NVDEC refuses it (smaller than its 144x144), the item is decoded by PyAV and says so."""
    data = clip("hevc", 24)
    feats = Qwen2VLPreprocessor("cuda", video_decoder="dali")(videos=[data])
    assert feats.items[0].decoded.backend == "pyav" and "too small" in feats.items[0].decoded.fallback_reason
    assert feats.pixel_values_videos.is_cuda
    cpu = Qwen2VLPreprocessor("cpu")(videos=[data])
    assert torch.equal(feats.video_grid_thw, cpu.video_grid_thw)
