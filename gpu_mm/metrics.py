"""Latency summaries and per-stage timings."""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import time
from collections.abc import Iterator

__all__ = ["LatencySummary", "StageTimer"]


@dataclasses.dataclass(frozen=True)
class LatencySummary:
    """Summary of recent latencies in seconds (over the last ``window`` samples)."""

    count: int
    mean_s: float
    p50_s: float
    p99_s: float
    max_s: float

    @staticmethod
    def of(samples: list[float] | collections.deque[float], total_count: int | None = None) -> LatencySummary:
        """Summarize ``samples``; ``total_count`` is the number ever recorded (defaults to len)."""
        n = len(samples)
        if n == 0:
            return LatencySummary(total_count or 0, 0.0, 0.0, 0.0, 0.0)
        ordered = sorted(samples)
        return LatencySummary(
            count=n if total_count is None else total_count,
            mean_s=sum(ordered) / n,
            p50_s=_quantile(ordered, 0.50),
            p99_s=_quantile(ordered, 0.99),
            max_s=ordered[-1],
        )


def _quantile(ordered: list[float], q: float) -> float:
    """Linear-interpolated quantile of an already sorted list."""
    pos = q * (len(ordered) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


class Window:
    """The last ``size`` samples of a latency, plus the count ever recorded."""

    def __init__(self, size: int = 2048) -> None:
        self._samples: collections.deque[float] = collections.deque(maxlen=size)
        self.count = 0

    def add(self, seconds: float) -> None:
        self._samples.append(seconds)
        self.count += 1

    def summary(self) -> LatencySummary:
        return LatencySummary.of(self._samples, self.count)


class StageTimer:
    """Wall-clock seconds spent per named stage of one item (``load``, ``decode``, ``resize`` ...)."""

    def __init__(self) -> None:
        self.stages: dict[str, float] = {}

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.stages[name] = self.stages.get(name, 0.0) + time.perf_counter() - t0

    def add(self, name: str, seconds: float) -> None:
        self.stages[name] = self.stages.get(name, 0.0) + seconds
