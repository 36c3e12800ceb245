"""How much runs at once: device slots, express slots and IO threads for a device and core count.

A pure function of the device and the cores this process may use, so that it is tested everywhere and every
component (the preprocessor, ``gpu-mm serve``, ``gpu-mm bench``) reports the same choice.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import threading
from collections.abc import Iterator

__all__ = ["Concurrency", "SpareThreads", "choose", "usable_cores"]


@dataclasses.dataclass(frozen=True)
class Concurrency:
    """What :class:`gpu_mm.Preprocessor` runs at once when not told."""

    device: str
    cores: int
    slots: int
    """Device slots: items (groups) in their pixel work at once."""
    express_slots: int
    """Extra slots only for cheap items, so that an image never waits behind a long video."""
    io_threads: int
    """Threads that plan items (probe, read headers) and assemble results, off the caller's loop."""
    reason: str
    spare_threads: int = 0
    """The most threads lent at once to videos being decoded, so that a video's keyframe runs decode in parallel
    (:mod:`gpu_mm.pipeline.split_decode`): by default every core but one, and at run time only the cores the calls
    in flight and the running slot jobs leave (:meth:`SpareThreads.of_cores`)."""

    def as_dict(self) -> dict[str, object]:
        return dataclasses.asdict(self)


def usable_cores() -> int:
    """The cores this process may run on (its affinity mask, e.g. a container's cpuset), not the machine's."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def choose(device: str, cores: int | None = None) -> Concurrency:
    """The default concurrency for ``device`` (``"cpu"``, ``"cuda"``, ``"cuda:N"``) on ``cores`` usable cores
    (default: :func:`usable_cores`)."""
    n = usable_cores() if cores is None else cores
    if n < 1:
        raise ValueError(f"cores must be >= 1, got {n!r}")
    if device.startswith("cuda"):
        slots, reason = 1, ("CUDA: one stream slot (SGLang measured one GPU worker best) and an express slot for "
                            "cheap items")
    elif n == 1:
        slots, reason = 1, "CPU, 1 core: one slot and an express slot (measured fastest; more slots only add loop lag)"
    elif n <= 3:
        slots, reason = 2, (f"CPU, {n} cores: two slots and an express slot (measured on 2 cores: 15-30% faster than "
                            "one slot on videos and mixed loads; a video's decode is one thread)")
    else:
        slots = min(8, n // 2)
        reason = (f"CPU, {n} cores: {slots} slots (cores / 2, at most 8) and an express slot; not measured on this "
                  "many cores: extrapolated from 2, where parallel decodes paid and torch's ops already share every "
                  "core (benchmarks/cpu_concurrency.py measures it)")
    return Concurrency(device, n, slots=slots, express_slots=1, io_threads=4, reason=reason, spare_threads=n - 1)


class SpareThreads:
    """Threads a preprocessor may run beyond its slot jobs' own, lent to one slot job at a time: taken without
    waiting (a job gets what is free now, possibly nothing) and given back when the job ends. Thread-safe.

    Two kinds: a fixed number (``SpareThreads(n)``: at most ``n`` lent), or the cores that the work in flight leaves
    (:meth:`of_cores`): at most ``cores - 1`` lent, and never more than ``cores`` minus the work in flight minus the
    threads lent. The work in flight is the larger of the calls in flight (each counted inside :meth:`call`, from
    its start: planning, waiting for a slot, its jobs) and the slot jobs running (inside :meth:`job`: a job whose
    callers gave up still runs). So a lone video borrows the cores of idle slots, and a burst of calls, or a machine
    whose slots are all busy, lends nothing."""

    def __init__(self, capacity: int, cores: int | None = None) -> None:
        if capacity < 0:
            raise ValueError(f"capacity must be >= 0, got {capacity!r}")
        if cores is not None and cores < 1:
            raise ValueError(f"cores must be >= 1 or None, got {cores!r}")
        self.capacity = capacity
        self.cores = cores
        """When set, lending is also bounded by the cores the work in flight leaves."""
        self._free = capacity
        self._running = {"jobs": 0, "calls": 0}
        self._lock = threading.Lock()

    @classmethod
    def of_cores(cls, cores: int) -> SpareThreads:
        """Threads from the cores the work in flight leaves (of ``cores``): the default lending."""
        return cls(max(0, cores - 1), cores)

    def __getstate__(self) -> dict[str, int | None]:
        # A copy (deepcopy, pickle: a preprocessor's copy) lends threads of its own, none lent yet.
        return {"capacity": self.capacity, "cores": self.cores}

    def __setstate__(self, state: dict[str, int | None]) -> None:
        capacity = state["capacity"]
        assert capacity is not None
        self.__init__(capacity, state.get("cores"))  # type: ignore[misc]

    def job(self) -> contextlib.AbstractContextManager[None]:
        """Count a slot job as running (on a core of its own) while inside."""
        return self._counted("jobs")

    def call(self) -> contextlib.AbstractContextManager[None]:
        """Count a call as in flight (work that will want a core) while inside."""
        return self._counted("calls")

    @contextlib.contextmanager
    def _counted(self, kind: str) -> Iterator[None]:
        with self._lock:
            self._running[kind] += 1
        try:
            yield
        finally:
            with self._lock:
                self._running[kind] -= 1

    @property
    def jobs(self) -> int:
        """Slot jobs running now (inside :meth:`job`)."""
        return self._running["jobs"]

    @property
    def calls(self) -> int:
        """Calls in flight now (inside :meth:`call`)."""
        return self._running["calls"]

    @property
    def lent(self) -> int:
        """Threads lent now."""
        return self.capacity - self._free

    def take(self, wanted: int) -> int:
        """Up to ``wanted`` threads, as many as are free (0 when none are); with ``cores``, only as many as the work
        in flight (the taker's own counted, when it is inside :meth:`call` or :meth:`job`) and the threads lent
        leave."""
        with self._lock:
            free = self._free
            if self.cores is not None:
                free = min(free, self.cores - max(self._running.values()) - self.lent)
            n = max(0, min(wanted, free))
            self._free -= n
            return n

    def give(self, n: int) -> None:
        """Return ``n`` threads that :meth:`take` lent."""
        with self._lock:
            if n < 0 or self._free + n > self.capacity:
                raise ValueError(f"giving back {n} threads, {self.lent} are lent")
            self._free += n
