"""The default concurrency (gpu_mm.concurrency.choose, a pure function of device and cores) and the loop thread's
short time slice (gpu_mm.sched): what is chosen, that the preprocessor runs and reports it, and that gpu-mm's
own threads never keep a slice meant for the loop."""

from __future__ import annotations

import asyncio
import os
import threading
import time

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
    client = TestClient(TestServer(build_app(device="cpu", cache_bytes=0, workers="threads", idle_workers=False)))
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
    earlier = {t.native_id for t in threading.enumerate()}  # slot threads of other tests' preprocessors may linger
    pre = Qwen2VLPreprocessor(device="cpu", cache_bytes=0, idle_workers=idle)
    try:
        await pre.preprocess(images=[make_image(56, 56)])
        slots = [t.native_id for t in threading.enumerate()
                 if t.name.startswith("gpu-mm-slot") and t.native_id and t.native_id not in earlier]
        assert slots
        # Only where a thread may leave SCHED_IDLE again (root here): elsewhere the guard could not rescue it.
        want = os.SCHED_IDLE if idle and sched._idle_is_reversible() else os.SCHED_OTHER
        # Each slot thread sets its policy as its first step, which on a loaded machine can come after the first
        # call has returned (Thread.start waits only for the thread to exist): give them up to 10 s to get there.
        give_up = time.monotonic() + 10
        while not all(os.sched_getscheduler(tid) == want for tid in slots) and time.monotonic() < give_up:
            await asyncio.sleep(0.01)
        assert all(os.sched_getscheduler(tid) == want for tid in slots)
        assert os.sched_getscheduler(0) == os.SCHED_OTHER  # the caller's thread is left alone
        if want == os.SCHED_IDLE:
            guard = sched.StarvationGuard.shared()
            assert guard is not None and set(slots) <= set(guard.watching())
    finally:
        await pre.aclose()


def test_the_starvation_guard_promotes_a_starved_idle_thread_and_demotes_it_later():
    """Decisions on fake counters (run ns, wait ns): a window spent waiting without running puts the thread on the
    normal policy for hold_s, then back on SCHED_IDLE; waiting while still running some (gpu-mm's own load) changes
    nothing; a thread that has exited is dropped."""
    stats = {7: (0, 0), 8: (0, 0)}
    changes: list[tuple[int, int]] = []
    guard = sched.StarvationGuard(window_s=0.1, starved_fraction=0.5, min_run_fraction=0.05, windows=2, hold_s=2.0,
                                  read=stats.get, set_policy=lambda tid, policy: changes.append((tid, policy)),
                                  start=False)
    guard.watch(7)
    guard.watch(8)

    def advance(tid: int, ran_ms: float, waited_ms: float) -> None:
        run, wait = stats[tid]
        stats[tid] = (run + int(ran_ms * 1e6), wait + int(waited_ms * 1e6))

    advance(7, 30, 70)  # waited most of the window but ran 30 ms: busy, not starved
    advance(8, 0, 20)  # hardly runnable: asleep, not starved
    guard.check(now=0.1)
    assert changes == [] and guard.promotions == 0
    advance(7, 1, 99)  # starved for one window: could be a burst of gpu-mm's own
    guard.check(now=0.2)
    assert changes == []
    advance(7, 30, 60)  # ran again: the count starts over
    guard.check(now=0.3)
    advance(7, 1, 99)
    guard.check(now=0.4)
    assert changes == []
    advance(7, 0, 100)  # a second starved window in a row
    guard.check(now=0.5)
    assert changes == [(7, os.SCHED_OTHER)] and guard.promotions == 1
    advance(7, 0, 100)  # still waiting while held on the normal policy: nothing more to do
    guard.check(now=1.0)
    assert changes == [(7, os.SCHED_OTHER)]
    del stats[8]  # thread 8 has exited
    guard.check(now=2.6)
    assert changes == [(7, os.SCHED_OTHER), (7, os.SCHED_IDLE)] and guard.watching() == [7]
    for now in (2.7, 2.8):  # starved again soon after going back: held twice as long
        advance(7, 0, 90)
        guard.check(now=now)
    assert changes[-1] == (7, os.SCHED_OTHER) and guard.promotions == 2
    guard.check(now=6.7)
    assert changes[-1] == (7, os.SCHED_OTHER)  # 4 s this time, not 2
    guard.check(now=6.9)
    assert changes[-1] == (7, os.SCHED_IDLE)
    for now in (7.0, 7.1):  # and again: 8 s
        advance(7, 0, 90)
        guard.check(now=now)
    guard.check(now=15.0)
    assert changes[-1] == (7, os.SCHED_OTHER)
    guard.check(now=15.2)
    assert changes[-1] == (7, os.SCHED_IDLE)
    guard.check(now=44.9)  # a look after a long quiet stretch (0 ms waited in 29.7 s): not starved
    for now in (45.0, 45.1):  # starved again long after going back: 2 s again
        advance(7, 0, 90)
        guard.check(now=now)
    guard.check(now=47.0)
    assert changes[-1] == (7, os.SCHED_OTHER)
    guard.check(now=47.2)
    assert changes[-1] == (7, os.SCHED_IDLE) and guard.promotions == 4


def test_a_late_look_counts_as_every_window_it_spans():
    """The guard's own thread can be late (it waits for a core, or for the interpreter lock that the starved thread
    holds: 1.3 s between looks was seen behind two spinning processes). A late look at a thread that was starved
    throughout counts as all the windows it spans, so a ten-window guard promotes it at that look, not nine looks
    later; judged against the look's span, a late look at a thread that ran is not starved."""
    stats = {7: (0, 0), 8: (0, 0)}
    changes: list[tuple[int, int]] = []
    guard = sched.StarvationGuard(window_s=0.1, windows=10, read=stats.get,
                                  set_policy=lambda tid, policy: changes.append((tid, policy)), start=False)
    guard.watch(7)
    guard.watch(8)
    guard.check(now=0.1)
    stats[7] = (int(4e6), int(1296e6))  # 4 ms run, 1.296 s waited, in 1.3 s
    stats[8] = (int(200e6), int(1000e6))  # waited most of it too, but ran 200 ms: not starved
    guard.check(now=1.4)
    assert changes == [(7, os.SCHED_OTHER)] and guard.promotions == 1
    stats[8] = (int(205e6), int(1100e6))  # then starved for one on-time window: one of ten
    guard.check(now=1.5)
    assert changes == [(7, os.SCHED_OTHER)]


@pytest.mark.skipif(not sched._idle_is_reversible(), reason="a thread cannot leave SCHED_IDLE here (not root, "
                    "RLIMIT_NICE), so gpu-mm does not put its threads on it")
def test_an_idle_slot_thread_behind_busy_processes_is_not_starved():
    """Every core kept busy by other processes: an idle thread with the guard finishes its work while they still
    run (without the guard it would get no CPU until they stop; the join's timeout only bounds a failure)."""
    import subprocess
    import sys

    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(usable_cores())]
    try:
        # Only once every hog spins (each has run 0.2 s): a work thread started while they were still starting up
        # could finish before it was ever starved.
        t_end = time.monotonic() + 30
        while not all((sched._schedstat(h.pid, h.pid) or (0, 0))[0] > 2e8 for h in hogs):
            assert time.monotonic() < t_end, "the spinning processes did not start"
            time.sleep(0.02)
        done: list[int] = []

        def work() -> None:
            assert sched.set_idle_policy()
            guard = sched.StarvationGuard.shared()
            assert guard is not None
            try:
                x = 0
                for i in range(2_000_000):
                    x += i
                done.append(guard.promotions)
            finally:
                sched.leave_idle_policy()

        t = threading.Thread(target=work)
        t.start()
        t.join(30)
        assert len(done) == 1 and done[0] >= 1 and all(h.poll() is None for h in hogs)
        assert sched.StarvationGuard.shared() is None  # ended with the last thread it watched
    finally:
        for h in hogs:
            h.kill()
            h.wait()
