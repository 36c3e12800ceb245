"""A FIFO admission gate: bounded units and bytes in use, a bounded wait queue, deadlines."""

from __future__ import annotations

import asyncio
import collections
import time

from .errors import LimitExceeded, Overloaded, ProcessingTimeout, ProcessorClosed


class Gate:
    """Admits at most ``capacity`` holders (and ``byte_budget`` bytes) at once, first come first served.

    With ``express`` units, requests of more than ``express_max_bytes`` ("large") may hold at most
    ``capacity - express`` units; the rest serve only small requests, which may pass large ones queued
    behind the large units' cap (never ones waiting for bytes), so cheap work is not stuck behind bombs.

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
        express: int = 0,
        express_max_bytes: int = 0,
        name: str = "gate",
    ) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity!r}")
        if max_queued is not None and max_queued < 0:
            raise ValueError(f"max_queued must be >= 0 or None, got {max_queued!r}")
        if byte_budget is not None and byte_budget <= 0:
            raise ValueError(f"byte_budget must be > 0 or None, got {byte_budget!r}")
        if not 0 <= express < capacity:
            raise ValueError(f"express must be in [0, capacity), got {express!r} for capacity {capacity!r}")
        self.capacity = capacity
        self.max_queued = max_queued
        self.byte_budget = byte_budget
        self.express = express
        self.express_max_bytes = express_max_bytes
        self.name = name
        self.in_use = 0
        self.large_in_use = 0
        self.bytes_in_use = 0
        self._waiters: collections.deque[tuple[asyncio.Future[None], int]] = collections.deque()
        self._closed_exc: BaseException | None = None

    @property
    def queued(self) -> int:
        return sum(1 for fut, _ in self._waiters if not fut.done())

    def _large(self, nbytes: int) -> bool:
        return self.express > 0 and nbytes > self.express_max_bytes

    def _blocked(self, nbytes: int) -> str | None:
        """None when a request of ``nbytes`` can take a unit now; else what holds it: "lane" (only the
        large units' cap) or "full" (no unit, or no budget)."""
        if self.in_use >= self.capacity:
            return "full"
        if self.byte_budget is not None and self.bytes_in_use + nbytes > self.byte_budget:
            return "full"
        if self._large(nbytes) and self.large_in_use >= self.capacity - self.express:
            return "lane"
        return None

    def _fits(self, nbytes: int) -> bool:
        return self._blocked(nbytes) is None

    def _take(self, nbytes: int) -> None:
        self.in_use += 1
        self.bytes_in_use += nbytes
        if self._large(nbytes):
            self.large_in_use += 1

    def _may_pass_queue(self, nbytes: int) -> bool:
        """A small request may go ahead of waiters that only wait for a large unit."""
        if self._large(nbytes):
            return False
        return all(fut.done() or self._blocked(n) == "lane" for fut, n in self._waiters)

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
        if self._fits(nbytes) and (not self._waiters or self._may_pass_queue(nbytes)):
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
        if self._large(nbytes):
            self.large_in_use -= 1
        self._wake()

    def _wake(self) -> None:
        # FIFO, except that a waiter held only by the large units' cap lets small ones behind it pass; one
        # held by the unit count or the byte budget stops the scan, so nothing starves a large request.
        i = 0
        while i < len(self._waiters):
            fut, nbytes = self._waiters[i]
            if fut.done():
                del self._waiters[i]
                continue
            blocked = self._blocked(nbytes)
            if blocked == "full":
                return
            if blocked == "lane":
                i += 1
                continue
            del self._waiters[i]
            self._take(nbytes)
            fut.set_result(None)

    def close(self, reason: str) -> None:
        """Refuse new requests and fail every queued waiter with :class:`ProcessorClosed`."""
        self._closed_exc = ProcessorClosed(reason)
        while self._waiters:
            fut, _ = self._waiters.popleft()
            if not fut.done():
                fut.set_exception(ProcessorClosed(reason))
