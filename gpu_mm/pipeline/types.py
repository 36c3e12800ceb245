"""What a call returns (:mod:`gpu_mm.features`, re-exported here) and the preprocessor's statistics snapshot."""

from __future__ import annotations

import dataclasses

from ..cache import CacheStatistics
from ..concurrency import Concurrency
from ..features import Decoded, Features, ItemReport
from ..slots import SlotPoolStatistics

__all__ = ["Decoded", "Features", "ItemReport", "PreprocessorStatistics"]


@dataclasses.dataclass(frozen=True)
class PreprocessorStatistics:
    """A snapshot of a :class:`Preprocessor`: its device slots (None before the first async call),
    its feature cache, and the computations other calls may join."""

    device: str
    memory_budget_bytes: int
    slots: SlotPoolStatistics | None
    cache: CacheStatistics
    computations_in_flight: int
    concurrency: Concurrency | None = None
    workers: str = "threads"
    """Where slot jobs run: ``"threads"`` or ``"processes"`` (see :class:`Preprocessor`)."""
    process_starts: int = 0
    """Slot processes started so far (more than the slots: children that died were replaced)."""
    process_pids: tuple[int, ...] = ()
    """The slot processes running now (e.g. to watch their memory)."""
    process_stops: int = 0
    """Slot jobs stopped (their process killed) ``stop_abandoned_after_s`` after their callers gave up."""
    process_blocks: int = 0
    """Shared-memory blocks created so far for slot processes' rows (a block is reused once the features in it
    are dropped, so this stops growing under a steady load)."""
