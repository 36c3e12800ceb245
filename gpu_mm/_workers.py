"""A bounded pool of worker threads, each owning a private copy of a processor and its own event loop."""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import copy
import inspect
import queue
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

from .sched import reset_inherited_slice

_STOP = object()
_pools: weakref.WeakSet[WorkerPool] = weakref.WeakSet()
EXIT_JOIN_S = 10.0
"""How long interpreter exit waits for running jobs of pools never closed (then their daemon threads are left)."""


def _stop_all_at_exit() -> None:
    """Before the interpreter finalizes, stop every pool and wait for its threads (up to ``EXIT_JOIN_S`` in
    all). A worker thread still running then (a daemon) would be stopped by the finalizing interpreter in the
    middle of whatever it runs; if that is a C++ destructor (a tensor freed as a job's frame unwinds), the
    process aborts ("terminate called without an active exception"), which is how this was found."""
    deadline = time.monotonic() + EXIT_JOIN_S
    for pool in list(_pools):
        pool.shutdown(wait=False)
    for pool in list(_pools):
        pool.join(max(0.0, deadline - time.monotonic()))


# Run by threading's own shutdown, before the interpreter finalizes (concurrent.futures stops its workers the
# same way); atexit would run only after that.
_register_at_exit = getattr(threading, "_register_atexit", None)
if _register_at_exit is not None:
    _register_at_exit(_stop_all_at_exit)
else:  # pragma: no cover - CPython has had it since 3.9
    atexit.register(_stop_all_at_exit)


class WorkerPool:
    """Runs ``job(processor)`` on one of at most ``max_workers`` threads.

    Each thread builds its private processor once (``factory()``, or a deep copy of ``prototype``, or
    the prototype itself when it declares ``thread_safe = True``), so objects that are not thread-safe
    (HF processors, tokenizers, decoder handles) are never shared. A job that returns an awaitable has
    it driven to completion on the thread's own event loop. The caller bounds the number of jobs in
    flight, so a job always finds a thread: threads are started on demand up to ``max_workers``.
    """

    def __init__(
        self,
        max_workers: int,
        *,
        prototype: Any = None,
        factory: Callable[[], Any] | None = None,
        spares: list[Any] | None = None,
        name: str = "gpu-mm-worker",
        on_start: Callable[[], Any] | None = None,
        on_stop: Callable[[], Any] | None = None,
    ) -> None:
        if max_workers < 1:
            raise ValueError(f"max_workers must be >= 1, got {max_workers!r}")
        self.max_workers = max_workers
        self._prototype = prototype
        self._factory = factory
        self._spares = list(spares or [])
        """Private processors made ahead of time (e.g. the copy that proved copying works); used first."""
        self._name = name
        self._on_start = on_start
        """Called first in each new thread (e.g. to set its scheduling policy)."""
        self._on_stop = on_stop
        """Called last in each thread, as it exits."""
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._idle = 0
        self._lock = threading.Lock()
        self._closed = False
        _pools.add(self)

    @property
    def num_threads(self) -> int:
        return sum(1 for t in self._threads if t.is_alive())

    def submit(self, job: Callable[[Any], Any]) -> concurrent.futures.Future[Any]:
        """Queue ``job``; the returned future resolves when the job has really finished."""
        fut: concurrent.futures.Future[Any] = concurrent.futures.Future()
        with self._lock:
            if self._closed:
                raise RuntimeError("worker pool is shut down")
            self._queue.put((job, fut))
            if self._idle > 0:
                self._idle -= 1
            elif len(self._threads) < self.max_workers:
                self._start_thread()
        return fut

    def prestart(self) -> None:
        """Start every thread now, idle: ``Thread.start`` waits until the new thread runs, which on a busy machine
        took up to 6 ms measured on the event loop when a burst of requests started threads lazily."""
        with self._lock:
            while not self._closed and len(self._threads) < self.max_workers:
                self._idle += 1  # waiting for a job, as if it had finished one
                self._start_thread()

    def _start_thread(self) -> None:
        """One more thread (called with ``_lock`` held)."""
        t = threading.Thread(target=self._run, name=f"{self._name}-{len(self._threads)}", daemon=True)
        self._threads.append(t)
        t.start()

    def _make_processor(self) -> Any:
        with self._lock:
            if self._spares:
                return self._spares.pop()
        if self._factory is not None:
            return self._factory()
        if self._prototype is None or getattr(self._prototype, "thread_safe", False):
            return self._prototype
        return copy.deepcopy(self._prototype)

    def _run(self) -> None:
        processor: Any = None
        built = False
        loop: asyncio.AbstractEventLoop | None = None
        reset_inherited_slice()
        if self._on_start is not None:
            self._on_start()
        try:
            while True:
                item = self._queue.get()
                if item is _STOP:
                    return
                job, fut = item
                if fut.set_running_or_notify_cancel():
                    try:
                        if not built:
                            processor = self._make_processor()
                            built = True
                        result = job(processor)
                        if inspect.isawaitable(result):
                            if loop is None:
                                loop = asyncio.new_event_loop()
                            result = loop.run_until_complete(_await(result))
                    except BaseException as exc:  # noqa: BLE001 - delivered to the caller
                        fut.set_exception(exc)
                    else:
                        fut.set_result(result)
                    # Hold nothing of a finished job until the next one: its result may be a large tensor (or a
                    # shared-memory block that goes back to its pool only when its last reference dies).
                    del job, fut, item
                    result = None
                with self._lock:
                    self._idle += 1
        finally:
            if loop is not None:
                loop.close()
            if self._on_stop is not None:
                self._on_stop()

    def shutdown(self, wait: bool = False) -> None:
        """Let each thread finish its queued work and exit; optionally join them."""
        with self._lock:
            if self._closed:
                threads = list(self._threads)
            else:
                self._closed = True
                threads = list(self._threads)
                for _ in threads:
                    self._queue.put(_STOP)
        if wait:
            self.join()

    def join(self, timeout: float | None = None) -> bool:
        """Wait (up to ``timeout`` seconds in all) for the threads of a shut-down pool to exit; True when none
        is left. Never from a pool's own thread."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            threads = list(self._threads)
        for t in threads:
            if t is not threading.current_thread():
                t.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        return not any(t.is_alive() for t in threads if t is not threading.current_thread())


async def _await(awaitable: Any) -> Any:
    return await awaitable


def prestarted_executor(
    n: int, thread_name_prefix: str, initializer: Callable[[], Any] | None = None
) -> concurrent.futures.ThreadPoolExecutor:
    """A ``ThreadPoolExecutor`` whose ``n`` threads already run (it starts them lazily, one per submit that finds
    none idle, and each start waits for the new thread): ``n`` tasks that wait for each other force all of them."""
    pool = concurrent.futures.ThreadPoolExecutor(n, thread_name_prefix=thread_name_prefix, initializer=initializer)
    barrier = threading.Barrier(n)
    for f in [pool.submit(barrier.wait, 10.0) for _ in range(n)]:
        f.result()
    return pool
