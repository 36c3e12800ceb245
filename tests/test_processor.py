"""AsyncMMDataProcessor: every behaviour of the seed's test file, plus a regression test per defect
that got the seed reverted (slots freed on timeout, unbounded queue, shared processors, fake async,
cancellation leaks)."""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import logging
import threading
import time

import pytest

import gpu_mm
from gpu_mm import AsyncMMDataProcessor, Overloaded, ProcessingTimeout, ProcessorClosed


class AsyncProc:
    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.calls: list[dict] = []
        self.active = 0
        self.max_active = 0

    async def process_mm_data_async(self, image_data=None, audio_data=None, input_text=None, request_obj=None, **kw):
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        try:
            self.calls.append(dict(image_data=image_data, audio_data=audio_data, input_text=input_text,
                                   request_obj=request_obj, **kw))
            await asyncio.sleep(self.delay)
            if kw.get("fail"):
                raise ValueError("boom (async)")
            return {"path": "async", "text": input_text, "kw": kw}
        finally:
            self.active -= 1


class SyncProc:
    """A sync processor; counts concurrent calls across all copies through a shared tracker."""

    def __init__(self, tracker: dict | None = None, gate: threading.Event | None = None) -> None:
        self.tracker = tracker if tracker is not None else {"active": 0, "max": 0, "lock": threading.Lock(),
                                                           "users": {}}
        self.gate = gate

    def __deepcopy__(self, memo):
        return SyncProc(self.tracker, self.gate)

    def process_mm_data(self, image_data=None, audio_data=None, input_text=None, request_obj=None, **kw):
        t = self.tracker
        with t["lock"]:
            t["active"] += 1
            t["max"] = max(t["max"], t["active"])
            t["users"].setdefault(id(self), set()).add(threading.get_ident())
        try:
            if self.gate is not None:
                assert self.gate.wait(10), "test gate never opened"
            elif kw.get("sleep"):
                time.sleep(kw["sleep"])
            if kw.get("fail"):
                raise ValueError("boom (sync)")
            return {"path": "sync", "text": input_text, "request": request_obj, "kw": kw,
                    "thread": threading.current_thread().name, "instance": id(self)}
        finally:
            with t["lock"]:
                t["active"] -= 1


# ------------------------------------------------------------------ the seed's behaviours


async def test_async_path_awaits_coroutine_processor():
    proc = AsyncProc()
    p = AsyncMMDataProcessor(proc)
    out = await p.process(image_data=["img"], input_text_or_ids="hi", request_obj="req")
    assert out["path"] == "async" and out["text"] == "hi"
    assert proc.calls[0]["image_data"] == ["img"] and proc.calls[0]["request_obj"] == "req"
    assert p.is_async


async def test_sync_fallback_runs_in_worker_thread():
    p = AsyncMMDataProcessor(SyncProc())
    out = await p.process(input_text_or_ids="x")
    assert out["path"] == "sync"
    assert out["thread"] != threading.current_thread().name
    assert not p.is_async


async def test_timeout_async_path_raises_timeout_error():
    p = AsyncMMDataProcessor(AsyncProc(delay=5), timeout_s=0.05)
    with pytest.raises(TimeoutError):
        await p.process()
    assert p.statistics().timed_out == 1


async def test_timeout_sync_path_fires_while_work_still_runs():
    gate = threading.Event()
    p = AsyncMMDataProcessor(SyncProc(gate=gate), timeout_s=0.05)
    with pytest.raises(ProcessingTimeout):
        await p.process()
    # The caller was released although the work is still blocked.
    assert p.statistics().abandoned == 1
    gate.set()
    await p.aclose()


async def test_slot_released_after_timed_out_work_ends():
    gate = threading.Event()
    p = AsyncMMDataProcessor(SyncProc(gate=gate), max_concurrent_calls=1, timeout_s=0.05)
    with pytest.raises(ProcessingTimeout):
        await p.process()
    assert p.statistics().in_flight == 1
    gate.set()
    await p.aclose(wait=True)
    s = p.statistics()
    assert s.in_flight == 0 and s.abandoned == 0 and s.completed == 1


async def test_concurrency_cap_async():
    proc = AsyncProc(delay=0.01)
    p = AsyncMMDataProcessor(proc, max_concurrent_calls=2)
    await asyncio.gather(*(p.process(input_text_or_ids=i) for i in range(10)))
    assert proc.max_active == 2


async def test_concurrency_cap_sync():
    tracker = {"active": 0, "max": 0, "lock": threading.Lock(), "users": {}}
    p = AsyncMMDataProcessor(SyncProc(tracker), max_concurrent_calls=3)
    await asyncio.gather(*(p.process(sleep=0.01) for _ in range(12)))
    assert tracker["max"] <= 3
    assert p.statistics().worker_threads <= 3


async def test_error_propagation_async():
    p = AsyncMMDataProcessor(AsyncProc())
    with pytest.raises(ValueError, match="boom"):
        await p.process(fail=True)
    s = p.statistics()
    assert s.failed == 1 and s.in_flight == 0


async def test_error_propagation_sync():
    p = AsyncMMDataProcessor(SyncProc())
    with pytest.raises(ValueError, match="boom"):
        await p.process(fail=True)
    assert p.statistics().failed == 1


def test_processor_without_methods_is_rejected():
    with pytest.raises(TypeError, match="process_mm_data"):
        AsyncMMDataProcessor(object())


async def test_non_coroutine_async_attribute_falls_back_to_sync():
    class P(SyncProc):
        process_mm_data_async = "not callable"

    p = AsyncMMDataProcessor(P())
    assert not p.is_async
    assert (await p.process())["path"] == "sync"


async def test_sync_method_named_async_returning_awaitable_runs_on_worker_loop():
    class P:
        def process_mm_data_async(self, **kw):
            async def inner():
                await asyncio.sleep(0)
                return threading.current_thread().name

            return inner()

    p = AsyncMMDataProcessor(P())
    assert (await p.process()) != threading.current_thread().name


@pytest.mark.parametrize("make", [AsyncProc, SyncProc], ids=["async", "sync"])
async def test_kwargs_and_request_pass_through(make):
    proc = make()
    p = AsyncMMDataProcessor(proc)
    out = await p.process(image_data=[1], audio_data=[2], input_text_or_ids=[3, 4], request_obj={"r": 1},
                          extra="e", other=5)
    assert out["kw"] == {"extra": "e", "other": 5}
    assert out["text"] == [3, 4]
    if make is SyncProc:
        assert out["request"] == {"r": 1}
    else:
        assert proc.calls[0]["audio_data"] == [2] and proc.calls[0]["request_obj"] == {"r": 1}


async def test_shutdown_refuses_new_calls_and_stops_workers():
    p = AsyncMMDataProcessor(SyncProc())
    await p.process()
    p.shutdown(wait=True)
    assert p.statistics().worker_threads == 0
    with pytest.raises(ProcessorClosed):
        await p.process()


def test_del_shuts_down_worker_threads():
    async def use():
        p = AsyncMMDataProcessor(SyncProc())
        await p.process()
        return [t for t in threading.enumerate() if t.name.startswith("gpu-mm-mm-processor")]

    threads = asyncio.run(use())
    assert threads
    gc.collect()
    for t in threads:
        t.join(5)
        assert not t.is_alive()


async def test_mixed_concurrent_requests():
    pa = AsyncMMDataProcessor(AsyncProc(delay=0.001), max_concurrent_calls=4)
    ps = AsyncMMDataProcessor(SyncProc(), max_concurrent_calls=4)
    outs = await asyncio.gather(*(p.process(input_text_or_ids=i) for i in range(20) for p in (pa, ps)))
    assert sorted(o["path"] for o in outs) == ["async"] * 20 + ["sync"] * 20


async def test_results_keep_their_order():
    p = AsyncMMDataProcessor(SyncProc(), max_concurrent_calls=3)
    outs = await asyncio.gather(*(p.process(input_text_or_ids=i, sleep=0.001 * (10 - i)) for i in range(10)))
    assert [o["text"] for o in outs] == list(range(10))


# ------------------------------------------------------------------ regressions for the seed's defects


async def test_abandoned_work_keeps_its_slot_so_the_cap_holds():
    """Defect 2: the seed freed the slot on timeout, so timed-out work plus new work exceeded the cap."""
    tracker = {"active": 0, "max": 0, "lock": threading.Lock(), "users": {}}
    gate = threading.Event()
    p = AsyncMMDataProcessor(SyncProc(tracker, gate), max_concurrent_calls=2, timeout_s=0.05)
    results = await asyncio.gather(*(p.process() for _ in range(6)), return_exceptions=True)
    assert all(isinstance(r, ProcessingTimeout) for r in results)
    s = p.statistics()
    assert s.in_flight == 2 and s.abandoned == 2  # the other four never started
    assert tracker["max"] == 2
    gate.set()
    await p.aclose()
    assert tracker["max"] == 2 and p.statistics().in_flight == 0


async def test_queue_is_bounded_and_rejects_at_once():
    gate = threading.Event()
    p = AsyncMMDataProcessor(SyncProc(gate=gate), max_concurrent_calls=1, max_queued=1)
    running = asyncio.ensure_future(p.process())
    queued = asyncio.ensure_future(p.process())
    await asyncio.sleep(0.01)
    assert p.statistics().queued == 1
    with pytest.raises(Overloaded):
        await p.process()
    assert p.statistics().rejected == 1
    gate.set()
    await asyncio.gather(running, queued)


async def test_deadline_covers_time_spent_queued():
    gate = threading.Event()
    p = AsyncMMDataProcessor(SyncProc(gate=gate), max_concurrent_calls=1, timeout_s=0.05)
    first = asyncio.ensure_future(p.process())
    await asyncio.sleep(0.01)
    with pytest.raises(ProcessingTimeout, match="did not start"):
        await p.process()
    gate.set()
    with pytest.raises(ProcessingTimeout):  # the first one's own deadline passed while gate was closed
        await first
    await p.aclose()


@pytest.mark.parametrize("with_factory", [False, True])
async def test_each_worker_owns_a_private_processor(with_factory):
    """Defect 3: HF processors are not thread-safe; no instance may be used by two threads."""
    tracker = {"active": 0, "max": 0, "lock": threading.Lock(), "users": {}}
    proto = SyncProc(tracker)
    factory = (lambda: SyncProc(tracker)) if with_factory else None
    p = AsyncMMDataProcessor(proto, max_concurrent_calls=4, max_queued=100, processor_factory=factory)
    outs = await asyncio.gather(*(p.process(sleep=0.002) for _ in range(40)))
    assert id(proto) not in {o["instance"] for o in outs}
    assert all(len(threads) == 1 for threads in tracker["users"].values())
    assert len(tracker["users"]) > 1


async def test_thread_safe_processor_is_shared_not_copied():
    class Safe(SyncProc):
        thread_safe = True

    proto = Safe()
    p = AsyncMMDataProcessor(proto, max_concurrent_calls=2)
    out = await p.process()
    assert out["instance"] == id(proto)


class FakeAsync:
    """Blocks inside async def (the seed's "fake async" processors)."""

    def __init__(self, gate: threading.Event) -> None:
        self.gate = gate

    def __deepcopy__(self, memo):
        return FakeAsync(self.gate)

    async def process_mm_data_async(self, **kw):
        assert self.gate.wait(10), "test gate never opened"
        return threading.current_thread().name


async def test_fake_async_in_thread_mode_leaves_the_loop_free():
    """Defect 1: a blocking async def froze the loop. Here the loop itself opens the gate: if the
    processor blocked the loop, this test would deadlock until its timeout."""
    gate = threading.Event()
    p = AsyncMMDataProcessor(FakeAsync(gate), async_mode="thread")
    call = asyncio.ensure_future(p.process())
    await asyncio.sleep(0.01)
    assert not call.done()
    gate.set()
    assert (await call) != threading.current_thread().name


async def test_fake_async_in_thread_mode_times_out_on_time():
    gate = threading.Event()
    p = AsyncMMDataProcessor(FakeAsync(gate), async_mode="thread", timeout_s=0.05)
    with pytest.raises(ProcessingTimeout):
        await p.process()
    assert p.statistics().abandoned == 1
    gate.set()
    await p.aclose()
    assert p.statistics().abandoned == 0


async def test_inline_loop_hold_is_measured_and_warned(caplog):
    class Blocking:
        async def process_mm_data_async(self, **kw):
            time.sleep(0.06)
            await asyncio.sleep(0)
            return "ok"

    p = AsyncMMDataProcessor(Blocking(), loop_hold_warn_s=0.05)
    with caplog.at_level(logging.WARNING, logger="gpu_mm.processor"):
        assert await p.process() == "ok"
    s = p.statistics()
    assert s.loop_hold_max_s >= 0.06
    assert s.loop_hold_total_s >= s.loop_hold_max_s
    assert "async_mode='thread'" in caplog.text


async def test_cancel_while_queued_leaks_nothing():
    gate = threading.Event()
    p = AsyncMMDataProcessor(SyncProc(gate=gate), max_concurrent_calls=1)
    running = asyncio.ensure_future(p.process())
    queued = asyncio.ensure_future(p.process())
    await asyncio.sleep(0.01)
    queued.cancel()
    with pytest.raises(asyncio.CancelledError):
        await queued
    s = p.statistics()
    assert s.queued == 0 and s.in_flight == 1 and s.cancelled == 1
    gate.set()
    await running
    await p.aclose()
    assert p.statistics().in_flight == 0


async def test_cancel_while_running_keeps_slot_until_work_ends():
    gate = threading.Event()
    p = AsyncMMDataProcessor(SyncProc(gate=gate), max_concurrent_calls=1)
    call = asyncio.ensure_future(p.process())
    await asyncio.sleep(0.01)
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    s = p.statistics()
    assert s.in_flight == 1 and s.abandoned == 1
    gate.set()
    await p.aclose()
    s = p.statistics()
    assert s.in_flight == 0 and s.abandoned == 0


async def test_cancel_inline_async_job_cancels_the_coroutine():
    proc = AsyncProc(delay=10)
    p = AsyncMMDataProcessor(proc, timeout_s=0.02)
    with pytest.raises(ProcessingTimeout):
        await p.process()
    await p.aclose()
    assert proc.active == 0 and p.statistics().in_flight == 0


async def test_many_cancellations_and_timeouts_leak_no_slot():
    proc = AsyncProc(delay=0.002)
    p = AsyncMMDataProcessor(proc, max_concurrent_calls=3, max_queued=1000, timeout_s=0.004)
    tasks = [asyncio.ensure_future(p.process()) for _ in range(200)]
    for t in tasks[::3]:
        t.cancel()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    await p.aclose()
    s = p.statistics()
    assert s.in_flight == 0 and s.queued == 0 and s.abandoned == 0
    assert proc.max_active <= 3
    ok = sum(isinstance(r, dict) for r in results)
    timed_out = sum(isinstance(r, ProcessingTimeout) for r in results)
    cancelled = sum(isinstance(r, asyncio.CancelledError) for r in results)
    assert ok + timed_out + cancelled == 200
    assert (s.completed, s.timed_out) == (ok, timed_out)


async def test_shutdown_fails_queued_calls_and_aclose_waits_for_running():
    gate = threading.Event()
    p = AsyncMMDataProcessor(SyncProc(gate=gate), max_concurrent_calls=1)
    running = asyncio.ensure_future(p.process())
    queued = asyncio.ensure_future(p.process())
    await asyncio.sleep(0.01)
    closing = asyncio.ensure_future(p.aclose(wait=True))
    with pytest.raises(ProcessorClosed):
        await queued
    await asyncio.sleep(0.01)
    assert not closing.done()  # still waiting for the running job
    gate.set()
    await closing
    assert (await running)["path"] == "sync"


async def test_async_context_manager_closes():
    async with AsyncMMDataProcessor(AsyncProc()) as p:
        await p.process()
    with pytest.raises(ProcessorClosed):
        await p.process()


def test_statistics_is_a_frozen_snapshot():
    s = AsyncMMDataProcessor(AsyncProc()).statistics()
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.in_flight = 3  # type: ignore[misc]
    assert isinstance(s, gpu_mm.ProcessorStatistics)


@pytest.mark.parametrize(
    "kwargs",
    [{"max_concurrent_calls": 0}, {"timeout_s": 0}, {"max_queued": -1}, {"async_mode": "magic"}],
)
def test_bad_arguments_say_what_to_fix(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        AsyncMMDataProcessor(AsyncProc(), **kwargs)


async def test_bad_call_signature_fails_without_leaking_a_slot():
    class Strict:
        async def process_mm_data_async(self, image_data=None, audio_data=None, input_text=None, request_obj=None):
            return "ok"

    p = AsyncMMDataProcessor(Strict(), max_concurrent_calls=1)
    with pytest.raises(TypeError):
        await p.process(unexpected=1)
    s = p.statistics()
    assert s.in_flight == 0 and s.failed == 1
    assert await p.process() == "ok"


class _HoldsALock:
    def __init__(self) -> None:
        self.lock = threading.Lock()

    def process_mm_data(self, image_data=None, audio_data=None, input_text=None, request_obj=None, **kw):
        return input_text


def test_processor_that_cannot_be_copied_is_refused_at_construction():
    with pytest.raises(TypeError, match="cannot be deep-copied.*processor_factory="):
        AsyncMMDataProcessor(_HoldsALock())


async def test_processor_that_cannot_be_copied_works_with_a_factory_or_thread_safe():
    async with AsyncMMDataProcessor(_HoldsALock(), processor_factory=_HoldsALock) as proc:
        assert await proc.process(input_text_or_ids="a") == "a"

    class Shared(_HoldsALock):
        thread_safe = True

    async with AsyncMMDataProcessor(Shared()) as proc:
        assert await proc.process(input_text_or_ids="b") == "b"
