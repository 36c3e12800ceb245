"""Device slots: a worker thread (and, on CUDA, a stream) per slot, completion by polling.

``SlotPool.run(fn, ...)`` waits for a free slot (FIFO, bounded queue, optional GPU-memory budget in
bytes in flight), runs ``fn(slot, ...)`` on that slot's own thread (inside its CUDA stream on a GPU),
then records a completion event after the enqueued work. The event loop never blocks on the GPU: one
poller task per pool queries every pending event, a few ``sleep(0)`` turns while work completes, then
backing off to ``poll_max_interval_s``. A caller whose deadline passes gets
:class:`~gpu_mm.ProcessingTimeout` at once; its slot is *quarantined* until the thread has returned and
the event has fired, so work in flight never exceeds the number of slots.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import time
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

from ._aio import await_or_abandon, consume
from ._gate import Gate, Permit
from ._lifecycle import Closeable
from ._workers import WorkerPool
from .errors import BackendUnavailable, ProcessingTimeout, ProcessorClosed
from .metrics import LatencySummary, Window
from .sched import leave_idle_policy, set_idle_policy

__all__ = ["Completion", "Slot", "SlotPool", "SlotPoolStatistics"]

logger = logging.getLogger(__name__)
T = TypeVar("T")


class Completion(Protocol):
    """What the poller needs of a CUDA event: ``query()`` is True once the work before it is done."""

    def query(self) -> bool: ...


@dataclasses.dataclass
class Slot:
    """One slot: its index, device, CUDA stream (None on CPU) and per-thread state owned by its worker."""

    index: int
    device: str
    stream: Any = None
    state: dict[Any, Any] = dataclasses.field(default_factory=dict)
    """Decoders, DALI pipelines and buffers that belong to this slot's thread only."""
    abandoned_at: float | None = None
    """When the caller of the slot's current job gave up (``time.monotonic()``), or None: set on the loop, read by
    the slot's thread (a slot process may be stopped some time after)."""


@dataclasses.dataclass(frozen=True)
class SlotPoolStatistics:
    """A snapshot of a :class:`SlotPool`."""

    device: str
    num_slots: int
    express_slots: int
    busy: int
    """Slots whose work is running, abandoned work included."""
    quarantined: int
    """Busy slots whose caller has given up (deadline or cancellation) and whose work still runs."""
    queued: int
    bytes_in_flight: int
    memory_budget_bytes: int | None
    completed: int
    failed: int
    timed_out: int
    pending_events: int
    queue_wait: LatencySummary
    run_time: LatencySummary


class _Pending:
    __slots__ = ("slot", "permit", "done", "started", "on_release", "on_done")

    def __init__(self, slot: Slot, permit: Permit, done: asyncio.Future[Any],
                 on_release: Callable[[], None] | None,
                 on_done: Callable[[Any, BaseException | None], None] | None = None) -> None:
        self.slot = slot
        self.permit = permit
        self.done = done
        self.started = time.monotonic()
        self.on_release = on_release
        self.on_done = on_done

    @property
    def abandoned(self) -> bool:
        """Its caller gave up (the slot is quarantined until the work ends): the slot says since when."""
        return self.slot.abandoned_at is not None


class _EventPoller:
    """One task per pool that polls every pending completion event from the event loop."""

    HOT_SPINS = 8

    def __init__(self, loop: asyncio.AbstractEventLoop, max_interval_s: float) -> None:
        self.loop = loop
        self.max_interval_s = max_interval_s
        self.entries: list[tuple[Completion, Callable[[BaseException | None], None]]] = []
        self._wakeup = asyncio.Event()
        self._task = loop.create_task(self._run(), name="gpu-mm-event-poller")

    def add(self, event: Completion, on_done: Callable[[BaseException | None], None]) -> None:
        self.entries.append((event, on_done))
        self._wakeup.set()

    def close(self) -> None:
        self._task.cancel()

    async def _run(self) -> None:
        idle_turns = 0
        while True:
            if not self.entries:
                self._wakeup.clear()
                await self._wakeup.wait()
                idle_turns = 0
            current, self.entries = self.entries, []
            still: list[tuple[Completion, Callable[[BaseException | None], None]]] = []
            fired = False
            for event, on_done in current:
                try:
                    ready = event.query()
                except Exception as exc:  # noqa: BLE001 - a failed query ends that work with an error
                    on_done(exc)
                    fired = True
                    continue
                if ready:
                    on_done(None)
                    fired = True
                else:
                    still.append((event, on_done))
            self.entries = still + self.entries
            if fired:
                idle_turns = 0
            else:
                idle_turns += 1
            if idle_turns <= self.HOT_SPINS:
                await asyncio.sleep(0)
            else:
                await asyncio.sleep(min(self.max_interval_s, 1e-4 * 2 ** (idle_turns - self.HOT_SPINS)))


class SlotPool(Closeable):
    """A fixed set of device slots gated by a FIFO admission queue.

    Args:
        num_slots: slots (threads, and CUDA streams on a GPU) working at once.
        device: ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        max_queued: calls allowed to wait for a slot (``None``: unbounded).
        memory_budget_bytes: bytes in flight allowed at once (each call says its ``nbytes``).
        express_slots: extra slots that only calls of at most ``express_max_bytes`` may use, so cheap items
            are never queued behind expensive ones (decompression bombs, long videos) for long.
        express_max_bytes: the ``nbytes`` up to which a call counts as cheap.
        stream_priority: the CUDA priority of the slots' streams, in
            ``torch.cuda.Stream.priority_range()``; lower numbers are higher priority. torch's lowest is 0,
            which is also every default stream's, so slot streams cannot rank below the model's: an engine
            that wants its model's kernels to win runs the model on a stream of priority -1 or less.
        event_factory: ``event_factory(slot)`` returns the completion to poll after ``fn`` returns;
            default: a CUDA event recorded on the slot's stream on CUDA, none on the CPU (the
            thread's return is the completion). Tests pass fake events here.
        poll_max_interval_s: the longest the poller sleeps between queries when nothing completes.
        idle_workers: the slot threads on ``SCHED_IDLE`` (:func:`gpu_mm.sched.set_idle_policy`).
        slot_start, slot_exit: called with the slot on its own thread, as the thread starts and as it exits
            (per-slot resources such as a slot process live in ``slot.state``).
    """

    def __init__(
        self,
        num_slots: int = 1,
        *,
        device: str = "cpu",
        max_queued: int | None = None,
        memory_budget_bytes: int | None = None,
        express_slots: int = 0,
        express_max_bytes: int = 256 * 2**20,
        stream_priority: int = 0,
        event_factory: Callable[[Slot], Completion | None] | None = None,
        poll_max_interval_s: float = 0.002,
        idle_workers: bool = False,
        slot_start: Callable[[Slot], Any] | None = None,
        slot_exit: Callable[[Slot], Any] | None = None,
    ) -> None:
        device = str(device)
        if not (device == "cpu" or device.startswith("cuda")):
            raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {device!r}")
        if isinstance(stream_priority, bool) or not isinstance(stream_priority, int):
            raise TypeError(f"stream_priority must be an int (a CUDA stream priority), got {stream_priority!r}")
        if num_slots < 1:
            raise ValueError(f"num_slots must be >= 1, got {num_slots!r}")
        if express_slots < 0:
            raise ValueError(f"express_slots must be >= 0, got {express_slots!r}")
        self.device = device
        self.num_slots = num_slots
        self.express_slots = express_slots
        self.express_max_bytes = express_max_bytes
        self.memory_budget_bytes = memory_budget_bytes
        total = num_slots + express_slots
        self._gate = Gate(total, max_queued=max_queued, byte_budget=memory_budget_bytes, express=express_slots,
                          express_max_bytes=express_max_bytes, name="SlotPool")
        self._slots = [Slot(i, device) for i in range(total)]
        if device.startswith("cuda"):
            self._init_cuda(stream_priority)
        self._event_factory = event_factory if event_factory is not None else self._default_event
        self._free = list(reversed(self._slots))
        self._pending: set[_Pending] = set()
        # The hooks hold the slot and the callables, never the pool: a running thread keeps its WorkerPool, and
        # that must not keep this pool from being dropped (its __del__ lets the threads exit).
        self._threads = [WorkerPool(1, name=f"gpu-mm-slot-{i}",
                                    on_start=functools.partial(_slot_thread_started, idle_workers, slot_start, slot),
                                    on_stop=functools.partial(_slot_thread_stopping, idle_workers, slot_exit, slot))
                         for i, slot in enumerate(self._slots)]
        self._poll_max = poll_max_interval_s
        self._poller: _EventPoller | None = None
        self._closed = False
        self._completed = self._failed = self._timed_out = 0
        self._queue_wait = Window()
        self._run_time = Window()

    def _init_cuda(self, stream_priority: int) -> None:
        try:
            import torch
        except ImportError as exc:  # pragma: no cover - torch is a dependency
            raise BackendUnavailable("torch is not installed") from exc
        if not torch.cuda.is_available():
            raise BackendUnavailable(f"device {self.device!r} requested but CUDA is not available")
        dev = torch.device(self.device)
        # Larger numbers are lower priority; the range is (least, greatest) = (0, -k).
        least, greatest = torch.cuda.Stream.priority_range()  # type: ignore[call-arg]  # a staticmethod
        if not greatest <= stream_priority <= least:
            raise ValueError(f"stream_priority must be in [{greatest}, {least}], got {stream_priority}")
        priority = stream_priority
        for slot in self._slots:
            slot.stream = torch.cuda.Stream(device=dev, priority=priority)

    @staticmethod
    def _default_event(slot: Slot) -> Completion | None:
        if slot.stream is None:
            return None
        import torch

        event = torch.cuda.Event()
        event.record(slot.stream)
        return event

    # ------------------------------------------------------------------ public API

    async def run(
        self,
        fn: Callable[..., T],
        *args: Any,
        nbytes: int = 0,
        deadline: float | None = None,
        on_release: Callable[[], None] | None = None,
        on_done: Callable[[Any, BaseException | None], None] | None = None,
        **kwargs: Any,
    ) -> T:
        """Run ``fn(slot, *args, **kwargs)`` on a slot's thread and await its completion.

        Args:
            fn: the work; on CUDA it runs with the slot's stream current and must only enqueue.
            nbytes: device bytes this work holds until it completes (for the memory budget).
            deadline: ``time.monotonic()`` instant after which the caller gives up.
            on_release: called once on the loop when this call is settled for good: its work has
                really ended (even if the caller gave up first), or it never started.
            on_done: called once on the loop with ``(result, None)`` or ``(None, exception)`` when the work
                has really ended, or with the reason it never started; also when the caller has left (so
                others waiting for the same work get its outcome).

        Raises:
            ProcessingTimeout: the deadline passed (queued or running); a running slot is
                quarantined until its work ends.
            Overloaded: the queue is full.
            LimitExceeded: ``nbytes`` is larger than the whole memory budget.
            Exception: whatever ``fn`` (or the completion event) raised.
        """
        if self._closed:
            closed = ProcessorClosed("SlotPool is closed")
            if on_done is not None:
                on_done(None, closed)
            if on_release is not None:
                on_release()
            raise closed
        loop = asyncio.get_running_loop()
        arrived = time.monotonic()
        try:
            permit = await self._gate.acquire(nbytes=nbytes, deadline=deadline)
        except BaseException as exc:
            if on_done is not None:
                on_done(None, exc)
            if on_release is not None:
                on_release()  # never started
            raise
        self._queue_wait.add(time.monotonic() - arrived)
        slot = self._free.pop()
        slot.abandoned_at = None
        pending = _Pending(slot, permit, loop.create_future(), on_release, on_done)
        self._pending.add(pending)
        pending.done.add_done_callback(functools.partial(self._release, pending))
        work = functools.partial(self._work, fn, slot, args, kwargs)
        try:
            cfut = self._threads[slot.index].submit(lambda _processor: work())
        except RuntimeError as exc:  # the pool was closed between admission and submission
            if on_done is not None:
                on_done(None, ProcessorClosed(str(exc)))
            pending.done.set_exception(ProcessorClosed(str(exc)))
            consume(pending.done)
            raise ProcessorClosed(f"SlotPool is closed: {exc}") from None
        cfut.add_done_callback(
            lambda f: loop.call_soon_threadsafe(self._on_thread_done, pending, f)
            if not loop.is_closed()
            else None
        )
        if not await await_or_abandon(pending.done, deadline, functools.partial(_abandoned, pending)):
            self._timed_out += 1
            raise ProcessingTimeout(
                f"slot {slot.index} on {self.device}: work did not complete by its deadline; "
                "the slot stays quarantined until it does"
            )
        return pending.done.result()

    def on_each_slot(self, fn: Callable[[Slot], Any]) -> list[Any]:
        """Run ``fn(slot)`` on every slot's own thread, after whatever that thread has queued, outside the
        admission gate (for per-slot set-up such as waiting for a slot's process); returns the
        ``concurrent.futures`` futures, one per slot."""
        return [pool.submit(functools.partial(_call_on_slot, fn, slot))
                for pool, slot in zip(self._threads, self._slots)]

    def prestart(self) -> None:
        """Start every slot's thread now (see :meth:`gpu_mm._workers.WorkerPool.prestart`)."""
        for pool in self._threads:
            pool.prestart()

    def statistics(self) -> SlotPoolStatistics:
        """Return a snapshot of the pool's state and counters."""
        return SlotPoolStatistics(
            device=self.device,
            num_slots=self.num_slots,
            express_slots=self.express_slots,
            busy=self._gate.in_use,
            quarantined=sum(1 for p in self._pending if p.abandoned),
            queued=self._gate.queued,
            bytes_in_flight=self._gate.bytes_in_use,
            memory_budget_bytes=self.memory_budget_bytes,
            completed=self._completed,
            failed=self._failed,
            timed_out=self._timed_out,
            pending_events=0 if self._poller is None else len(self._poller.entries),
            queue_wait=self._queue_wait.summary(),
            run_time=self._run_time.summary(),
        )

    def close(self) -> None:
        """Refuse new work and fail queued calls without waiting (for synchronous teardown paths).

        Running work is not interrupted: each slot thread exits once its current item has ended.
        """
        self._closed = True
        self._gate.close("SlotPool was closed while the call was queued")
        for worker in self._threads:
            worker.shutdown(wait=False)

    shutdown = close

    async def aclose(self, timeout_s: float | None = None) -> None:
        """Refuse new work, fail queued calls, and wait (up to ``timeout_s``) for running work."""
        self._closed = True
        self._gate.close("SlotPool was closed while the call was queued")
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        pending = [p.done for p in self._pending]
        if pending:
            await asyncio.wait(pending, timeout=timeout_s)
        for worker in self._threads:
            worker.shutdown(wait=False)
        if self._poller is not None and not self._poller.entries:
            self._poller.close()
        # The slot threads exit once their work has ended; wait for that off the loop, so that none is left
        # running into interpreter exit (see gpu_mm._workers).
        for worker in self._threads:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            await asyncio.to_thread(worker.join, left)

    def __del__(self) -> None:
        # Let idle slot threads exit when the pool is dropped without aclose().
        for worker in getattr(self, "_threads", ()):
            try:
                worker.shutdown(wait=False)
            except Exception:  # noqa: BLE001 - interpreter teardown
                pass

    # ------------------------------------------------------------------ internals

    def _work(self, fn: Callable[..., T], slot: Slot, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[T, Any]:
        """Runs on the slot's thread: the work, then the completion event after it."""
        if slot.stream is not None:
            import torch

            with torch.cuda.stream(slot.stream):
                try:
                    result = fn(slot, *args, **kwargs)
                finally:
                    # Even on error, record after whatever was enqueued so the slot is freed only then.
                    event = self._event_factory(slot)
            return result, event
        result = fn(slot, *args, **kwargs)
        return result, self._event_factory(slot)

    def _on_thread_done(self, pending: _Pending, cfut: Any) -> None:
        exc = cfut.exception()
        if exc is not None:
            # fn raised. On CUDA, work it enqueued may still run; poll a fresh event before release.
            event = self._event_factory(pending.slot) if pending.slot.stream is not None else None
            if event is None:
                self._complete(pending, None, exc)
            else:
                self._poll(event, lambda qexc: self._complete(pending, None, exc))
            return
        result, event = cfut.result()
        if event is None:
            self._complete(pending, result, None)
        else:
            self._poll(event, lambda qexc: self._complete(pending, result, qexc))

    def _poll(self, event: Completion, on_done: Callable[[BaseException | None], None]) -> None:
        loop = asyncio.get_running_loop()
        if self._poller is None or self._poller.loop is not loop:
            self._poller = _EventPoller(loop, self._poll_max)
        self._poller.add(event, on_done)

    def _complete(self, pending: _Pending, result: Any, exc: BaseException | None) -> None:
        if pending.done.done():
            return
        if pending.on_done is not None:
            pending.on_done(result, exc)
        if exc is None:
            self._completed += 1
            pending.done.set_result(result)
        else:
            self._failed += 1
            pending.done.set_exception(exc)

    def _release(self, pending: _Pending, _fut: asyncio.Future[Any]) -> None:
        self._pending.discard(pending)
        self._run_time.add(time.monotonic() - pending.started)
        self._free.append(pending.slot)
        pending.permit.release()
        if pending.on_release is not None:
            pending.on_release()


def _abandoned(pending: _Pending) -> None:
    pending.slot.abandoned_at = time.monotonic()


def _call_on_slot(fn: Callable[[Slot], Any], slot: Slot, _processor: Any) -> Any:
    return fn(slot)


def _slot_thread_started(idle: bool, slot_start: Callable[[Slot], Any] | None, slot: Slot) -> None:
    """First thing on a slot's thread: its scheduling policy, then the owner's ``slot_start`` (e.g. starting the
    slot's process). A failing ``slot_start`` is logged: the slot's jobs then meet the failure themselves."""
    if idle:
        set_idle_policy()
    if slot_start is not None:
        try:
            slot_start(slot)
        except Exception:  # noqa: BLE001 - the thread must still serve (and fail) its jobs
            logger.exception("slot %d: slot_start failed", slot.index)


def _slot_thread_stopping(idle: bool, slot_exit: Callable[[Slot], Any] | None, slot: Slot) -> None:
    """Last thing on a slot's thread, as it exits: the owner's ``slot_exit``, then the policy left."""
    try:
        if slot_exit is not None:
            slot_exit(slot)
    finally:
        if idle:
            leave_idle_policy()
