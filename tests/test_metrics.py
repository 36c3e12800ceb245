"""gpu_mm.metrics.PrometheusMetrics: the server's /metrics through prometheus_client, read back with
prometheus_client's own parser: every family and value a scrape must carry, counts summed over the processors and
caches watched, observations from several threads all counted."""

from __future__ import annotations

import asyncio
import math
import re
import threading

import pytest
import torch

from gpu_mm import AsyncMMDataProcessor, FeatureCache, Overloaded
from gpu_mm.metrics import PrometheusMetrics

prometheus_client = pytest.importorskip("prometheus_client")
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402


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


async def test_a_scrape_carries_every_metric_with_its_value():
    p, proc, held = await _busy_processor()
    cache = FeatureCache(max_bytes=1000)
    cache.put(b"k" * 32, torch.zeros(10, dtype=torch.uint8), None)
    cache.get(b"k" * 32), cache.get(b"x" * 32)
    cache.coalesced()
    ours = PrometheusMetrics()
    ours.watch(p)
    ours.watch_cache(cache)
    # Observations on and between bucket bounds, past the last, zero, negative, infinite, and a label value that
    # needs escaping.
    for observed in [{"decode": 0.005, "resize": 0.0049}, {"decode": 30.0, "resize": 31.0},
                     {"decode": 0.0, 'odd "name"\\\n': -1.0}, {"decode": math.inf}, {"resize": 0.25}]:
        ours.observe_stages(observed)
    for seconds in (0.001, 0.0011, 2.5, 12.0, 1e-9):
        ours.observe_request(seconds)
    for outcome in ("ok", "ok", "bad_input", "timeout", "ok"):
        ours.result(outcome)
    try:
        body, ctype = ours.exposition()
        assert ctype.startswith("text/plain; version=")
        families = {f.name: f for f in text_string_to_metric_families(body.decode())}

        def samples(family, name):
            return {tuple(sorted(s.labels.items())): s.value for s in families[family].samples if s.name == name}

        assert samples("gpu_mm_requests", "gpu_mm_requests_total") == {
            (("outcome", "ok"),): 3.0, (("outcome", "bad_input"),): 1.0, (("outcome", "timeout"),): 1.0}
        stage_counts = samples("gpu_mm_stage_seconds", "gpu_mm_stage_seconds_count")
        assert stage_counts == {(("stage", "decode"),): 4.0, (("stage", "resize"),): 3.0,
                                (("stage", 'odd "name"\\\n'),): 1.0}
        decode_buckets = {dict(k)["le"]: v for k, v in samples("gpu_mm_stage_seconds", "gpu_mm_stage_seconds_bucket")
                          .items() if dict(k)["stage"] == "decode"}
        assert decode_buckets["0.005"] == 2.0 and decode_buckets["30.0"] == 3.0 and decode_buckets["+Inf"] == 4.0
        request = samples("gpu_mm_request_seconds", "gpu_mm_request_seconds_bucket")
        assert request[(("le", "0.001"),)] == 2.0 and request[(("le", "+Inf"),)] == 5.0
        for family, name, value in (("gpu_mm_in_flight", "gpu_mm_in_flight", 1.0),
                                    ("gpu_mm_queued", "gpu_mm_queued", 1.0),
                                    ("gpu_mm_completed", "gpu_mm_completed_total", 1.0),
                                    ("gpu_mm_failed", "gpu_mm_failed_total", 1.0),
                                    ("gpu_mm_rejected", "gpu_mm_rejected_total", 1.0),
                                    ("gpu_mm_cache_hits", "gpu_mm_cache_hits_total", 1.0),
                                    ("gpu_mm_cache_misses", "gpu_mm_cache_misses_total", 1.0),
                                    ("gpu_mm_cache_coalesced", "gpu_mm_cache_coalesced_total", 1.0),
                                    ("gpu_mm_cache_entries", "gpu_mm_cache_entries", 1.0)):
            assert samples(family, name) == {(): value}, family
    finally:
        proc.release.set()
        await asyncio.gather(*held)
        await p.aclose()


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
