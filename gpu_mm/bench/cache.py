"""The feature cache off and on, side by side (``gpu-mm bench`` and ``benchmarks/cache.py``): a replayed
trace where half the requests repeat, the latency of a hit on a ~2 MB video, and ten concurrent requests
for one new video."""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

from ..media.synth import make_image, make_video
from ..media.video import PyAVDecoder
from ..pipeline.families import Qwen2VLPreprocessor


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] * 1e3


async def trace(cache_bytes: int, items: list[tuple[str, bytes]], order: list[int]) -> dict[str, Any]:
    pre = Qwen2VLPreprocessor("cpu", cache_bytes=cache_bytes)
    await pre.start()  # slot processes up, as a server starts them: the trace measures requests, not a cold start
    gate = asyncio.Semaphore(16)
    lat: list[float] = []

    async def one(k: int) -> None:
        kind, data = items[k]
        async with gate:
            t0 = time.perf_counter()
            await (pre.preprocess(images=[data]) if kind == "image" else pre.preprocess(videos=[data]))
            lat.append(time.perf_counter() - t0)

    t0 = time.perf_counter()
    await asyncio.gather(*(one(k) for k in order))
    wall = time.perf_counter() - t0
    s = pre.cache.statistics()
    await pre.aclose()
    return {"cache_bytes": cache_bytes, "requests": len(order), "wall_s": wall, "req_per_s": len(order) / wall,
            "p50_ms": _pct(lat, 0.5), "p99_ms": _pct(lat, 0.99), "hits": s.hits, "coalesced": s.coalesced,
            "held_bytes": s.bytes}


async def hit_latency(video: bytes, reps: int) -> dict[str, Any]:
    pre = Qwen2VLPreprocessor("cpu")
    await pre.start()  # the miss is the video's computation, not the slot processes' start
    t0 = time.perf_counter()
    first = await pre.preprocess(videos=[video])
    miss = time.perf_counter() - t0
    lat = []
    for _ in range(reps):
        t0 = time.perf_counter()
        feats = await pre.preprocess(videos=[video])
        lat.append(time.perf_counter() - t0)
        assert feats.items[0].cache == "hit"
    await pre.aclose()
    return {"video_bytes": len(video), "features_bytes": _numel(first.pixel_values_videos) * 4,
            "miss_ms": miss * 1e3, "hit_p50_ms": _pct(lat, 0.5), "hit_max_ms": max(lat) * 1e3, "reps": reps}


async def identical_burst(video: bytes, cache_bytes: int, n: int = 10) -> dict[str, Any]:
    decodes = []
    original = PyAVDecoder.iter_frames_at

    def counted(self, src, info, indices):  # type: ignore[no-untyped-def]
        decodes.append(1)
        yield from original(self, src, info, indices)

    PyAVDecoder.iter_frames_at = counted  # type: ignore[method-assign]
    try:
        pre = Qwen2VLPreprocessor("cpu", cache_bytes=cache_bytes, workers="threads")  # decodes counted here
        await pre.start()
        t0 = time.perf_counter()
        await asyncio.gather(*(pre.preprocess(videos=[video]) for _ in range(n)))
        wall = time.perf_counter() - t0
        await pre.aclose()
    finally:
        PyAVDecoder.iter_frames_at = original  # type: ignore[method-assign]
    return {"cache_bytes": cache_bytes, "requests": n, "decodes": len(decodes), "wall_s": wall}


def run(quick: bool) -> dict[str, Any]:
    """All three measurements; the trace's cache-off and cache-on runs alternate."""
    rng = random.Random(0)
    n_img, n_vid = (6, 2) if quick else (12, 4)
    items = [("image", make_image(720, 1280, "JPEG", seed=k)) for k in range(n_img)]
    items += [("video", make_video(100, 360, 640, fps=10, gop=30, seed=k)) for k in range(n_vid)]
    # Each unique item once, plus as many repeats drawn from them: half the requests repeat.
    order = list(range(len(items))) + [rng.randrange(len(items)) for _ in range(len(items))]
    rng.shuffle(order)
    runs = [asyncio.run(trace(b, items, order)) for b in ((0, 2**30) if quick else (0, 2**30, 0, 2**30))]
    big = make_video(300, 720, 1280, fps=10, gop=60, bframes=2, bit_rate=550_000)
    return {
        "trace": runs,
        "trace_items": {"jpeg_720p": n_img, "clip_360p": n_vid},
        "hit": asyncio.run(hit_latency(big, 5 if quick else 20)),
        "burst": [asyncio.run(identical_burst(make_video(60, 360, 640, seed=9), b)) for b in (0, 2**30)],
    }


def summary(res: dict[str, Any]) -> list[str]:
    """The result as printed lines."""
    runs, items = res["trace"], res["trace_items"]
    lines = [f"feature cache: trace of {runs[0]['requests']} requests ({items['jpeg_720p']} 720p JPEGs, "
             f"{items['clip_360p']} 360p clips; half repeat), 16 in flight:"]
    for r in runs:
        state = "on " if r["cache_bytes"] else "off"
        lines.append(f"  cache {state}: {r['req_per_s']:6.1f} req/s, p50 {r['p50_ms']:7.0f} ms, "
                     f"p99 {r['p99_ms']:7.0f} ms; hits {r['hits']}, coalesced {r['coalesced']}, "
                     f"held {r['held_bytes'] / 2**20:.0f} MiB")
    h = res["hit"]
    lines.append(f"  repeated {h['video_bytes'] / 2**20:.1f} MB 720p video ({h['features_bytes'] / 2**20:.0f} MiB "
                 f"of features): miss {h['miss_ms']:.0f} ms, hit p50 {h['hit_p50_ms']:.3f} ms "
                 f"(max {h['hit_max_ms']:.3f} ms)")
    for b in res["burst"]:
        state = "on " if b["cache_bytes"] else "off"
        lines.append(f"  10 concurrent identical new videos, cache {state}: {b['decodes']} decodes, "
                     f"{b['wall_s']:.2f} s")
    return lines


def _numel(t: Any) -> int:
    assert t is not None, "a video request returned no video features"
    return int(t.numel())
