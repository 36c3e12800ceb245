"""SlotPool: slot threads, completion by polled events (fake events the test controls), quarantine of
timed-out work, the memory budget, and the admission gate's cancellation safety."""

from __future__ import annotations

import asyncio
import threading

import pytest

from gpu_mm import LimitExceeded, Overloaded, ProcessingTimeout, ProcessorClosed, SlotPool
from gpu_mm._gate import Gate


class FakeEvent:
    """A completion whose ``query()`` the test controls."""

    def __init__(self) -> None:
        self.fired = threading.Event()
        self.error: BaseException | None = None
        self.queries = 0

    def query(self) -> bool:
        self.queries += 1
        if self.error is not None:
            raise self.error
        return self.fired.is_set()


class EventBox:
    """Hands out one FakeEvent per recorded completion, in order."""

    def __init__(self) -> None:
        self.events: list[FakeEvent] = []
        self.recorded = threading.Semaphore(0)
        self.taken = 0

    def __call__(self, slot) -> FakeEvent:
        ev = FakeEvent()
        self.events.append(ev)
        self.recorded.release()
        return ev

    async def next_recorded(self) -> FakeEvent:
        """Wait for the next event not yet handed to the test, in recording order."""
        await asyncio.to_thread(self.recorded.acquire)
        self.taken += 1
        return self.events[self.taken - 1]


def work(slot, value):
    return (slot.index, threading.current_thread().name, value)


async def test_cpu_slot_runs_on_its_own_thread_and_returns():
    pool = SlotPool(2)
    idx, thread, value = await pool.run(work, 7)
    assert value == 7 and thread.startswith("gpu-mm-slot-") and thread != threading.current_thread().name
    s = pool.statistics()
    assert s.completed == 1 and s.busy == 0
    await pool.aclose()


async def test_each_slot_keeps_its_thread():
    pool = SlotPool(2)
    seen: dict[int, set[str]] = {}
    for out in await asyncio.gather(*(pool.run(work, i) for i in range(30))):
        seen.setdefault(out[0], set()).add(out[1])
    assert all(len(names) == 1 for names in seen.values())
    await pool.aclose()


async def test_completion_waits_for_the_event_not_the_thread():
    box = EventBox()
    pool = SlotPool(1, event_factory=box)
    call = asyncio.ensure_future(pool.run(work, "x"))
    ev = await box.next_recorded()
    await asyncio.sleep(0.01)
    assert not call.done() and ev.queries > 0  # the thread returned; the event has not fired
    ev.fired.set()
    assert (await call)[2] == "x"
    assert pool.statistics().busy == 0
    await pool.aclose()


async def test_deadline_fires_at_poll_and_slot_stays_quarantined_until_event_fires():
    box = EventBox()
    pool = SlotPool(1, event_factory=box)
    with pytest.raises(ProcessingTimeout, match="quarantined"):
        await pool.run(work, 1, deadline=_in(0.05))
    s = pool.statistics()
    assert s.busy == 1 and s.quarantined == 1 and s.timed_out == 1
    # The only slot is quarantined: the next call cannot run and times out while queued.
    with pytest.raises(ProcessingTimeout):
        await pool.run(work, 2, deadline=_in(0.05))
    assert len(box.events) == 1
    (await box.next_recorded()).fired.set()
    # Once the abandoned work's event fires, the slot returns and new work runs.
    call = asyncio.ensure_future(pool.run(work, 3, deadline=_in(5)))
    (await box.next_recorded()).fired.set()
    assert (await call)[2] == 3
    s = pool.statistics()
    assert s.busy == 0 and s.quarantined == 0
    await pool.aclose()


def _in(seconds: float) -> float:
    import time

    return time.monotonic() + seconds


class AutoFire(EventBox):
    """Events that fire once ``after`` queries have been made (late completion)."""

    def __init__(self, after: int) -> None:
        super().__init__()
        self.after = after

    def __call__(self, slot):
        ev = super().__call__(slot)
        after = self.after
        orig = ev.query

        def query() -> bool:
            return orig() or ev.queries > after

        ev.query = query  # type: ignore[method-assign]
        return ev


async def test_late_events_complete_and_other_work_keeps_flowing():
    pool = SlotPool(2, event_factory=AutoFire(after=50))
    outs = await asyncio.gather(*(pool.run(work, i) for i in range(10)))
    assert [o[2] for o in outs] == list(range(10))
    assert pool.statistics().completed == 10
    await pool.aclose()


async def test_a_never_completing_item_does_not_block_the_other_slot():
    box = EventBox()
    first = True

    def factory(slot):
        nonlocal first
        ev = box(slot)
        if not first:
            ev.fired.set()
        first = False
        return ev

    pool = SlotPool(2, event_factory=factory)
    with pytest.raises(ProcessingTimeout):
        await pool.run(work, "stuck", deadline=_in(0.05))
    outs = await asyncio.gather(*(pool.run(work, i, deadline=_in(5)) for i in range(5)))
    assert [o[2] for o in outs] == list(range(5))
    assert {o[0] for o in outs} == {1}  # slot 0 is quarantined; everything flowed through slot 1
    assert pool.statistics().quarantined == 1
    box.events[0].fired.set()
    await pool.aclose(timeout_s=5)
    assert pool.statistics().busy == 0


async def test_event_query_error_reaches_the_caller_and_frees_the_slot():
    box = EventBox()
    pool = SlotPool(1, event_factory=box)
    call = asyncio.ensure_future(pool.run(work, 1))
    ev = await box.next_recorded()
    ev.error = RuntimeError("CUDA error: an illegal memory access was encountered")
    with pytest.raises(RuntimeError, match="illegal memory access"):
        await call
    s = pool.statistics()
    assert s.busy == 0 and s.failed == 1
    await pool.aclose()


async def test_work_error_propagates_and_frees_the_slot():
    def bad(slot):
        raise ValueError("bad item")

    pool = SlotPool(1)
    with pytest.raises(ValueError, match="bad item"):
        await pool.run(bad)
    assert (await pool.run(work, 2))[2] == 2
    assert pool.statistics().failed == 1
    await pool.aclose()


async def test_memory_budget_holds_admission():
    gate = threading.Event()

    def held(slot, nbytes):
        assert gate.wait(10)
        return nbytes

    pool = SlotPool(4, memory_budget_bytes=100)
    a = asyncio.ensure_future(pool.run(held, 60, nbytes=60))
    b = asyncio.ensure_future(pool.run(held, 60, nbytes=60))
    await asyncio.sleep(0.02)
    s = pool.statistics()
    assert s.busy == 1 and s.queued == 1 and s.bytes_in_flight == 60  # b waits for bytes, not slots
    gate.set()
    assert await asyncio.gather(a, b) == [60, 60]
    with pytest.raises(LimitExceeded, match="budget"):
        await pool.run(held, 1, nbytes=101)
    assert pool.statistics().bytes_in_flight == 0
    await pool.aclose()


async def test_bounded_queue_rejects_and_close_fails_queued():
    gate = threading.Event()

    def held(slot):
        assert gate.wait(10)

    pool = SlotPool(1, max_queued=1)
    a = asyncio.ensure_future(pool.run(held))
    await asyncio.sleep(0.01)
    b = asyncio.ensure_future(pool.run(held))
    await asyncio.sleep(0.01)
    with pytest.raises(Overloaded):
        await pool.run(held)
    closing = asyncio.ensure_future(pool.aclose(timeout_s=5))
    with pytest.raises(ProcessorClosed):
        await b
    gate.set()
    await a
    await closing


async def test_cancelled_caller_leaves_slot_quarantined_until_done():
    gate = threading.Event()

    def held(slot):
        assert gate.wait(10)
        return 1

    pool = SlotPool(1)
    call = asyncio.ensure_future(pool.run(held))
    await asyncio.sleep(0.01)
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    assert pool.statistics().quarantined == 1
    gate.set()
    await pool.aclose(timeout_s=5)
    assert pool.statistics().busy == 0


def test_cuda_slot_pool_without_cuda_says_so():
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    from gpu_mm import BackendUnavailable

    with pytest.raises(BackendUnavailable, match="CUDA"):
        SlotPool(1, device="cuda")


@pytest.mark.cuda
async def test_cuda_slots_record_real_events_on_their_own_streams():
    import torch

    _, greatest = torch.cuda.Stream.priority_range()
    pool = SlotPool(2, device="cuda", stream_priority=greatest)

    def gpu_work(slot, n):
        assert torch.cuda.current_stream() == slot.stream
        x = torch.randn(n, n, device="cuda")
        return (x @ x).sum()

    outs = await asyncio.gather(*(pool.run(gpu_work, 512) for _ in range(8)))
    assert all(torch.isfinite(o).item() for o in outs)
    assert pool._slots[0].stream.priority == greatest != torch.cuda.current_stream().priority
    await pool.aclose()


def test_stream_priority_must_be_an_int():
    with pytest.raises(TypeError, match="stream_priority"):
        SlotPool(1, stream_priority="low")


@pytest.mark.cuda
async def test_cuda_stalled_item_times_out_while_others_flow():
    import torch

    pool = SlotPool(2, device="cuda")

    def long_kernel(slot):
        torch.cuda._sleep(int(2e9))  # ~1 s of GPU spinning on this slot's stream

    def quick(slot, i):
        return torch.full((4,), i, device="cuda")

    with pytest.raises(ProcessingTimeout):
        await pool.run(long_kernel, deadline=_in(0.05))
    outs = await asyncio.gather(*(pool.run(quick, i, deadline=_in(5)) for i in range(6)))
    assert [int(o[0]) for o in outs] == list(range(6))
    await pool.aclose(timeout_s=10)
    assert pool.statistics().busy == 0


async def test_gate_grant_and_cancel_in_the_same_instant_hands_the_unit_on():
    gate = Gate(1, max_queued=None)
    first = gate.try_acquire()
    assert first is not None
    waiter = asyncio.ensure_future(gate.acquire())
    other = asyncio.ensure_future(gate.acquire())
    await asyncio.sleep(0)
    first.release()  # grants `waiter` ...
    waiter.cancel()  # ... which is cancelled before it could run
    with pytest.raises(asyncio.CancelledError):
        await waiter
    permit = await other  # the unit was handed on
    assert gate.in_use == 1
    permit.release()
    assert gate.in_use == 0 and gate.queued == 0


async def test_a_permit_releases_exactly_once():
    gate = Gate(2, max_queued=None, byte_budget=100)
    a = await gate.acquire(nbytes=60)
    b = await gate.acquire(nbytes=30)
    assert gate.in_use == 2 and gate.bytes_in_use == 90
    assert a.release() and not a.release() and a.released  # a second release returns nothing twice
    assert gate.in_use == 1 and gate.bytes_in_use == 30
    assert b.release()
    assert gate.in_use == 0 and gate.bytes_in_use == 0 and gate.try_acquire(100) is not None


async def test_gate_is_fifo_for_large_requests():
    gate = Gate(4, max_queued=None, byte_budget=100)
    first = await gate.acquire(nbytes=50)
    big = asyncio.ensure_future(gate.acquire(nbytes=100))
    await asyncio.sleep(0)
    small = asyncio.ensure_future(gate.acquire(nbytes=10))
    await asyncio.sleep(0)
    assert not big.done() and not small.done()  # small does not overtake big
    first.release()
    (await big).release()
    await small


async def test_work_admitted_as_the_pool_closes_fails_cleanly():
    pool = SlotPool(1)
    await pool.run(work, 0)
    for worker in pool._threads:  # the pool's threads stop between admission and submission
        worker.shutdown(wait=True)
    with pytest.raises(ProcessorClosed):
        await pool.run(work, 1)
    await asyncio.sleep(0)  # one loop turn: the slot comes back in the future's done-callback
    assert pool.statistics().busy == 0
    await pool.aclose()


def test_dropped_pool_lets_its_threads_exit():
    import gc

    async def use():
        pool = SlotPool(2)
        await asyncio.gather(pool.run(work, 1), pool.run(work, 2))
        return [t for t in threading.enumerate() if t.name.startswith("gpu-mm-slot-")]

    threads = asyncio.run(use())
    assert threads
    gc.collect()
    for t in threads:
        t.join(5)
        assert not t.is_alive()


async def test_on_release_fires_once_when_work_really_ends_or_never_starts():
    box = EventBox()
    pool = SlotPool(1, event_factory=box, max_queued=0)
    released: list[str] = []
    first = asyncio.ensure_future(pool.run(work, 1, deadline=_in(0.05), on_release=lambda: released.append("a")))
    ev = await box.next_recorded()
    with pytest.raises(ProcessingTimeout):
        await first
    assert released == []  # the caller left, the work has not ended
    with pytest.raises(Overloaded):  # never starts: settled at once
        await pool.run(work, 2, on_release=lambda: released.append("b"))
    assert released == ["b"]
    ev.fired.set()
    await pool.aclose(timeout_s=5)  # waits for the abandoned work's event
    assert released == ["b", "a"]


def test_pool_serves_one_event_loop_after_another():
    """Scripts call ``asyncio.run`` once per batch with one long-lived pool (as the GPU benchmark does):
    each loop gets its own event poller and every call completes."""

    def fired(slot):
        ev = FakeEvent()
        ev.fired.set()
        return ev

    pool = SlotPool(1, event_factory=fired)
    for value in range(3):
        _, _, got = asyncio.run(pool.run(work, value))
        assert got == value
    s = pool.statistics()
    assert s.completed == 3 and s.busy == 0 and s.pending_events == 0


async def test_express_unit_serves_small_requests_past_queued_large_ones():
    gate = Gate(2, max_queued=None, express=1, express_max_bytes=10)
    first_large = await gate.acquire(nbytes=100)  # the one large unit
    large = asyncio.ensure_future(gate.acquire(nbytes=100))
    await asyncio.sleep(0)
    assert not large.done()  # a large request never takes the express unit
    small = await asyncio.wait_for(gate.acquire(nbytes=5), 1)  # passes the large one that waits for its lane
    assert gate.in_use == 2 and gate.large_in_use == 1
    third = asyncio.ensure_future(gate.acquire(nbytes=5))
    await asyncio.sleep(0)
    first_large.release()  # the large unit frees: the first large waiter gets it, FIFO among large ones
    second_large = await asyncio.wait_for(large, 1)
    assert not third.done()
    small.release()
    (await asyncio.wait_for(third, 1)).release()
    second_large.release()
    assert gate.in_use == gate.large_in_use == gate.bytes_in_use == 0


async def test_express_does_not_let_small_requests_starve_one_waiting_for_bytes():
    gate = Gate(3, max_queued=None, byte_budget=100, express=1, express_max_bytes=10)
    first = await gate.acquire(nbytes=60)
    big = asyncio.ensure_future(gate.acquire(nbytes=50))  # waits for bytes, not for its lane
    await asyncio.sleep(0)
    small = asyncio.ensure_future(gate.acquire(nbytes=5))
    await asyncio.sleep(0)
    assert not big.done() and not small.done()
    first.release()
    await asyncio.wait_for(asyncio.gather(big, small), 1)


async def test_cheap_items_are_not_stuck_behind_bombs():
    """One slot busy with an expensive item and another queued: cheap items still complete, on the express
    slot, while both expensive ones wait."""
    gate = threading.Event()

    def bomb(slot):
        assert gate.wait(10)
        return "bomb"

    def cheap(slot):
        return slot.index

    pool = SlotPool(1, express_slots=1, express_max_bytes=1000)
    bombs = [asyncio.ensure_future(pool.run(bomb, nbytes=10**6)) for _ in range(2)]
    await asyncio.sleep(0.02)
    done = await asyncio.wait_for(asyncio.gather(*(pool.run(cheap, nbytes=100) for _ in range(5))), 5)
    assert len(done) == 5 and not any(b.done() for b in bombs)
    s = pool.statistics()
    assert s.num_slots == 1 and s.express_slots == 1 and s.queued == 1
    gate.set()
    assert await asyncio.gather(*bombs) == ["bomb", "bomb"]
    await pool.aclose()
