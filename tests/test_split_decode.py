"""A video's keyframe runs decoded at once on spare threads (gpu_mm.pipeline.split_decode): the same features bit
for bit as one decoder, for every family's layout, through the synchronous API, slot threads and slot processes;
the threads lent and given back on every path; every run thread ended when a call ends, fails or stops early;
the memory each plan reserves covers the decoders it may use."""

from __future__ import annotations

import asyncio
import copy
import threading

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gpu_mm import DecodeError, Qwen2VLPreprocessor
from gpu_mm.concurrency import SpareThreads, choose
from gpu_mm.media.sources import load_source
from gpu_mm.media.video import PyAVDecoder, probe_video
from gpu_mm.media.video.runs import keyframe_positions
from gpu_mm.pipeline import execute
from gpu_mm.pipeline.families import preprocessor_class
from gpu_mm.pipeline.memory import split_decode_fit, video_chunk_frames
from gpu_mm.pipeline.plan import Item, ItemPlan
from gpu_mm.pipeline.split_decode import split_frame_chunks, split_plan

from media_helpers import all_frames, make_video


def _clip(codec: str = "h264", frames: int = 240, bframes: int = 2) -> bytes:
    """10 s at 24 fps, a keyframe every second, one slice per frame: runs to split at every family's sampling."""
    return make_video(frames, 64, 96, codec=codec, fps=24, gop=24, bframes=bframes, single_slice=codec == "h264")


def _split_threads_alive() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("gpu-mm-split-decode")]


def _same(a, b) -> None:
    da, db = a.to_dict(), b.to_dict()
    assert da.keys() == db.keys()
    for k in da:
        if isinstance(da[k], torch.Tensor):
            assert torch.equal(da[k], db[k]), k
        else:
            assert da[k] == db[k], k


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen3_vl", "glm4v", "internvl", "qwen2_5_omni"])
def test_runs_at_once_give_one_decoders_bits_for_every_layout(family, monkeypatch):
    cls = preprocessor_class(family)
    one = cls("cpu", cache_bytes=0, decode_threads=0)
    split = cls("cpu", cache_bytes=0, decode_threads=3)
    lent_while_running = []
    real = execute.split_frame_chunks

    def watched(item, starts, frames):
        lent_while_running.append((len(starts), split.statistics().decode_threads_lent))
        return real(item, starts, frames)

    monkeypatch.setattr(execute, "split_frame_chunks", watched)
    try:
        clip = _clip()
        a, b = one(videos=[clip]), split(videos=[clip])
        _same(a, b)
        assert a.items[0].decoded.threads == 1
        assert b.items[0].decoded.threads > 1, b.items[0].decoded
        assert "keyframe runs at once" in str(b.items[0].decoded)
        # The runs beyond the first ran on lent threads, given back when the call ended.
        assert lent_while_running == [(b.items[0].decoded.threads, b.items[0].decoded.threads - 1)]
        assert split.statistics().decode_threads_lent == 0
    finally:
        one.close()
        split.close()
    assert _split_threads_alive() == []


@pytest.mark.parametrize("codec", ["hevc", "vp9"])
def test_other_codecs_split_the_same(codec):
    one = Qwen2VLPreprocessor("cpu", cache_bytes=0, decode_threads=0)
    split = Qwen2VLPreprocessor("cpu", cache_bytes=0, decode_threads=3)
    try:
        clip = _clip(codec, bframes=0)
        b = split(videos=[clip])
        _same(one(videos=[clip]), b)
        assert b.items[0].decoded.threads > 1
    finally:
        one.close()
        split.close()


@pytest.mark.parametrize("codec", ["h264", "hevc"])
def test_open_gops_split_the_same(codec):
    """Open GOPs (x264's open-gop; x265's default): the B-frames shown just before a keyframe refer to the GOP before
    it and cannot be decoded from that keyframe. They belong to the run before (runs are cut by presentation
    time), whose decoder goes on through the keyframe: every frame equals a sequential decode of the whole clip."""
    data = make_video(240, 64, 96, codec=codec, fps=24, gop=24, bframes=3, single_slice=codec == "h264",
                      open_gop=codec == "h264")
    src = load_source(data, "video[0]")
    info = probe_video(src)
    keys = keyframe_positions(info)
    assert len(keys) >= 8  # (both encodings here put B-frames shown before a keyframe after it: 9 and 27 of them)
    every = list(range(info.num_frames))
    starts = keys[::2]  # runs that begin exactly at keyframes, right after the frames shown before them
    whole = torch.from_numpy(all_frames(data))
    assert torch.equal(PyAVDecoder().get_frames_in_runs(src, info, every, starts), whole)
    one = Qwen2VLPreprocessor("cpu", cache_bytes=0, decode_threads=0)
    split = Qwen2VLPreprocessor("cpu", cache_bytes=0, decode_threads=3)
    try:
        for frames in (None, 48, 120):
            options = {} if frames is None else {"nframes": frames}
            b = split(videos=[data], **options)
            _same(one(videos=[data], **options), b)
            assert b.items[0].decoded.threads > 1
    finally:
        one.close()
        split.close()


@pytest.mark.parametrize("workers", ["threads", "processes"])
async def test_slot_threads_and_processes_lend_and_give_back(workers):
    clip, other = _clip(), _clip(frames=192)
    ref = Qwen2VLPreprocessor("cpu", cache_bytes=0, decode_threads=0, workers="threads")
    pre = Qwen2VLPreprocessor("cpu", cache_bytes=0, decode_threads=2, workers=workers, num_slots=2)
    try:
        got = await asyncio.gather(*(pre.preprocess(videos=[c]) for c in (clip, other, clip, other)))
        want = [ref(videos=[c]) for c in (clip, other)]
        for k, g in enumerate(got):
            _same(want[k % 2], g)
        threads = [g.items[0].decoded.threads for g in got]
        # Two slots, two spare threads: each video got what was free as it started, never more than lent in all.
        assert max(threads) > 1 and all(1 <= t <= 3 for t in threads)
        assert pre.spare_threads.lent == 0
    finally:
        await pre.aclose()
        ref.close()
    assert _split_threads_alive() == []


@pytest.mark.parametrize("workers", ["threads", "processes"])
async def test_by_default_a_lone_video_borrows_the_idle_slots_core_and_a_busy_machine_lends_none(workers, monkeypatch):
    """Two cores, two slots (the CPU default there): a video alone decodes two keyframe runs at once; while another
    slot job runs, or another call is in flight, or in a burst of calls, it decodes with one thread. The same
    features either way, nothing lent after."""
    monkeypatch.setattr("gpu_mm.concurrency.usable_cores", lambda: 2)
    clip = _clip()
    pre = Qwen2VLPreprocessor("cpu", cache_bytes=0, workers=workers)
    try:
        assert (pre.concurrency.slots, pre.concurrency.spare_threads) == (2, 1)
        alone = await pre.preprocess(videos=[clip])
        assert alone.items[0].decoded.threads == 2
        with pre.spare_threads.job():  # another slot's job running
            busy = await pre.preprocess(videos=[clip])
        assert busy.items[0].decoded.threads == 1
        with pre.spare_threads.call():  # another call in flight (planning, or waiting for a slot)
            assert (await pre.preprocess(videos=[clip])).items[0].decoded.threads == 1
        # Two calls at once (each entered before either's planning ends): each job starts with both in flight.
        burst = await asyncio.gather(*(pre.preprocess(videos=[clip]) for _ in range(2)))
        assert [b.items[0].decoded.threads for b in burst] == [1, 1]
        _same(alone, busy)
        sync = pre(videos=[clip])  # the synchronous API lends alike
        assert sync.items[0].decoded.threads == 2
        assert (pre.spare_threads.lent, pre.spare_threads.jobs, pre.spare_threads.calls) == (0, 0, 0)
    finally:
        await pre.aclose()


def test_a_plan_without_spare_threads_reserves_one_decoder():
    clip = _clip()
    off = Qwen2VLPreprocessor("cpu", cache_bytes=0, decode_threads=0)
    on = Qwen2VLPreprocessor("cpu", cache_bytes=0, decode_threads=7)
    dali = Qwen2VLPreprocessor("cpu", cache_bytes=0, decode_threads=7, video_decoder="dali-cpu") \
        if "dali-cpu" in __import__("gpu_mm.media.video", fromlist=["x"]).available_video_decoders() else None
    try:
        p_off, p_on = off.plan(videos=[clip])[0], on.plan(videos=[clip])[0]
        assert p_off.decoders == 1
        assert p_on.decoders == 4  # SPLIT_MAX_DECODERS, as the clip has ten keyframe runs
        assert p_on.nbytes > p_off.nbytes
        if dali is not None:
            assert dali.plan(videos=[clip])[0].decoders == 1  # only PyAV's decode is split
    finally:
        off.close()
        on.close()
        if dali is not None:
            dali.close()


def _item(data: bytes, indices: list[int], name: str = "video[0]", probe_of: bytes | None = None) -> Item:
    info = probe_video(load_source(probe_of or data, name))
    plan = ItemPlan("video", load_source(data, name), (64, 96), (len(indices), 4, 6), (info.height, info.width),
                    indices=indices, info=info, chunk=4, call=4)
    return Item(plan)


def _collect(item: Item, starts: list[int], frames: int) -> torch.Tensor:
    n = len(item.plan.indices)
    out = torch.zeros((n, item.plan.info.height, item.plan.info.width, 3), dtype=torch.uint8)
    seen = torch.zeros(n, dtype=torch.int32)
    for position, chunk in split_frame_chunks(item, starts, frames):
        out[position : position + chunk.shape[0]] = chunk
        seen[position : position + chunk.shape[0]] += 1
    assert seen.tolist() == [1] * n  # each position exactly once
    return out


def test_chunks_cover_each_position_once_with_repeats_across_runs():
    data = _clip(frames=96)
    # Repeated frames (a short clip's plan repeats its last ones) on both sides of a run boundary.
    indices = [0, 0, 5, 23, 24, 24, 30, 47, 48, 48, 60, 95, 95, 95]
    item = _item(data, indices)
    want = PyAVDecoder().get_frames_at(item.plan.src, item.plan.info, indices)
    assert torch.equal(_collect(item, [0, 4, 8, 12], 2), want)
    assert torch.equal(_collect(item, [0, 6], 4), want)
    assert item.timer.stages["decode"] > 0
    assert _split_threads_alive() == []


def test_a_failing_run_is_the_items_typed_error_and_every_thread_ends():
    data = _clip("vp9", frames=96, bframes=0)  # WebM: its header comes first and survives the cut
    cut = data[: len(data) * 2 // 3]  # the last runs' frames are gone
    item = _item(cut, list(range(0, 96, 4)), name="video[3]", probe_of=data)
    with pytest.raises(DecodeError, match=r"video\[3\].*could not be decoded"):
        _collect(item, [0, 6, 12, 18], 2)
    assert _split_threads_alive() == []


def test_a_consumer_that_stops_early_ends_every_thread():
    data = _clip(frames=96)
    item = _item(data, list(range(0, 96, 2)))
    chunks = split_frame_chunks(item, [0, 12, 24, 36], 2)
    next(chunks)
    chunks.close()
    assert _split_threads_alive() == []


def test_spare_threads_are_lent_without_waiting_and_never_beyond_capacity():
    spare = SpareThreads(3)
    assert (spare.take(2), spare.take(5), spare.take(1)) == (2, 1, 0)
    assert spare.lent == 3
    spare.give(2)
    assert spare.take(4) == 2
    spare.give(3)
    assert spare.lent == 0
    with pytest.raises(ValueError, match="lent"):
        spare.give(1)
    with pytest.raises(ValueError, match="capacity"):
        SpareThreads(-1)
    spare.take(2)
    twin = copy.deepcopy(spare)  # a preprocessor's copy lends threads of its own
    assert (twin.capacity, twin.lent, spare.lent) == (3, 0, 2)


def test_cores_lend_only_what_the_work_in_flight_leaves():
    """The default lending: a lone job borrows every other core; each running job (a slot's), or each call in flight
    if there are more of them (a burst: planned, queued), and each thread lent holds one; lending never waits and
    never exceeds cores - 1."""
    spare = SpareThreads.of_cores(4)
    assert (spare.capacity, spare.cores) == (3, 4)
    with spare.job():
        assert spare.take(5) == 3  # alone: the other three cores
        with spare.job():
            assert spare.take(1) == 0  # every core busy: one job each, three lent
        spare.give(3)
        with spare.job(), spare.job():
            assert spare.take(3) == 1  # three jobs running: one core left
            assert spare.take(1) == 0
            spare.give(1)
    assert (spare.jobs, spare.lent) == (0, 0)
    with spare.call(), spare.call(), spare.call(), spare.job():
        assert spare.take(3) == 1  # three calls in flight, one of them running: one core left
        spare.give(1)
    with spare.call(), spare.job(), spare.job():
        assert spare.take(3) == 2  # a job whose call gave up still runs: two cores busy
        spare.give(2)
    assert (spare.calls, spare.jobs, spare.lent) == (0, 0, 0)
    with spare.job():
        assert SpareThreads(2).take(3) == 2  # a fixed number counts no jobs
        twin = copy.deepcopy(spare)
        assert (twin.capacity, twin.cores, twin.jobs) == (3, 4, 0)
    assert SpareThreads.of_cores(1).capacity == 0
    with pytest.raises(ValueError, match="cores"):
        SpareThreads(1, cores=0)


@pytest.mark.parametrize(("device", "cores"), [("cpu", 1), ("cpu", 2), ("cpu", 16), ("cuda", 16)])
def test_spare_threads_are_at_most_every_core_but_one(device, cores):
    assert choose(device, cores).spare_threads == cores - 1


def test_decode_threads_is_the_callers_or_the_idle_cores():
    pre = Qwen2VLPreprocessor("cpu", cache_bytes=0, num_slots=1, express_slots=0)
    assert pre.concurrency.spare_threads == pre.concurrency.cores - 1
    assert pre.spare_threads.cores == pre.concurrency.cores
    pre.close()
    pre = Qwen2VLPreprocessor("cpu", cache_bytes=0, decode_threads=5)
    assert pre.concurrency.spare_threads == 5 and pre.spare_threads.cores is None
    pre.close()
    with pytest.raises(ValueError, match="decode_threads"):
        Qwen2VLPreprocessor("cpu", decode_threads=-1)


@settings(max_examples=200, deadline=None)
@given(h=st.integers(16, 4320), w=st.integers(16, 7680), scale=st.floats(0.1, 1.0), step=st.sampled_from([1, 2]),
       frames=st.integers(1, 768), decoders=st.integers(2, 4))
def test_the_reserved_decoders_always_fit_their_plan(h, w, scale, step, frames, decoders):
    target = (max(1, int(h * scale)), max(1, int(w * scale)))
    chunk = video_chunk_frames((h, w), target, step, frames)
    threads, per_run = split_decode_fit((h, w), target, chunk, step, decoders, decoders)
    assert threads == decoders
    assert per_run >= step and per_run % step == 0 and per_run <= chunk


def test_split_plan_uses_at_most_the_decoders_reserved():
    clip = _clip()
    pre = Qwen2VLPreprocessor("cpu", cache_bytes=0, decode_threads=7)
    try:
        plan = pre.plan(videos=[clip])[0]
        starts, frames = split_plan(plan, 2, 16)
        assert len(starts) == plan.decoders
        assert split_plan(plan, 2, 1) == ([0], plan.chunk)
    finally:
        pre.close()


@pytest.mark.cuda
async def test_keyframe_runs_at_once_on_a_cuda_preprocessor_give_one_decoders_bits():
    """PyAV on a CUDA node (no DALI): the runs decode on the host, the slot's thread uploads and lays out each chunk
    on its stream, in whatever order they come; the same bits as one decoder, sync and async."""
    clip = _clip()
    one = Qwen2VLPreprocessor("cuda", cache_bytes=0, video_decoder="pyav", decode_threads=0)
    split = Qwen2VLPreprocessor("cuda", cache_bytes=0, video_decoder="pyav", decode_threads=3)
    try:
        want = one(videos=[clip])
        _same(want, split(videos=[clip]))
        got = await split.preprocess(videos=[clip])
        _same(want, got)
        assert got.items[0].decoded.threads > 1
    finally:
        one.close()
        await split.aclose()


def test_runs_into_one_array_are_one_decoders_frames_and_leave_no_thread():
    """PyAVDecoder.get_frames_in_runs (the vLLM loader's decode): the first run on the calling thread, the others on
    threads joined before it returns, repeated frames across runs included; a failing run is the item's error."""
    data = _clip(frames=96)
    src = load_source(data, "video[0]")
    info = probe_video(src)
    indices = [0, 0, 5, 23, 24, 24, 30, 47, 48, 48, 60, 95, 95, 95]
    want = PyAVDecoder().get_frames_at(src, info, indices)
    for starts in ([0], [0, 4], [0, 4, 8, 11]):
        assert torch.equal(PyAVDecoder().get_frames_in_runs(src, info, indices, starts), want)
    # Runs of frame-threaded decoders (a decoder's thread settings go to each run's): the same frames.
    assert torch.equal(PyAVDecoder("FRAME", 2).get_frames_in_runs(src, info, indices, [0, 4, 8, 11]), want)
    for bad in ([], [1], [0, 0], [0, 14]):
        with pytest.raises(ValueError, match="runs must begin"):
            PyAVDecoder().get_frames_in_runs(src, info, indices, bad)
    vp9 = _clip("vp9", frames=96, bframes=0)
    cut = load_source(vp9[: len(vp9) * 2 // 3], "video[2]")
    with pytest.raises(DecodeError, match=r"video\[2\].*could not be decoded"):
        PyAVDecoder().get_frames_in_runs(cut, probe_video(load_source(vp9, "v")), list(range(0, 96, 4)), [0, 8, 16])
    assert [t.name for t in threading.enumerate() if t.name.startswith("gpu-mm-video-run")] == []
