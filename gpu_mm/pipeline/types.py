"""What a call returns (:mod:`gpu_mm.features`, re-exported here) and the preprocessor's statistics snapshot."""

from __future__ import annotations

import dataclasses

from ..cache import CacheStatistics
from ..concurrency import Concurrency
from ..features import Decoded, Features, ItemReport
from ..slots import SlotPoolStatistics

__all__ = ["Decoded", "Features", "ItemReport", "MemoryStatement", "PreprocessorStatistics"]


@dataclasses.dataclass(frozen=True)
class MemoryStatement:
    """What a preprocessor may hold at once and what it holds now, in bytes, and where. Its working memory (the
    items running: decoded frames, intermediates, outputs, as their plans state them) is bounded by
    ``working_budget_bytes`` (items beyond it queue; one that could never fit is refused with
    :class:`gpu_mm.LimitExceeded`), its feature cache by ``cache_max_bytes`` (least recently used entries go); the
    two together are ``budget_bytes``. Not counted: the features a call returned (the caller's), an output pool's
    blocks (the pool's ``max_blocks`` bounds them) and the decoders' own state (a DALI pipeline or NVDEC session per
    slot). Everything counted here is released by ``close()``."""

    device: str
    """Where the preprocessor computes (its working memory is there, and on the host for CPU decoders)."""
    budget_bytes: int
    working_budget_bytes: int
    working_bytes: int
    """Planned working memory of the slot jobs running now."""
    cache_max_bytes: int
    cache_bytes: int
    cache_device: str
    """Where the cache's features live: the preprocessor's device when it returns features there, else ``cpu``."""


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
    memory: MemoryStatement | None = None
    """What it may hold and holds now (:class:`MemoryStatement`)."""
    decode_threads_lent: int = 0
    """Threads lent now to videos' keyframe runs (of ``concurrency.spare_threads``)."""
