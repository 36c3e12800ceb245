"""Latency summaries and per-stage timings."""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import time
from collections.abc import Iterator
from typing import Any

__all__ = ["LatencySummary", "PrometheusMetrics", "StageTimer"]


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


class PrometheusMetrics:
    """Prometheus exposition for a front end, with ``prometheus_client``: per-stage and request latency histograms,
    requests by outcome, and gauges/counters read from watched processors' and caches' counts at scrape time
    (summed over those watched). Thread-safe, as prometheus_client's metrics are. A scrape of gpu-mm's ~260 lines
    takes ~1.4 ms on the server's loop; under a hostile load probed every 20 ms, /health's p99 did not measurably
    move against a hand-written writer taking 0.1 ms (``docs/benchmarks.md``), so the library does it.
    """

    BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

    def __init__(self, namespace: str = "gpu_mm") -> None:
        from prometheus_client import CollectorRegistry, Counter, Histogram

        self.ns = namespace
        self.registry = CollectorRegistry(auto_describe=False)
        self._stage = Histogram(f"{namespace}_stage_seconds", "Seconds per preprocessing stage of one item",
                                ["stage"], buckets=self.BUCKETS, registry=self.registry)
        self._request = Histogram(f"{namespace}_request_seconds", "Seconds per preprocessing request",
                                  buckets=self.BUCKETS, registry=self.registry)
        self._results = Counter(f"{namespace}_requests", "Requests by outcome", ["outcome"], registry=self.registry)
        self._clients = Counter(f"{namespace}_client_requests", "Requests by the client's name and outcome",
                                ["client", "outcome"], registry=self.registry)
        self._watched: list[Any] = []
        self._caches: list[Any] = []
        self._leases: list[Any] = []
        self._memory: list[Any] = []
        self.registry.register(_Counts(self))

    def watch(self, processor: Any) -> None:
        """Expose an :class:`~gpu_mm.AsyncMMDataProcessor`'s ``counts()`` at every scrape (summed over the
        processors watched; the loop-hold maximum is the largest)."""
        self._watched.append(processor)

    def watch_cache(self, cache: Any) -> None:
        """Expose a :class:`gpu_mm.FeatureCache`'s statistics at every scrape (summed over the caches watched)."""
        self._caches.append(cache)

    def observe_stages(self, stages: dict[str, float]) -> None:
        for name, seconds in stages.items():
            self._stage.labels(stage=name).observe(seconds)

    def observe_request(self, seconds: float) -> None:
        self._request.observe(seconds)

    def watch_memory(self, preprocessor: Any) -> None:
        """Expose a :class:`gpu_mm.Preprocessor`'s :class:`~gpu_mm.pipeline.MemoryStatement` at every scrape
        (summed over the preprocessors watched), by part (``working``, ``cache``) and device."""
        self._memory.append(preprocessor)

    def watch_leases(self, leases: Any) -> None:
        """Expose a :class:`gpu_mm.leases.HandleLeases`'s statistics at every scrape."""
        self._leases.append(leases)

    def result(self, outcome: str, client: str | None = None) -> None:
        """Count a request's outcome, and its client's (a bounded name: :func:`gpu_mm.serve.client_name`)."""
        self._results.labels(outcome=outcome).inc()
        if client is not None:
            self._clients.labels(client=client, outcome=outcome).inc()

    def exposition(self) -> tuple[bytes, str]:
        """The text exposition and its content type."""
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class _Counts:
    """The collector of the watched processors' and caches' counts, read at each scrape."""

    def __init__(self, metrics: PrometheusMetrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        ns, m = self.metrics.ns, self.metrics
        counts = [p.counts() for p in m._watched]
        for k in ("in_flight", "queued", "abandoned"):
            yield GaugeMetricFamily(f"{ns}_{k}", f"Jobs {k.replace('_', ' ')}",
                                    value=sum(getattr(c, k) for c in counts))
        for k in ("completed", "failed", "timed_out", "rejected", "cancelled"):
            yield CounterMetricFamily(f"{ns}_{k}", f"Calls {k.replace('_', ' ')}",
                                      value=sum(getattr(c, k) for c in counts))
        yield GaugeMetricFamily(f"{ns}_loop_hold_max_seconds", "Longest stretch a processor held the loop",
                                value=max((c.loop_hold_max_s for c in counts), default=0.0))
        if m._leases:
            stats = [lease.statistics() for lease in m._leases]
            yield GaugeMetricFamily(f"{ns}_leases_outstanding", "Feature blocks leased to Unix-socket clients",
                                    value=sum(st.outstanding for st in stats))
            for k, what in (("granted", "granted"), ("released", "released by their client"),
                            ("reclaimed_expired", "reclaimed past the lease time"),
                            ("reclaimed_gone", "reclaimed from ended client processes")):
                yield CounterMetricFamily(f"{ns}_leases_{k}", f"Feature block leases {what}",
                                          value=sum(getattr(st, k) for st in stats))
        if m._memory:
            statements = [p.memory_statement() for p in m._memory]
            budget = GaugeMetricFamily(f"{ns}_memory_budget_bytes", "Bytes the preprocessor may hold at once, by part",
                                       labels=["part", "device"])
            held = GaugeMetricFamily(f"{ns}_memory_held_bytes", "Bytes the preprocessor holds now, by part",
                                     labels=["part", "device"])
            for st in statements:
                budget.add_metric(["working", st.device], st.working_budget_bytes)
                budget.add_metric(["cache", st.cache_device], st.cache_max_bytes)
                held.add_metric(["working", st.device], st.working_bytes)
                held.add_metric(["cache", st.cache_device], st.cache_bytes)
            yield budget
            yield held
            spare = [p.spare_threads for p in m._memory]
            yield GaugeMetricFamily(f"{ns}_decode_threads", "Threads videos' keyframe runs may borrow at most",
                                    value=sum(t.capacity for t in spare))
            yield GaugeMetricFamily(f"{ns}_decode_threads_lent", "Threads lent now to videos' keyframe runs",
                                    value=sum(t.lent for t in spare))
        if m._caches:
            stats = [c.statistics() for c in m._caches]
            for k in ("bytes", "entries"):
                yield GaugeMetricFamily(f"{ns}_cache_{k}", f"Feature cache {k}",
                                        value=sum(getattr(c, k) for c in stats))
            for k in ("hits", "misses", "coalesced", "evictions"):
                yield CounterMetricFamily(f"{ns}_cache_{k}", f"Feature cache {k}",
                                          value=sum(getattr(c, k) for c in stats))
