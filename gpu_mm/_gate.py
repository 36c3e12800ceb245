"""A FIFO admission gate: bounded units and bytes in use, a bounded wait queue, deadlines."""

from __future__ import annotations

import asyncio
import collections
import time

from .errors import LimitExceeded, Overloaded, ProcessingTimeout, ProcessorClosed


class Gate:
    """Admits at most ``capacity`` holders (and ``byte_budget`` bytes) at once, first come first served.

    Waiting is cancellation-safe: a waiter that is cancelled or times out removes itself, and if it had
    already been granted a unit in the same instant it hands the unit straight back. Units are returned
    with :meth:`release` by whoever owns the work, which is not necessarily the task that acquired them.
    """

    def __init__(
        self,
        capacity: int,
        *,
        max_queued: int | None,
        byte_budget: int | None = None,
        name: str = "gate",
    ) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity!r}")
        if max_queued is not None and max_queued < 0:
            raise ValueError(f"max_queued must be >= 0 or None, got {max_queued!r}")
        if byte_budget is not None and byte_budget <= 0:
            raise ValueError(f"byte_budget must be > 0 or None, got {byte_budget!r}")
        self.capacity = capacity
        self.max_queued = max_queued
        self.byte_budget = byte_budget
        self.name = name
        self.in_use = 0
        self.bytes_in_use = 0
        self._waiters: collections.deque[tuple[asyncio.Future[None], int]] = collections.deque()
        self._closed_exc: BaseException | None = None

    @property
    def queued(self) -> int:
        return sum(1 for fut, _ in self._waiters if not fut.done())

    def _fits(self, nbytes: int) -> bool:
        if self.in_use >= self.capacity:
            return False
        return self.byte_budget is None or self.bytes_in_use + nbytes <= self.byte_budget

    def _take(self, nbytes: int) -> None:
        self.in_use += 1
        self.bytes_in_use += nbytes

    def _check_request(self, nbytes: int) -> None:
        if self._closed_exc is not None:
            raise ProcessorClosed(str(self._closed_exc))
        if nbytes < 0:
            raise ValueError(f"nbytes must be >= 0, got {nbytes!r}")
        if self.byte_budget is not None and nbytes > self.byte_budget:
            raise LimitExceeded(
                self.name, f"work needs {nbytes} bytes, more than the whole budget of {self.byte_budget}"
            )

    def try_acquire(self, nbytes: int = 0) -> bool:
        """Take a unit at once if one is free and nobody is queued ahead; never waits."""
        self._check_request(nbytes)
        if not self._waiters and self._fits(nbytes):
            self._take(nbytes)
            return True
        return False

    async def acquire(self, nbytes: int = 0, deadline: float | None = None) -> None:
        """Wait for a unit (and ``nbytes`` of budget) until ``deadline`` (``time.monotonic()`` seconds).

        Raises:
            Overloaded: the queue is full.
            ProcessingTimeout: the deadline passed while queued.
            ProcessorClosed: the gate was closed before or while waiting.
        """
        if self.try_acquire(nbytes):
            return
        if self.max_queued is not None and self.queued >= self.max_queued:
            raise Overloaded(
                f"{self.name}: {self.in_use} in flight and {self.queued} queued "
                f"(max_queued={self.max_queued}); try again later"
            )
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        entry = (fut, nbytes)
        self._waiters.append(entry)
        try:
            if deadline is None:
                await fut
            else:
                async with asyncio.timeout_at(loop.time() + (deadline - time.monotonic())):
                    await fut
        except TimeoutError:
            self._abandon(entry)
            raise ProcessingTimeout(f"{self.name}: deadline passed while queued") from None
        except BaseException:
            self._abandon(entry)
            raise

    def _abandon(self, entry: tuple[asyncio.Future[None], int]) -> None:
        fut, nbytes = entry
        try:
            self._waiters.remove(entry)
        except ValueError:
            pass
        if fut.done() and not fut.cancelled() and fut.exception() is None:
            # Granted in the same instant we gave up: hand the unit on.
            self.release(nbytes)
        else:
            self._wake()

    def release(self, nbytes: int = 0) -> None:
        """Return one unit and ``nbytes`` of budget, waking queued waiters in order."""
        if self.in_use <= 0:
            raise RuntimeError(f"{self.name}: release() without a matching acquire()")
        self.in_use -= 1
        self.bytes_in_use -= nbytes
        self._wake()

    def _wake(self) -> None:
        while self._waiters:
            fut, nbytes = self._waiters[0]
            if fut.done():
                self._waiters.popleft()
                continue
            if not self._fits(nbytes):
                return  # strict FIFO: a large request is not starved by smaller ones behind it
            self._waiters.popleft()
            self._take(nbytes)
            fut.set_result(None)

    def close(self, reason: str) -> None:
        """Refuse new requests and fail every queued waiter with :class:`ProcessorClosed`."""
        self._closed_exc = ProcessorClosed(reason)
        while self._waiters:
            fut, _ = self._waiters.popleft()
            if not fut.done():
                fut.set_exception(ProcessorClosed(reason))
