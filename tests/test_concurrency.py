"""The default concurrency (gpu_mm.concurrency.choose, a pure function of device and cores) and the loop thread's
short time slice (gpu_mm.sched): what is chosen, that the preprocessor runs and reports it, and that gpu-mm's
own threads never keep a slice meant for the loop."""

from __future__ import annotations

import os
import threading

import pytest

from gpu_mm import Qwen2VLPreprocessor, sched
from gpu_mm._workers import WorkerPool
from gpu_mm.concurrency import choose, usable_cores

from media_helpers import make_image


@pytest.mark.parametrize(("cores", "slots"), [(1, 1), (2, 2), (3, 2), (4, 2), (6, 3), (16, 8), (96, 8)])
def test_cpu_slots_by_core_count(cores, slots):
    c = choose("cpu", cores)
    assert (c.slots, c.express_slots, c.cores) == (slots, 1, cores)
    # The reason says whether the figure was measured on this many cores or extrapolated.
    assert ("not measured" in c.reason) == (cores >= 4)


@pytest.mark.parametrize("device", ["cuda", "cuda:1"], ids=["default-gpu", "second-gpu"])
def test_a_gpu_keeps_one_stream_slot_whatever_the_cores(device):  # (a "cuda" in the name would skip it on CPUs)
    assert [choose(device, n).slots for n in (1, 2, 64)] == [1, 1, 1]


def test_cores_are_the_ones_this_process_may_use():
    assert usable_cores() == len(os.sched_getaffinity(0))
    assert choose("cpu").cores == usable_cores()
    with pytest.raises(ValueError, match="cores"):
        choose("cpu", 0)


async def test_the_preprocessor_runs_and_reports_what_was_chosen():
    pre = Qwen2VLPreprocessor(device="cpu", cache_bytes=0)
    try:
        assert pre.concurrency == choose("cpu")
        await pre.preprocess(images=[make_image(56, 56)])
        stats = pre.statistics()
        assert stats.concurrency == pre.concurrency
        assert stats.slots is not None
        assert (stats.slots.num_slots, stats.slots.express_slots) == (pre.concurrency.slots,
                                                                      pre.concurrency.express_slots)
    finally:
        await pre.aclose()
    explicit = Qwen2VLPreprocessor(device="cpu", num_slots=3, express_slots=0)
    assert (explicit.concurrency.slots, explicit.concurrency.express_slots) == (3, 0)
    assert explicit.concurrency.reason == "set by the caller"
    explicit.close()


granted = pytest.mark.skipif(not sched.set_thread_slice(None) or sched.thread_slice() is None,
                             reason="this kernel reports no time slice (Linux 6.12+ does)")


@granted
def test_a_thread_gets_the_slice_it_asks_for_and_the_default_back():
    default = sched.thread_slice()
    try:
        assert sched.set_thread_slice(sched.LOOP_SLICE_S)
        assert sched.thread_slice() == sched.LOOP_SLICE_S
        assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == os.getpriority(os.PRIO_PROCESS, 0)
    finally:
        assert sched.set_thread_slice(None)
    assert sched.thread_slice() == default
    for bad in (0.0, 5e-5, 0.5, -1.0):
        with pytest.raises(ValueError, match="slice"):
            sched.set_thread_slice(bad)


@granted
async def test_gpu_mm_threads_started_from_a_short_slice_loop_drop_it():
    """Linux copies the slice to the threads a thread starts: the slot, worker and IO threads put theirs back,
    else every busy worker would preempt every other and the loop would gain nothing."""
    default = sched.thread_slice()
    assert sched.set_thread_slice()
    try:
        seen: list[float | None] = []
        plain = threading.Thread(target=lambda: seen.append(sched.thread_slice()))
        plain.start()
        plain.join()
        assert seen == [sched.LOOP_SLICE_S]  # what an ordinary thread inherits

        pool = WorkerPool(1)
        assert pool.submit(lambda _: sched.thread_slice()).result(timeout=30) == default
        pool.shutdown(wait=True)

        pre = Qwen2VLPreprocessor(device="cpu", cache_bytes=0)
        await pre.preprocess(images=[make_image(56, 56)])
        tids = [t.native_id for t in threading.enumerate() if t.name.startswith("gpu-mm") and t.native_id]
        assert tids and all(sched.thread_slice(tid) == default for tid in tids)
        await pre.aclose()
    finally:
        sched.set_thread_slice(None)


@granted
async def test_the_servers_parse_thread_drops_the_loop_slice_too():
    pytest.importorskip("aiohttp")
    from aiohttp.test_utils import TestClient, TestServer

    from gpu_mm.serve import build_app

    default = sched.thread_slice()
    assert sched.set_thread_slice()
    client = TestClient(TestServer(build_app(device="cpu", cache_bytes=0)))
    try:
        await client.start_server()
        r = await client.post("/v1/preprocess", data=b'{"images": []}', headers={"Content-Type": "application/json"})
        assert r.status == 200
        tids = [t.native_id for t in threading.enumerate() if t.name.startswith("gpu-mm-parse") and t.native_id]
        assert tids and all(sched.thread_slice(tid) == default for tid in tids)
    finally:
        await client.close()
        sched.set_thread_slice(None)


@granted
def test_serve_asks_for_the_short_slice_on_its_loop_thread():
    from gpu_mm.serve import prioritize_loop

    try:
        assert prioritize_loop()
        assert sched.thread_slice() == sched.LOOP_SLICE_S
    finally:
        sched.set_thread_slice(None)


@pytest.mark.parametrize("idle", [False, True])
async def test_slot_threads_run_on_sched_idle_only_when_asked(idle):
    pre = Qwen2VLPreprocessor(device="cpu", cache_bytes=0, idle_workers=idle)
    try:
        await pre.preprocess(images=[make_image(56, 56)])
        slots = [t.native_id for t in threading.enumerate() if t.name.startswith("gpu-mm-slot") and t.native_id]
        assert slots
        want = os.SCHED_IDLE if idle else os.SCHED_OTHER
        assert all(os.sched_getscheduler(tid) == want for tid in slots)
        assert os.sched_getscheduler(0) == os.SCHED_OTHER  # the caller's thread is left alone
    finally:
        await pre.aclose()
