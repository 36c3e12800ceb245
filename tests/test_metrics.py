"""gpu_mm.metrics.PrometheusMetrics writes the Prometheus text format itself (a scrape runs on the server's event
loop). It is held here to ``prometheus_client``: the same metrics kept by prometheus_client's own Histogram and
Counter and a collector of the processor's statistics render, through ``generate_latest``, the same text byte for
byte, the ``_created`` timestamps aside (each library stamps its own clock reading)."""

from __future__ import annotations

import asyncio
import math
import re
import threading

import pytest
import torch

from gpu_mm import AsyncMMDataProcessor, FeatureCache, Overloaded
from gpu_mm.metrics import PrometheusMetrics, _go_float

prometheus_client = pytest.importorskip("prometheus_client")
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402


class _Reference:
    """What PrometheusMetrics was before it wrote the format itself: prometheus_client's objects in a registry."""

    def __init__(self, processor, cache) -> None:
        from prometheus_client import CollectorRegistry, Counter, Histogram

        self.registry = CollectorRegistry()
        buckets = PrometheusMetrics.BUCKETS
        self.stage = Histogram("gpu_mm_stage_seconds", "Seconds per preprocessing stage of one item", ["stage"],
                               buckets=buckets, registry=self.registry)
        self.request = Histogram("gpu_mm_request_seconds", "Seconds per preprocessing request", buckets=buckets,
                                 registry=self.registry)
        self.results = Counter("gpu_mm_requests", "Requests by outcome", ["outcome"], registry=self.registry)
        self.registry.register(_StatsCollector(processor, cache))

    def text(self) -> str:
        return prometheus_client.generate_latest(self.registry).decode()


class _StatsCollector:
    def __init__(self, processor, cache) -> None:
        self.processor, self.cache = processor, cache

    def describe(self):
        return []

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        s = self.processor.statistics()
        for k in ("in_flight", "queued", "abandoned"):
            yield GaugeMetricFamily(f"gpu_mm_{k}", f"Jobs {k.replace('_', ' ')}", value=getattr(s, k))
        for k in ("completed", "failed", "timed_out", "rejected", "cancelled"):
            yield CounterMetricFamily(f"gpu_mm_{k}", f"Calls {k.replace('_', ' ')}", value=getattr(s, k))
        yield GaugeMetricFamily("gpu_mm_loop_hold_max_seconds", "Longest stretch a processor held the loop",
                                value=s.loop_hold_max_s)
        c = self.cache.statistics()
        for k in ("bytes", "entries"):
            yield GaugeMetricFamily(f"gpu_mm_cache_{k}", f"Feature cache {k}", value=getattr(c, k))
        for k in ("hits", "misses", "coalesced", "evictions"):
            yield CounterMetricFamily(f"gpu_mm_cache_{k}", f"Feature cache {k}", value=getattr(c, k))


def _without_created(text: str) -> str:
    return re.sub(r"^(\S+_created(\{[^}]*\})?) \S+$", r"\1 T", text, flags=re.M)


class _Slow:
    def __init__(self) -> None:
        self.release = asyncio.Event()

    async def process_mm_data_async(self, **kw):
        if kw.get("fail"):
            raise ValueError("boom")
        await self.release.wait()
        return "done"


async def _busy_processor() -> tuple[AsyncMMDataProcessor, _Slow, list[asyncio.Task]]:
    """A processor with something in every counter and gauge: completed, failed, rejected, one in flight, one
    queued."""
    proc = _Slow()
    p = AsyncMMDataProcessor(proc, max_concurrent_calls=1, max_queued=1, timeout_s=30)
    proc.release.set()
    assert await p.process() == "done"
    with pytest.raises(ValueError):
        await p.process(fail=True)
    proc.release.clear()
    held = [asyncio.create_task(p.process()) for _ in range(2)]
    await asyncio.sleep(0.01)
    with pytest.raises(Overloaded):
        await p.process()
    return p, proc, held


async def test_renders_what_prometheus_client_renders_for_the_same_metrics():
    p, proc, held = await _busy_processor()
    cache = FeatureCache(max_bytes=1000)
    cache.put(b"k" * 32, torch.zeros(10, dtype=torch.uint8), None)
    cache.get(b"k" * 32), cache.get(b"x" * 32)
    cache.coalesced()
    ours = PrometheusMetrics()
    ours.watch(p)
    ours.watch_cache(cache)
    ref = _Reference(p, cache)
    # Observations on and between bucket bounds, past the last, zero, negative, infinite, NaN, a label value
    # that needs escaping, and a labelled metric seen once only.
    stages = [{"decode": 0.005, "resize": 0.0049}, {"decode": 30.0, "resize": 31.0},
              {"decode": 0.0, 'odd "name"\\\n': -1.0}, {"decode": math.inf}, {"resize": 0.25}]
    for observed in stages:
        ours.observe_stages(observed)
        for name, seconds in observed.items():
            ref.stage.labels(stage=name).observe(seconds)
    for seconds in (0.001, 0.0011, 2.5, 12.0, 1e-9):
        ours.observe_request(seconds)
        ref.request.observe(seconds)
    for outcome in ("ok", "ok", "bad_input", "timeout", "ok"):
        ours.result(outcome)
        ref.results.labels(outcome=outcome).inc()
    try:
        body, ctype = ours.exposition()
        assert _without_created(body.decode()) == _without_created(ref.text())
        assert ctype.startswith("text/plain; version=0.0.4")
        families = {f.name: f for f in text_string_to_metric_families(body.decode())}
        assert {s.labels["outcome"]: s.value for s in families["gpu_mm_requests"].samples
                if s.name == "gpu_mm_requests_total"} == {"ok": 3.0, "bad_input": 1.0, "timeout": 1.0}
        assert [s.value for s in families["gpu_mm_in_flight"].samples] == [1.0]
        assert [s.value for s in families["gpu_mm_queued"].samples] == [1.0]
        assert [s.value for s in families["gpu_mm_cache_hits"].samples] == [1.0]
    finally:
        proc.release.set()
        await asyncio.gather(*held)
        await p.aclose()


def test_nan_is_counted_in_no_bucket_as_prometheus_client_does():
    ours = PrometheusMetrics()
    from prometheus_client import CollectorRegistry, Histogram

    registry = CollectorRegistry()
    ref = Histogram("gpu_mm_request_seconds", "Seconds per preprocessing request",
                    buckets=PrometheusMetrics.BUCKETS, registry=registry)
    for v in (math.nan, 0.5):
        ours.observe_request(v)
        ref.observe(v)
    theirs = prometheus_client.generate_latest(registry).decode()
    text = ours.exposition()[0].decode()
    assert 'gpu_mm_request_seconds_bucket{le="+Inf"} 1.0' in text and "gpu_mm_request_seconds_sum NaN" in text
    request_part = text[text.index("# HELP gpu_mm_request_seconds"): text.index("# HELP gpu_mm_requests_total")]
    assert _without_created(request_part) == _without_created(theirs)


def test_numbers_are_written_as_prometheus_client_writes_them():
    from prometheus_client.utils import floatToGoString

    values = [0, 1, 1.5, 999999, 1e6, 1234567, 12345678.9, 1e16, 1.7e9 + 0.123, 2**53, 1e-9, -3.25, -1e7,
              math.inf, -math.inf, 1e300]
    assert [_go_float(v) for v in values] == [floatToGoString(v) for v in values]
    assert _go_float(math.nan) == floatToGoString(math.nan) == "NaN"


async def test_counts_are_summed_over_processors_watched():
    first, p1, held1 = await _busy_processor()
    second, p2, held2 = await _busy_processor()
    m = PrometheusMetrics()
    m.watch(first)
    m.watch(second)
    try:
        text = m.exposition()[0].decode()
        for line in ("gpu_mm_in_flight 2.0", "gpu_mm_queued 2.0", "gpu_mm_completed_total 2.0",
                     "gpu_mm_failed_total 2.0", "gpu_mm_rejected_total 2.0"):
            assert re.search(f"^{re.escape(line)}$", text, re.M), line
        assert "gpu_mm_cache_" not in text  # no cache watched, no cache families
    finally:
        for proc in (p1, p2):
            proc.release.set()
        await asyncio.gather(*held1, *held2)
        await first.aclose()
        await second.aclose()


def test_observations_from_threads_are_all_counted():
    m = PrometheusMetrics()
    barrier = threading.Barrier(4)

    def observe() -> None:
        barrier.wait()
        for _ in range(2000):
            m.observe_stages({"decode": 0.01})
            m.result("ok")

    threads = [threading.Thread(target=observe) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    text = m.exposition()[0].decode()
    assert 'gpu_mm_stage_seconds_count{stage="decode"} 8000.0' in text
    assert 'gpu_mm_requests_total{outcome="ok"} 8000.0' in text
