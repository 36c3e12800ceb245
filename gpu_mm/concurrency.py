"""How much runs at once: device slots, express slots and IO threads for a device and core count.

A pure function of the device and the cores this process may use, so that it is tested everywhere and every
component (the preprocessor, ``gpu-mm serve``, ``gpu-mm bench``) reports the same choice.
"""

from __future__ import annotations

import dataclasses
import os

__all__ = ["Concurrency", "choose", "usable_cores"]


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
    return Concurrency(device, n, slots=slots, express_slots=1, io_threads=4, reason=reason)
