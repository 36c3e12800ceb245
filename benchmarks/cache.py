"""Repeated media with the feature cache off and on, side by side in one run.

    python benchmarks/cache.py [--quick] [--out benchmarks/results]

1. A replayed trace where half the items repeat earlier ones (720p JPEGs and 360p H.264 clips, one item per
   request, 16 requests in flight): throughput and latency p50/p99 with the cache off and on, and the bytes
   the cache holds.
2. A repeated ~2 MB 720p video: latency of a hit.
3. Ten concurrent requests for the same new video: how many decodes, and the wall time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import pathlib
import random
import sys
import time
from typing import Any

from gpu_mm.bench.machine import machine_info, machine_label
from gpu_mm.media.synth import make_image, make_video
from gpu_mm.media.video import PyAVDecoder
from gpu_mm.models.qwen2_vl import Qwen2VLPreprocessor


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] * 1e3


async def trace(cache_bytes: int, items: list[tuple[str, bytes]], order: list[int]) -> dict[str, Any]:
    pre = Qwen2VLPreprocessor("cpu", cache_bytes=cache_bytes)
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
    return {"video_bytes": len(video), "features_bytes": first.pixel_values_videos.numel() * 4,
            "miss_ms": miss * 1e3, "hit_p50_ms": _pct(lat, 0.5), "hit_max_ms": max(lat) * 1e3, "reps": reps}


async def identical_burst(video: bytes, cache_bytes: int, n: int = 10) -> dict[str, Any]:
    decodes = []
    original = PyAVDecoder.iter_frames_at

    def counted(self, src, info, indices):  # type: ignore[no-untyped-def]
        decodes.append(1)
        yield from original(self, src, info, indices)

    PyAVDecoder.iter_frames_at = counted  # type: ignore[method-assign]
    try:
        pre = Qwen2VLPreprocessor("cpu", cache_bytes=cache_bytes)
        t0 = time.perf_counter()
        await asyncio.gather(*(pre.preprocess(videos=[video]) for _ in range(n)))
        wall = time.perf_counter() - t0
        await pre.aclose()
    finally:
        PyAVDecoder.iter_frames_at = original  # type: ignore[method-assign]
    return {"cache_bytes": cache_bytes, "requests": n, "decodes": len(decodes), "wall_s": wall}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    info = machine_info()
    rng = random.Random(0)
    n_img, n_vid = (6, 2) if args.quick else (12, 4)
    items = [("image", make_image(720, 1280, "JPEG", seed=k)) for k in range(n_img)]
    items += [("video", make_video(100, 360, 640, fps=10, gop=30, seed=k)) for k in range(n_vid)]
    # Each unique item once, plus as many repeats drawn from them: half the requests repeat.
    order = list(range(len(items))) + [rng.randrange(len(items)) for _ in range(len(items))]
    rng.shuffle(order)
    runs = [asyncio.run(trace(b, items, order)) for b in (0, 2**30, 0, 2**30)]
    big = make_video(300, 720, 1280, fps=10, gop=60, bframes=2, bit_rate=550_000)
    res: dict[str, Any] = {
        "trace": runs,
        "hit": asyncio.run(hit_latency(big, 20)),
        "burst": [asyncio.run(identical_burst(make_video(60, 360, 640, seed=9), b)) for b in (0, 2**30)],
    }
    print(f"feature cache -- {machine_label(info)}")
    print(f"\ntrace: {len(order)} requests ({n_img} JPEGs 720p, {n_vid} 360p clips; half repeat), 16 in flight:")
    for r in runs:
        state = "on " if r["cache_bytes"] else "off"
        print(f"  cache {state}: {r['req_per_s']:6.1f} req/s, p50 {r['p50_ms']:7.0f} ms, p99 {r['p99_ms']:7.0f} ms; "
              f"hits {r['hits']}, coalesced {r['coalesced']}, held {r['held_bytes'] / 2**20:.0f} MiB")
    h = res["hit"]
    print(f"\nrepeated {h['video_bytes'] / 2**20:.1f} MB 720p video ({h['features_bytes'] / 2**20:.0f} MiB of "
          f"features): miss {h['miss_ms']:.0f} ms, hit p50 {h['hit_p50_ms']:.3f} ms (max {h['hit_max_ms']:.3f} ms)")
    for b in res["burst"]:
        state = "on " if b["cache_bytes"] else "off"
        print(f"10 concurrent identical new videos, cache {state}: {b['decodes']} decodes, {b['wall_s']:.2f} s")
    if args.out:
        out = pathlib.Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / f"cache_cpu_{info['date'][:10]}.json").write_text(json.dumps({"machine": info, "results": res},
                                                                           indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
