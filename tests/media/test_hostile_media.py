"""Media a client can send that is odd, broken or built to hurt: each gets a typed error naming the item, or a
decision that is written down and tested (one-frame clips, frames sharing a timestamp, rotated clips), and
memory follows the output, not the source (chunked decode, a working-memory bound checked at planning).

References are independent of the code under test: PyAV's sequential decode of every frame, numpy's
rot90, transformers' Qwen2VLVideoProcessor built in code with defaults."""

from __future__ import annotations

import io
import struct
from fractions import Fraction

import av
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gpu_mm.pipeline as pipeline
from gpu_mm import DecodeError, LimitExceeded, MediaError, UnsupportedMedia
from gpu_mm.media.sources import load_source
from gpu_mm.media.video import PyAVDecoder, probe_video, register_video_decoder, unregister_video_decoder
from gpu_mm.pipeline import memory
from gpu_mm.pipeline.families import Qwen2VLPreprocessor
from gpu_mm.pipeline.output import join

from media_helpers import all_frames, clip, make_image, make_video


@pytest.fixture(scope="module")
def pre():
    return Qwen2VLPreprocessor("cpu")


def _from_frames(pre, frames: np.ndarray):
    """The same pipeline fed already decoded frames (taken as sampled): the reference for decode-side cases."""
    return pre(videos=[frames])


def _mkv_frames_sharing_timestamps(n: int = 20) -> bytes:
    """n frames at 1,000,000 fps in Matroska, whose clock ticks in milliseconds: every pts is 0."""
    buf = io.BytesIO()
    with av.open(buf, "w", format="matroska") as c:
        s = c.add_stream("libx264", rate=1_000_000)
        s.width, s.height, s.pix_fmt = 64, 64, "yuv420p"
        for i in range(n):
            f = av.VideoFrame.from_ndarray(np.full((64, 64, 3), i * 12, np.uint8), format="rgb24")
            f.pts, f.time_base = i, Fraction(1, 1_000_000)
            for p in s.encode(f):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return buf.getvalue()


def _zero_stts(data: bytes) -> bytes:
    """An MP4 whose sample durations are all 0 (every frame at the same time)."""
    b = bytearray(data)
    i = b.find(b"stts")
    for e in range(struct.unpack(">I", b[i + 8 : i + 12])[0]):
        o = i + 12 + 8 * e + 4
        b[o : o + 4] = b"\0\0\0\0"
    return bytes(b)


class TestTypedErrors:
    def test_stream_without_a_decoder(self, pre):
        svg = b'<svg xmlns="http://www.w3.org/2000/svg" width="9" height="9"><rect width="9" height="9"/></svg>'
        with pytest.raises(UnsupportedMedia, match=r"video\[0\].*no decoder"):
            pre(videos=[svg])

    def test_track_title_not_utf8(self, pre):
        buf = io.BytesIO()
        with av.open(buf, "w", format="matroska") as c:
            s = c.add_stream("libx264", rate=24)
            s.width, s.height, s.pix_fmt = 32, 32, "yuv420p"
            s.metadata["title"] = "TITLEXYZ"
            for _ in range(4):
                for p in s.encode(av.VideoFrame.from_ndarray(np.zeros((32, 32, 3), np.uint8), format="rgb24")):
                    c.mux(p)
            for p in s.encode():
                c.mux(p)
        data = buf.getvalue().replace(b"TITLEXYZ", bytes(range(0xF8, 0x100)))
        with pytest.raises(DecodeError, match=r"video\[0\].*UnicodeDecodeError"):
            pre(videos=[data])

    @settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(fmt=st.sampled_from(["PNG", "JPEG", "GIF", "WEBP", "TIFF", "BMP"]),
           edits=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1, max_size=6),
           cut=st.integers(8, 10_000))
    def test_corrupted_images_are_media_errors(self, pre, fmt, edits, cut):
        try:
            pre(images=[_corrupt(make_image(40, 48, fmt, mode="RGB"), edits, cut)])
        except MediaError as exc:
            assert str(exc).startswith("image[0]")

    @settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(edits=st.lists(st.tuples(st.integers(0, 100_000), st.integers(0, 255)), min_size=1, max_size=8),
           cut=st.integers(16, 100_000), container=st.sampled_from(["mp4", "matroska"]))
    def test_corrupted_videos_are_media_errors(self, pre, edits, cut, container):
        try:
            pre(videos=[_corrupt(_clip_in(container), edits, cut)])
        except MediaError as exc:
            assert str(exc).startswith("video[0]")


def _corrupt(data: bytes, edits: list[tuple[int, int]], cut: int) -> bytes:
    """``data`` with bytes overwritten at ``edits`` (position modulo the length, value) and cut to ``cut``."""
    out = bytearray(data)
    for pos, value in edits:
        out[pos % len(out)] = value
    return bytes(out[:cut])


def _clip_in(container: str) -> bytes:
    return make_video(12, 32, 48, gop=4, container=container)


class TestOddButValidVideos:
    def test_frames_sharing_a_timestamp_are_counted_in_decode_order(self, pre):
        data = _mkv_frames_sharing_timestamps()
        info = probe_video(load_source(data, "v"))
        assert info.num_frames == 20 and info.frame_pts == ()  # timestamps cannot tell frames apart
        ours = pre(videos=[data])
        idx = ours.items[0].frame_indices
        ref = _from_frames(pre, all_frames(data)[idx])
        assert torch.equal(ours.pixel_values_videos, ref.pixel_values_videos)

    def test_zero_sample_durations(self, pre):
        data = _zero_stts(make_video(12, 64, 64, gop=4))
        ours = pre(videos=[data])
        idx = ours.items[0].frame_indices
        assert len(idx) == 4
        ref = _from_frames(pre, all_frames(data)[idx])
        assert torch.equal(ours.pixel_values_videos, ref.pixel_values_videos)

    def test_one_frame_video_is_one_temporal_patch_like_transformers(self, pre):
        from transformers import Qwen2VLVideoProcessor

        data = make_video(1, 64, 96)
        ours = pre(videos=[data])
        assert ours.items[0].frame_indices == [0] and ours.video_grid_thw.tolist()[0][0] == 1
        frames = torch.from_numpy(all_frames(data)).permute(0, 3, 1, 2)
        ref = Qwen2VLVideoProcessor()(videos=[frames], return_tensors="pt", do_sample_frames=False,
                                      cap_pixels_per_frame=False)
        assert ours.video_grid_thw.tolist() == ref["video_grid_thw"].tolist()
        # Same decoded pixels, the same torch ops, the frame repeated to fill the pair as transformers does.
        assert torch.equal(ours.pixel_values_videos, ref["pixel_values_videos"])

    @pytest.mark.parametrize("rotation,k", [(90, 1), (180, 2), (270, 3)])
    def test_rotated_clip_is_shown_as_a_player_shows_it(self, pre, rotation, k):
        data = make_video(8, 48, 96, rotation=rotation)
        ours = pre(videos=[data])
        idx = ours.items[0].frame_indices
        # Display rotation is counter-clockwise: numpy's rot90 turns the same way.
        shown = np.ascontiguousarray(np.rot90(all_frames(data)[idx], k=k, axes=(1, 2)))
        ref = _from_frames(pre, shown)
        assert ours.items[0].source_size == shown.shape[1:3]
        assert torch.equal(ours.pixel_values_videos, ref.pixel_values_videos)

    def test_unrotated_clip_unchanged(self):
        assert probe_video(load_source(clip("h264", 8), "v")).rotation == 0


class _NoStreaming:
    """A backend that only answers whole index lists (as DALI, decord and torchcodec do)."""

    name = "no-streaming-test"
    calls: list[int] = []

    def get_frames_at(self, src, info, indices):
        type(self).calls.append(len(indices))
        return PyAVDecoder().get_frames_at(src, info, indices)


class TestBoundedMemory:
    def test_chunked_decode_equals_one_pass(self, monkeypatch):
        data = clip("h264", 48, gop=12, bframes=2)
        whole = Qwen2VLPreprocessor("cpu", sampling="hf")(videos=[data], nframes=24)
        monkeypatch.setattr(memory, "CHUNK_BYTES", 1)  # two frames per chunk
        chunked = Qwen2VLPreprocessor("cpu", sampling="hf")(videos=[data], nframes=24)
        assert torch.equal(whole.pixel_values_videos, chunked.pixel_values_videos)

    def test_backends_without_streaming_are_asked_chunk_by_chunk(self, monkeypatch):
        register_video_decoder("no-streaming-test", _NoStreaming)
        monkeypatch.setattr(memory, "CHUNK_BYTES", 1)
        data = clip("h264", 48, gop=12)
        try:
            ours = Qwen2VLPreprocessor("cpu", video_decoder="no-streaming-test", sampling="hf")(videos=[data],
                                                                                              nframes=10)
        finally:
            unregister_video_decoder("no-streaming-test")
        ref = Qwen2VLPreprocessor("cpu", sampling="hf")(videos=[data], nframes=10)
        assert _NoStreaming.calls == [2, 2, 2, 2, 2]
        assert torch.equal(ours.pixel_values_videos, ref.pixel_values_videos)

    def test_per_call_decoders_get_the_whole_plan_in_one_call(self, monkeypatch):
        """DALI's calls each set up a demuxer and NVDEC again: one call returns every planned frame that fits
        DECODE_CALL_BYTES, resized and patchified a chunk at a time; the plan's bound counts those frames."""
        register_video_decoder("no-streaming-test", _NoStreaming)
        monkeypatch.setattr(memory, "CHUNK_BYTES", 1)  # two frames per chunk
        monkeypatch.setattr(memory, "PER_CALL_DECODERS", frozenset({"no-streaming-test"}))
        monkeypatch.setattr(_NoStreaming, "calls", [])
        data = clip("h264", 48, gop=12, bframes=2)
        try:
            pre = Qwen2VLPreprocessor("cpu", video_decoder="no-streaming-test", sampling="hf", cache_bytes=0)
            whole = pre(videos=[data], nframes=10)
            plan = pre.plan(videos=[data], nframes=10)[0]
            monkeypatch.setattr(memory, "DECODE_CALL_BYTES", 4 * 3 * plan.source_size[0] * plan.source_size[1])
            split = pre(videos=[data], nframes=10)
        finally:
            unregister_video_decoder("no-streaming-test")
        assert _NoStreaming.calls == [10, 4, 4, 2]
        assert (plan.chunk, plan.call) == (2, 10)
        # PyAV streaming with one decoder (no keyframe runs, whose decoders its plan would reserve besides)
        chunked = Qwen2VLPreprocessor("cpu", sampling="hf", decode_threads=0).plan(videos=[data], nframes=10)[0]
        assert plan.nbytes - chunked.nbytes == 8 * 3 * plan.source_size[0] * plan.source_size[1]
        ref = Qwen2VLPreprocessor("cpu", sampling="hf")(videos=[data], nframes=10)
        assert torch.equal(whole.pixel_values_videos, ref.pixel_values_videos)
        assert torch.equal(split.pixel_values_videos, ref.pixel_values_videos)

    def test_call_frames(self):
        assert memory.video_call_frames((720, 1280), 6, 60) == 60
        assert memory.video_call_frames((720, 1280), 6, 59) == 60  # whole chunks
        n = memory.DECODE_CALL_BYTES // (3 * 720 * 1280)
        assert memory.video_call_frames((720, 1280), 6, 10_000) == n // 6 * 6
        assert memory.video_call_frames((8192, 8192), 32, 64) == 32  # never below one chunk

    def test_item_over_the_budget_refused_at_planning(self, monkeypatch):
        decoded = []
        monkeypatch.setattr(PyAVDecoder, "iter_frames_at", lambda *a: decoded.append(1) or iter(()))
        pre = Qwen2VLPreprocessor("cpu", memory_budget_bytes=160 * 2**20)
        with pytest.raises(LimitExceeded, match=r"video\[1\].*: needs up to \d+ MiB of working memory.*memory_budget"):
            pre(videos=[clip("h264", 8), make_video(8, 720, 1280)], max_pixels=1280 * 720)
        assert decoded == []

    def test_plan_states_a_bound_that_grows_with_output_not_frame_count(self):
        pre = Qwen2VLPreprocessor("cpu", sampling="hf")
        short = pre.plan(videos=[clip("h264", 48, h=96, w=128)], nframes=40)[0]
        long = pre.plan(videos=[clip("h264", 48, h=96, w=128)], nframes=48)[0]
        assert short.chunk == long.chunk == memory.MAX_CHUNK_FRAMES
        per_frame_out = (long.nbytes - short.nbytes) / 8
        # Past one chunk, more frames add only their output rows (float32 at the target size).
        target_px = long.target[0] * long.target[1]
        assert per_frame_out == pytest.approx(target_px * 3 * 4, rel=0.01)

    def test_default_budget_is_stated(self):
        pre = Qwen2VLPreprocessor("cpu")
        assert 0 < pre.memory_budget_bytes <= 8 * 2**30


@pytest.mark.parametrize("fmt,mode", [("PNG", "RGBA"), ("PNG", "P"), ("PNG", "LA"), ("JPEG", "CMYK"), ("PNG", "L")])
def test_band_conversion_equals_whole_image_conversion(monkeypatch, fmt, mode):
    """Pillow images are converted into the output band by band (bounded buffers); each band gets the same
    per-pixel conversion as the whole image would, so the result is identical to one whole conversion."""
    import gpu_mm.media.image as image

    data = make_image(301, 203, fmt, mode=mode)
    whole = image.decode_image(load_source(data, "i"))
    monkeypatch.setattr(image, "BAND_PIXELS", 1000)  # 4 rows per band, 76 bands
    assert torch.equal(image.decode_image(load_source(data, "i")), whole)


@pytest.mark.parametrize("actual,wanted,same", [
    ("cpu", "cpu", True), ("cuda:0", "cuda:0", True), ("cuda:1", "cuda:1", True), ("cuda:0", "cuda:1", False),
    ("cpu", "cuda", False), ("cuda:0", "cpu", False), ("cuda", "cuda", True),
])
def test_same_device_compares_like_with_like(actual, wanted, same):
    """A decoder's CUDA output (``cuda:0``) is already on a ``cuda`` slot: no pin_memory() of a CUDA tensor."""
    assert pipeline.same_device(torch.device(actual), torch.device(wanted)) is same


def test_cuda_without_index_means_the_current_device(monkeypatch):
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    assert pipeline.same_device(torch.device("cuda:1"), torch.device("cuda"))
    assert not pipeline.same_device(torch.device("cuda:0"), torch.device("cuda"))


def test_sync_api_keeps_one_slot_per_thread_and_copies_get_their_own():
    """The synchronous API reuses its thread's slot (decoders built once, not per call); a deep copy of the
    preprocessor (as a worker pool makes) starts with none of the original's threads or slots."""
    import copy
    import threading

    pre = Qwen2VLPreprocessor("cpu")
    pre(videos=[clip("h264", 8)])
    slot = pre._sync_slot()
    pre(videos=[clip("h264", 8)])
    assert pre._sync_slot() is slot and ("video_decoder", "pyav") in slot.state
    other: list = []
    t = threading.Thread(target=lambda: other.append(pre._sync_slot()))
    t.start()
    t.join()
    assert other[0] is not slot
    twin = copy.deepcopy(pre)
    assert twin._sync_slot() is not slot
    same = twin(videos=[clip("h264", 8)]).pixel_values_videos
    assert torch.equal(same, pre(videos=[clip("h264", 8)]).pixel_values_videos)


def test_joined_rows_keep_their_placement(monkeypatch):
    """Several items' rows are joined into one tensor; pinned output stays pinned (torch.cat's would not)."""
    rows = [torch.arange(6.0).reshape(2, 3), torch.arange(3.0).reshape(1, 3)]
    joined = join(rows, pinned=False)
    assert torch.equal(joined, torch.cat(rows)) and join(rows[:1], pinned=False) is rows[0]
    asked = {}
    empty = torch.empty

    def spy(*a, pin_memory=False, **k):
        asked["pin_memory"] = pin_memory
        return empty(*a, **k)  # no CUDA driver here to page-lock with; the request is what is checked

    monkeypatch.setattr(torch, "empty", spy)
    assert torch.equal(join(rows, pinned=True), torch.cat(rows)) and asked["pin_memory"] is True


@pytest.mark.parametrize("batched", [True, False])
def test_nvjpeg_waits_for_the_slot_streams_earlier_work(monkeypatch, batched):
    """pytorch/vision#9606: CUDA decode_jpeg writes from its own stream into memory allocated on the current
    one; the current stream must have finished its earlier work before the decode starts (checked here with
    a fake stream and decoder, since the order of calls is what matters)."""
    import gpu_mm.media.image as image

    calls: list[str] = []

    class FakeStream:
        def synchronize(self):
            calls.append("synchronize")

    def fake_decode(data, device):
        calls.append(f"decode on {device}")
        out = torch.zeros(3, 16, 16, dtype=torch.uint8)
        return [out for _ in data] if isinstance(data, list) else out

    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: FakeStream())
    monkeypatch.setattr(image, "jpeg_codec", lambda: fake_decode)
    data = make_image(16, 16, "JPEG")
    src = load_source(data, "image[0]")
    info = image.probe_image(src)
    if batched:
        image.decode_jpegs([(src, info), (src, info)], device="cuda:0")
    else:
        image.decode_jpeg_cuda(src, "cuda:0", info=info)
    assert calls == ["synchronize", "decode on cuda:0"]
