"""AsyncMMDataProcessor: back-pressure, deadlines and thread isolation for multimodal processors.

A drop-in for SGLang's wrapper of the same name (PR #12066), fixing what made it be reverted:

* a timed-out call frees its caller at the deadline, but its concurrency slot stays held until the
  work really ends, so abandoned work never exceeds ``max_concurrent_calls``;
* calls beyond ``max_concurrent_calls + max_queued`` fail at once with :class:`~gpu_mm.Overloaded`;
* synchronous processors run on a bounded pool whose threads each own a private processor;
* ``async def`` processors that block ("fake async") can be run on worker-thread loops
  (``async_mode="thread"``), and the time any processor holds the caller's loop is measured.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import functools
import inspect
import logging
import time
import types
from collections.abc import Callable, Coroutine, Generator
from typing import Any, Literal

from ._aio import await_or_abandon
from ._gate import Gate, Permit
from ._lifecycle import Closeable
from ._workers import WorkerPool
from .errors import GpuMMError, Overloaded, ProcessingTimeout, ProcessorClosed
from .metrics import LatencySummary, Window

__all__ = ["AsyncMMDataProcessor", "ProcessorCounts", "ProcessorStatistics"]

logger = logging.getLogger(__name__)

DEFAULT_MAX_CONCURRENT_CALLS = 32  # SGLang's --mm-max-concurrent-calls default


@dataclasses.dataclass(frozen=True)
class ProcessorCounts:
    """The counters and gauges of an :class:`AsyncMMDataProcessor`, without the latency summaries of
    :class:`ProcessorStatistics`: cheap enough to read at every metrics scrape (the summaries sort their windows)."""

    in_flight: int
    """Jobs holding a slot, abandoned ones included; never above ``max_concurrent_calls``."""
    queued: int
    abandoned: int
    """Jobs whose caller gave up (timeout or cancellation) that are still running."""
    completed: int
    failed: int
    timed_out: int
    rejected: int
    cancelled: int
    loop_hold_max_s: float
    """Longest single stretch an inline ``process_mm_data_async`` held the caller's loop."""


@dataclasses.dataclass(frozen=True)
class ProcessorStatistics(ProcessorCounts):
    """A snapshot of an :class:`AsyncMMDataProcessor`'s state and counters: its :class:`ProcessorCounts` and
    latency summaries."""

    max_concurrent_calls: int
    max_queued: int | None
    queue_wait: LatencySummary
    run_time: LatencySummary
    loop_hold_total_s: float
    worker_threads: int


class _Job:
    """One admitted call: the future of its real completion and whether its caller left."""

    __slots__ = ("done", "abandoned", "started", "task", "permit")

    def __init__(self, done: asyncio.Future[Any], task: asyncio.Task[Any] | None, permit: Permit) -> None:
        self.done = done
        self.task = task
        self.permit = permit
        self.abandoned = False
        self.started = time.monotonic()


class AsyncMMDataProcessor(Closeable):
    """Wrap a multimodal processor with admission control, deadlines and thread isolation.

    Args:
        mm_processor: an object with ``async def process_mm_data_async(image_data, audio_data,
            input_text, request_obj, **kw)`` or ``def process_mm_data(...)`` (same arguments).
        max_concurrent_calls: jobs allowed in flight at once, abandoned ones included
            (``None``: 32, SGLang's default). Also the size of the worker pool.
        timeout_s: per-call deadline, counted from arrival (queue time included); ``None``: none.
        max_queued: calls allowed to wait for a slot; beyond it calls fail at once with
            :class:`Overloaded`. ``None``: ``4 * max_concurrent_calls``.
        processor_factory: builds one private processor per worker thread. Without it each worker
            deep-copies ``mm_processor`` (unless it declares ``thread_safe = True``).
        async_mode: ``"inline"`` awaits ``process_mm_data_async`` on the caller's loop (right for
            truly async processors); ``"thread"`` runs it on a worker thread's own loop with that
            thread's private processor (right for processors that block inside ``async def``).
        loop_hold_warn_s: log a warning when an inline processor holds the loop this long.

    Raises:
        TypeError: ``mm_processor`` has neither method.
    """

    def __init__(
        self,
        mm_processor: Any,
        *,
        max_concurrent_calls: int | None = None,
        timeout_s: float | None = None,
        max_queued: int | None = None,
        processor_factory: Callable[[], Any] | None = None,
        async_mode: Literal["inline", "thread"] = "inline",
        loop_hold_warn_s: float = 0.05,
    ) -> None:
        if max_concurrent_calls is None:
            max_concurrent_calls = DEFAULT_MAX_CONCURRENT_CALLS
        if max_concurrent_calls < 1:
            raise ValueError(f"max_concurrent_calls must be >= 1 or None, got {max_concurrent_calls!r}")
        if timeout_s is not None and not timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0 or None, got {timeout_s!r}")
        if async_mode not in ("inline", "thread"):
            raise ValueError(f"async_mode must be 'inline' or 'thread', got {async_mode!r}")
        if max_queued is None:
            max_queued = 4 * max_concurrent_calls

        self.mm_processor = mm_processor
        async_fn = getattr(mm_processor, "process_mm_data_async", None)
        sync_fn = getattr(mm_processor, "process_mm_data", None)
        self.is_async = async_fn is not None and inspect.iscoroutinefunction(async_fn)
        if self.is_async:
            self._method = "process_mm_data_async"
        elif callable(sync_fn):
            self._method = "process_mm_data"
        elif callable(async_fn):
            # A non-coroutine process_mm_data_async (it may return an awaitable): run it on a worker.
            self._method = "process_mm_data_async"
        else:
            raise TypeError(
                f"{type(mm_processor).__name__} has neither an async process_mm_data_async nor a "
                "callable process_mm_data; one of them is required"
            )
        self._inline = self.is_async and async_mode == "inline"

        self.max_concurrent_calls = max_concurrent_calls
        self.timeout_s = timeout_s
        self.max_queued = max_queued
        self.async_mode = async_mode
        self.loop_hold_warn_s = loop_hold_warn_s
        self._gate = Gate(max_concurrent_calls, max_queued=max_queued, name="AsyncMMDataProcessor")
        self._pool: WorkerPool | None = None
        if not self._inline:
            spares = []
            if processor_factory is None and not getattr(mm_processor, "thread_safe", False):
                # Each worker thread deep-copies the processor: find out now, not on every call, if it cannot.
                try:
                    spares.append(copy.deepcopy(mm_processor))
                except Exception as exc:  # noqa: BLE001 - locks, sockets, CUDA handles: many types
                    raise TypeError(
                        f"{type(mm_processor).__name__} cannot be deep-copied for the worker threads ({exc}); pass "
                        "processor_factory= to build one private processor per thread, or set thread_safe = True "
                        "on its class if one instance may serve every thread"
                    ) from None
            self._pool = WorkerPool(
                max_concurrent_calls,
                prototype=mm_processor,
                factory=processor_factory,
                spares=spares,
                name="gpu-mm-mm-processor",
            )
        self._jobs: set[_Job] = set()
        self._closed = False
        self._completed = self._failed = self._timed_out = self._rejected = self._cancelled = 0
        self._queue_wait = Window()
        self._run_time = Window()
        self._hold_max = 0.0
        self._hold_total = 0.0

    # ------------------------------------------------------------------ public API

    async def process(
        self,
        *,
        image_data: Any = None,
        audio_data: Any = None,
        input_text_or_ids: Any = None,
        request_obj: Any = None,
        **kwargs: Any,
    ) -> Any:
        """Run the wrapped processor on one request.

        ``input_text_or_ids`` is passed as ``input_text``; ``request_obj`` and every extra keyword
        are passed through unchanged.

        Raises:
            Overloaded: ``max_concurrent_calls`` are in flight and ``max_queued`` calls wait already.
            ProcessingTimeout: the deadline passed (a ``TimeoutError``); the work may still run and
                keeps its slot until it ends.
            ProcessorClosed: the processor was shut down.
            Exception: whatever the wrapped processor raised.
        """
        if self._closed:
            raise ProcessorClosed("AsyncMMDataProcessor is shut down")
        arrived = time.monotonic()
        deadline = None if self.timeout_s is None else arrived + self.timeout_s
        call_kwargs = dict(
            image_data=image_data,
            audio_data=audio_data,
            input_text=input_text_or_ids,
            request_obj=request_obj,
            **kwargs,
        )
        try:
            permit = await self._gate.acquire(deadline=deadline)
        except Overloaded:
            self._rejected += 1
            raise
        except ProcessingTimeout:
            self._timed_out += 1
            raise ProcessingTimeout(
                f"multimodal processing did not start within timeout_s={self.timeout_s}: "
                f"{self._gate.in_use} jobs in flight"
            ) from None
        except asyncio.CancelledError:
            self._cancelled += 1
            raise
        self._queue_wait.add(time.monotonic() - arrived)
        job = self._start(call_kwargs, permit)
        try:
            done = await await_or_abandon(job.done, deadline, functools.partial(self._abandon, job))
        except asyncio.CancelledError:
            self._cancelled += 1
            raise
        if not done:
            self._timed_out += 1
            raise ProcessingTimeout(
                f"multimodal processing did not finish within timeout_s={self.timeout_s}; "
                "the work keeps its slot until it really ends"
            )
        return job.done.result()

    def statistics(self) -> ProcessorStatistics:
        """Return a snapshot of the counters and current state."""
        return ProcessorStatistics(
            max_concurrent_calls=self.max_concurrent_calls,
            max_queued=self.max_queued,
            **vars(self.counts()),
            queue_wait=self._queue_wait.summary(),
            run_time=self._run_time.summary(),
            loop_hold_total_s=self._hold_total,
            worker_threads=0 if self._pool is None else self._pool.num_threads,
        )

    def counts(self) -> ProcessorCounts:
        """Return the counters and current state without the latency summaries (what a metrics scrape needs)."""
        return ProcessorCounts(
            in_flight=self._gate.in_use,
            queued=self._gate.queued,
            abandoned=sum(1 for j in self._jobs if j.abandoned),
            completed=self._completed,
            failed=self._failed,
            timed_out=self._timed_out,
            rejected=self._rejected,
            cancelled=self._cancelled,
            loop_hold_max_s=self._hold_max,
        )

    def shutdown(self, wait: bool = False) -> None:
        """Stop accepting calls and fail queued ones with :class:`ProcessorClosed`.

        Running work is not interrupted. With ``wait=True`` this blocks until the worker threads
        have finished (do not call it so from an event loop; use :meth:`aclose`).
        """
        self._closed = True
        self._gate.close("AsyncMMDataProcessor was shut down while the call was queued")
        if self._pool is not None:
            self._pool.shutdown(wait=wait)

    def close(self) -> None:
        """Stop accepting calls and fail queued ones; running work ends on its own (never blocks)."""
        self.shutdown(wait=False)

    async def aclose(self, wait: bool = True) -> None:
        """Shut down and, with ``wait``, await every running job (abandoned ones included)."""
        self.shutdown(wait=False)
        if wait:
            pending = [j.done for j in self._jobs]
            if pending:
                await asyncio.wait(pending)
            if self._pool is not None:  # the threads exit once their jobs have; none left into interpreter exit
                await asyncio.to_thread(self._pool.join)

    def __del__(self) -> None:
        try:
            self.shutdown(wait=False)
        except Exception:  # noqa: BLE001 - interpreter teardown
            pass

    # ------------------------------------------------------------------ internals

    def _start(self, call_kwargs: dict[str, Any], permit: Permit) -> _Job:
        loop = asyncio.get_running_loop()
        if self._inline:
            method = getattr(self.mm_processor, self._method)
            try:
                coro = method(**call_kwargs)  # a bad signature raises here, before any task exists
            except BaseException:
                permit.release()
                self._failed += 1
                raise
            task = loop.create_task(self._timed(coro))
            job = _Job(task, task, permit)
        else:
            assert self._pool is not None
            method_name = self._method

            def work(processor: Any) -> Any:
                return getattr(processor, method_name)(**call_kwargs)

            try:
                cfut = self._pool.submit(work)
            except RuntimeError as exc:
                permit.release()
                raise ProcessorClosed(str(exc)) from None
            job = _Job(asyncio.wrap_future(cfut, loop=loop), None, permit)
        self._jobs.add(job)
        job.done.add_done_callback(functools.partial(self._finish, job))
        return job

    def _finish(self, job: _Job, fut: asyncio.Future[Any]) -> None:
        """Runs when the work has really ended: only now is its slot returned."""
        self._jobs.discard(job)
        job.permit.release()
        self._run_time.add(time.monotonic() - job.started)
        if fut.cancelled():
            return
        exc = fut.exception()
        if exc is None:
            self._completed += 1
        else:
            self._failed += 1
            if job.abandoned and not isinstance(exc, GpuMMError):
                logger.warning("abandoned multimodal job failed after its caller left: %r", exc)

    def _abandon(self, job: _Job) -> None:
        job.abandoned = True
        if job.task is not None:
            # A truly async job can be told to stop; its slot comes back once it has unwound. (Thread work
            # cannot be interrupted: it runs to its end, holding its slot.)
            job.task.cancel()

    def _record_hold(self, seconds: float) -> None:
        self._hold_total += seconds
        if seconds > self._hold_max:
            self._hold_max = seconds
        if seconds >= self.loop_hold_warn_s:
            logger.warning(
                "%s.process_mm_data_async held the event loop for %.1f ms without yielding; "
                "it blocks inside async def: use async_mode='thread'",
                type(self.mm_processor).__name__,
                seconds * 1e3,
            )

    @types.coroutine
    def _timed(self, coro: Coroutine[Any, Any, Any]) -> Generator[Any, Any, Any]:
        """Drive ``coro`` step by step, measuring how long each step holds the loop."""
        send: Any = None
        throw: BaseException | None = None
        try:
            while True:
                t0 = time.perf_counter()
                try:
                    if throw is not None:
                        yielded = coro.throw(throw)
                    else:
                        yielded = coro.send(send)
                except StopIteration as stop:
                    return stop.value
                finally:
                    self._record_hold(time.perf_counter() - t0)
                send, throw = None, None
                try:
                    send = yield yielded
                except BaseException as exc:  # noqa: BLE001 - forwarded into the coroutine
                    throw = exc
        finally:
            coro.close()
