"""A FIFO admission gate: bounded units and bytes in use, a bounded wait queue, deadlines; what it grants
is a :class:`Permit`, returned exactly once."""

from __future__ import annotations

import asyncio
import collections
import time

from .errors import LimitExceeded, Overloaded, ProcessingTimeout, ProcessorClosed


class Permit:
    """One unit of a :class:`Gate` and the bytes it was granted with. :meth:`release` gives them back once;
    later calls do nothing, so no path can return a unit twice or with the wrong byte count."""

    __slots__ = ("_gate", "nbytes", "_released")

    def __init__(self, gate: Gate, nbytes: int) -> None:
        self._gate, self.nbytes, self._released = gate, nbytes, False

    @property
    def released(self) -> bool:
        return self._released

    def release(self) -> bool:
        """Return the unit and its bytes; True the first time, False after."""
        if self._released:
            return False
        self._released = True
        self._gate._give_back(self.nbytes)
        return True

    def __repr__(self) -> str:
        return f"<Permit of {self._gate.name}, {self.nbytes} bytes{', released' if self._released else ''}>"


class Gate:
    """Admits at most ``capacity`` holders (and ``byte_budget`` bytes) at once, first come first served.

    With ``express`` units, requests of more than ``express_max_bytes`` ("large") may hold at most
    ``capacity - express`` units; the rest serve only small requests, which may pass large ones queued
    behind the large units' cap (never ones waiting for bytes), so cheap work is not stuck behind bombs.

    Waiting is cancellation-safe: a waiter that is cancelled or times out removes itself, and if it had
    already been granted a unit in the same instant it hands the unit straight back. Units come as
    :class:`Permit` objects, released by whoever owns the work (not necessarily the task that acquired them).
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
        self._waiters: collections.deque[tuple[asyncio.Future[Permit], int]] = collections.deque()
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

    def _take(self, nbytes: int) -> Permit:
        self.in_use += 1
        self.bytes_in_use += nbytes
        if self._large(nbytes):
            self.large_in_use += 1
        return Permit(self, nbytes)

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

    def try_acquire(self, nbytes: int = 0) -> Permit | None:
        """A unit at once if one is free and nobody is queued ahead, else None; never waits."""
        self._check_request(nbytes)
        if self._fits(nbytes) and (not self._waiters or self._may_pass_queue(nbytes)):
            return self._take(nbytes)
        return None

    async def acquire(self, nbytes: int = 0, deadline: float | None = None) -> Permit:
        """Wait for a unit (and ``nbytes`` of budget) until ``deadline`` (``time.monotonic()`` seconds).

        Raises:
            Overloaded: the queue is full.
            ProcessingTimeout: the deadline passed while queued.
            ProcessorClosed: the gate was closed before or while waiting.
        """
        permit = self.try_acquire(nbytes)
        if permit is not None:
            return permit
        if self.max_queued is not None and self.queued >= self.max_queued:
            raise Overloaded(
                f"{self.name}: {self.in_use} in flight and {self.queued} queued "
                f"(max_queued={self.max_queued}); try again later"
            )
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Permit] = loop.create_future()
        entry = (fut, nbytes)
        self._waiters.append(entry)
        try:
            if deadline is None:
                return await fut
            async with asyncio.timeout_at(loop.time() + (deadline - time.monotonic())):
                return await fut
        except TimeoutError:
            self._abandon(entry)
            raise ProcessingTimeout(f"{self.name}: deadline passed while queued") from None
        except BaseException:
            self._abandon(entry)
            raise

    def _abandon(self, entry: tuple[asyncio.Future[Permit], int]) -> None:
        fut, _ = entry
        try:
            self._waiters.remove(entry)
        except ValueError:
            pass
        if fut.done() and not fut.cancelled() and fut.exception() is None:
            fut.result().release()  # granted in the same instant we gave up: hand the unit on
        else:
            self._wake()

    def _give_back(self, nbytes: int) -> None:
        """A permit's unit and bytes back (only :meth:`Permit.release` calls this), waking waiters in order."""
        if self.in_use <= 0:  # pragma: no cover - permits release once
            raise RuntimeError(f"{self.name}: a unit returned that was never taken")
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
            fut.set_result(self._take(nbytes))

    def close(self, reason: str) -> None:
        """Refuse new requests and fail every queued waiter with :class:`ProcessorClosed`."""
        self._closed_exc = ProcessorClosed(reason)
        while self._waiters:
            fut, _ = self._waiters.popleft()
            if not fut.done():
                fut.set_exception(ProcessorClosed(reason))
