"""One lifecycle for every resource (close / aclose / with / async with), and the one abandon-on-timeout rule."""

from __future__ import annotations

import asyncio
import gc
import time

import pytest

from gpu_mm import AsyncMMDataProcessor, FeaturePool, FeatureReceiver, ProcessorClosed, Qwen2VLPreprocessor, SlotPool
from gpu_mm._aio import await_or_abandon

from media_helpers import make_image


class _Echo:
    async def process_mm_data_async(self, **kw):
        return kw["image_data"]


def _resources():
    return {
        "Qwen2VLPreprocessor": lambda: Qwen2VLPreprocessor("cpu", cache_bytes=0),
        "SlotPool": lambda: SlotPool(1),
        "AsyncMMDataProcessor": lambda: AsyncMMDataProcessor(_Echo()),
        "FeaturePool": lambda: FeaturePool(max_blocks=1),
        "FeatureReceiver": FeatureReceiver,
    }


@pytest.mark.parametrize("name", list(_resources()))
async def test_every_resource_closes_the_same_ways_and_twice_is_harmless(name):
    make = _resources()[name]
    with make() as r:
        pass
    r.close()  # again: nothing happens
    async with make() as r:
        pass
    await r.aclose()
    r = make()
    r.close()
    await r.aclose()


async def test_a_closed_preprocessor_refuses_async_work():
    async with Qwen2VLPreprocessor("cpu", cache_bytes=0) as pre:
        await pre.preprocess(images=[make_image(32, 32, "PNG")])
    with pytest.raises(ProcessorClosed):
        await pre.preprocess(images=[make_image(32, 32, "PNG")])


async def test_abandoned_at_the_deadline_outcome_retrieved_later():
    loop = asyncio.get_running_loop()
    unretrieved = []
    loop.set_exception_handler(lambda _loop, ctx: unretrieved.append(ctx))
    work = loop.create_future()
    abandoned = []
    assert not await await_or_abandon(work, time.monotonic() + 0.01, lambda: abandoned.append(1))
    assert abandoned == [1] and not work.done()  # abandoned, never cancelled
    work.set_exception(RuntimeError("failed after its caller left"))
    del work
    await asyncio.sleep(0)
    gc.collect()
    assert unretrieved == []  # its failure was retrieved, not logged as "never retrieved"


async def test_a_cancelled_caller_abandons_even_work_that_just_finished():
    """The caller is cancelled in the same loop turn its work completes: it will never read the result, so
    the result's owner must be told (e.g. to return an output block the result holds)."""
    loop = asyncio.get_running_loop()
    work = loop.create_future()
    abandoned = []
    waiter = asyncio.ensure_future(await_or_abandon(work, None, lambda: abandoned.append(1)))
    await asyncio.sleep(0)
    work.set_result("block")
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert abandoned == [1]


async def test_work_finished_in_time_is_not_abandoned():
    loop = asyncio.get_running_loop()
    work = loop.create_future()
    loop.call_later(0.01, work.set_result, 7)
    abandoned = []
    assert await await_or_abandon(work, time.monotonic() + 5, lambda: abandoned.append(1))
    assert abandoned == [] and work.result() == 7


def _gpu_mm_threads() -> list[str]:
    import threading

    return [t.name for t in threading.enumerate() if t.name.startswith("gpu-mm") and t.is_alive()]


@pytest.mark.parametrize("idle_workers", [False, True])
async def test_aclose_leaves_no_thread_running(idle_workers):
    """After ``aclose()`` no slot or IO thread is left (nor the guard of idle slot threads): one still unwinding a
    job when the interpreter finalizes (freeing tensors there) aborted processes at exit ("terminate called
    without an active exception")."""
    pre = Qwen2VLPreprocessor(device="cpu", cache_bytes=0, idle_workers=idle_workers)
    await asyncio.gather(*(pre.preprocess(images=[make_image(64 + 28 * i, 96)]) for i in range(4)))
    assert _gpu_mm_threads()
    await pre.aclose()
    assert _gpu_mm_threads() == []


@pytest.mark.slow
def test_exit_waits_for_a_pool_that_was_never_closed():
    """A process that exits while a worker runs a C++ op (a pool never closed) ends cleanly: threading's shutdown
    stops and joins gpu-mm's pools first. Without that the worker is stopped mid-op and the process aborts."""
    import subprocess
    import sys

    code = """if True:
        import threading, torch
        from gpu_mm import _workers
        pool = _workers.WorkerPool(1)
        x = torch.rand(1500, 1500)
        started = threading.Event()
        def job(_):
            started.set()
            for _ in range(5):
                y = x @ x  # releases the GIL inside C++
            return y
        pool.submit(job)
        started.wait()
    """
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]


def test_prestarted_pools_have_their_threads_before_any_job():
    import threading

    from gpu_mm._workers import WorkerPool, prestarted_executor

    pool = WorkerPool(3, name="gpu-mm-prestart-test")
    pool.prestart()
    assert pool.num_threads == 3
    assert [pool.submit(lambda _p, i=i: i * i).result(timeout=10) for i in range(6)] == [0, 1, 4, 9, 16, 25]
    assert pool.num_threads == 3  # the jobs went to the threads already there
    pool.shutdown(wait=True)
    pool.prestart()  # closed: starts nothing
    assert pool.num_threads == 0

    ex = prestarted_executor(4, "gpu-mm-prestart-io")
    try:
        assert len([t for t in threading.enumerate() if t.name.startswith("gpu-mm-prestart-io")]) == 4
    finally:
        ex.shutdown(wait=True)


async def test_a_burst_of_requests_starts_no_thread_on_the_loop(monkeypatch):
    """The first call starts every slot and IO thread; the burst after it starts none (each ``Thread.start``
    waits until the new thread runs: up to 6 ms on the loop, measured, when the machine is busy)."""
    import threading

    pre = Qwen2VLPreprocessor(device="cpu", cache_bytes=0)
    await pre.preprocess(images=[make_image(64, 96)])
    c = pre.concurrency
    assert len([n for n in _gpu_mm_threads() if n.startswith("gpu-mm-slot")]) == c.slots + c.express_slots
    assert len([n for n in _gpu_mm_threads() if n.startswith("gpu-mm-io")]) == c.io_threads
    started: list[str] = []
    start = threading.Thread.start
    monkeypatch.setattr(threading.Thread, "start", lambda self: (started.append(self.name), start(self))[1])
    await asyncio.gather(*(pre.preprocess(images=[make_image(64 + 28 * i, 96)]) for i in range(12)))
    assert started == []
    monkeypatch.undo()
    await pre.aclose()


async def test_closing_releases_the_cache_and_every_slots_decoders():
    """What a preprocessor holds (device memory on a GPU) goes when it closes: the feature cache at once, the
    synchronous API's decoders at once, each slot's decoders as its thread exits."""
    from media_helpers import make_video

    video = make_video(12, 64, 96)
    pre = Qwen2VLPreprocessor("cpu", workers="threads", num_slots=1, video_decoder="pyav")
    pre(videos=[video])  # the calling thread's slot now holds a PyAV decoder
    await pre.preprocess(videos=[make_video(12, 64, 96, seed=1)])  # and a slot thread one
    used = [slot for slot in (*pre._slots._slots, *pre._sync_slots) if slot.state]
    before = pre.statistics().memory
    assert len(used) == 2 and before.cache_bytes == pre.cache.statistics().bytes > 0
    assert before.budget_bytes == pre.memory_budget_bytes + pre.cache.max_bytes and before.working_bytes == 0
    await pre.aclose()
    assert pre.cache.statistics().entries == 0 and pre.statistics().memory.cache_bytes == 0
    assert not any(slot.state for slot in used)
