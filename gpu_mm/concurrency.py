"""How much runs at once: device slots, express slots and IO threads for a device and core count.

A pure function of the device and the cores this process may use, so that it is tested everywhere and every
component (the preprocessor, ``gpu-mm serve``, ``gpu-mm bench``) reports the same choice.
"""

from __future__ import annotations

import dataclasses
import os
import threading

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
    """Cores no slot uses (cores - slots - express slots), lent to videos being decoded: a video's keyframe runs
    then decode in parallel (:mod:`gpu_mm.pipeline.split_decode`)."""

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
    return Concurrency(device, n, slots=slots, express_slots=1, io_threads=4, reason=reason,
                       spare_threads=spare_threads(n, slots, 1))


def spare_threads(cores: int, slots: int, express_slots: int) -> int:
    """The cores that ``slots + express_slots`` slots leave (at least 0)."""
    return max(0, cores - slots - express_slots)


class SpareThreads:
    """Threads a preprocessor may run beyond its slots' own, lent to one slot job at a time: taken without waiting
    (a job gets what is free now, possibly nothing) and given back when the job ends. Thread-safe."""

    def __init__(self, capacity: int) -> None:
        if capacity < 0:
            raise ValueError(f"capacity must be >= 0, got {capacity!r}")
        self.capacity = capacity
        self._free = capacity
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, int]:
        # A copy (deepcopy, pickle: a preprocessor's copy) lends threads of its own, none lent yet.
        return {"capacity": self.capacity}

    def __setstate__(self, state: dict[str, int]) -> None:
        self.__init__(state["capacity"])  # type: ignore[misc]

    @property
    def lent(self) -> int:
        """Threads lent now."""
        return self.capacity - self._free

    def take(self, wanted: int) -> int:
        """Up to ``wanted`` threads, as many as are free (0 when none are)."""
        with self._lock:
            n = max(0, min(wanted, self._free))
            self._free -= n
            return n

    def give(self, n: int) -> None:
        """Return ``n`` threads that :meth:`take` lent."""
        with self._lock:
            if n < 0 or self._free + n > self.capacity:
                raise ValueError(f"giving back {n} threads, {self.lent} are lent")
            self._free += n
