"""What the engine plug-in benchmarks (SGLang, vLLM) share: their media, their arguments, the latency and
loop measurements of an engine's own path against gpu-mm's plug-in, and the printed table."""

from __future__ import annotations

import argparse
import functools
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from .loop_lag import measure
from .throughput import speedup, time_side_by_side_async


def parser(doc: str | None) -> argparse.ArgumentParser:
    """The arguments every plug-in benchmark takes (a script adds its own)."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--seconds", type=int, default=30)
    ap.add_argument("--out", default=None)
    return ap


def media(seconds: int) -> tuple[bytes, bytes]:
    """A ~2 MB (at 30 s) 1280x720 H.264 clip with a realistic GOP and B-frames, and a 1920x1080 JPEG, made in
    memory; their sizes are printed."""
    from ..media.synth import make_image, make_video

    video = make_video(seconds * 30, 720, 1280, fps=30, gop=60, bframes=2, bit_rate=550_000)
    image = make_image(1080, 1920, "JPEG")
    print(f"media: {len(video) / 1e6:.1f} MB {seconds} s 720p H.264, {len(image) / 1e6:.2f} MB 1080p JPEG")
    return video, image


async def compare(sides: Mapping[str, Callable[..., Awaitable[Any]]], baseline: str, video_req: dict[str, Any],
                  image_req: dict[str, Any], *, reps: int, concurrency: int, progress: Any) -> dict[str, Any]:
    """``sides`` (name -> a request's coroutine function, called with a request's keywords), side by side: p50
    latency of a video and of an image request one at a time (interleaved), then ``concurrency`` video requests
    in flight through each while the caller's loop is probed."""
    def calls(request: dict[str, Any]) -> dict[str, Callable[[], Awaitable[Any]]]:
        return {name: functools.partial(f, **request) for name, f in sides.items()}

    out: dict[str, Any] = {}
    progress(f"latency, one video request at a time ({reps} interleaved repetitions) ...")
    out["video_latency"] = speedup(await time_side_by_side_async(calls(video_req), reps), baseline)
    progress(f"latency, one image request at a time ({reps * 3} interleaved repetitions) ...")
    out["image_latency"] = speedup(await time_side_by_side_async(calls(image_req), reps * 3), baseline)
    out["concurrent_video"] = {}
    for name, one in calls(video_req).items():
        progress(f"{concurrency} video requests in flight at once through {name} ...")
        out["concurrent_video"][name] = await measure(functools.partial(_ignore_index, one), concurrency)
    return out


async def _ignore_index(call: Callable[[], Awaitable[Any]], _: int) -> Any:
    return await call()


def print_comparison(res: dict[str, Any], baseline: str, label: str, rows: dict[str, str], concurrency: int) -> None:
    """A plug-in benchmark's figures: p50 per request kind (``rows``: result key -> label), then the caller's
    loop while ``concurrency`` video requests run through each side."""
    for key, row in rows.items():
        r = res[key]
        print(f"  {row:11s} {label} {r[baseline]['p50_ms']:8.1f} ms   gpu-mm {r['gpu_mm']['p50_ms']:8.1f} ms   "
              f"({r['speedup_p50']:.2f}x)")
    c = res["concurrent_video"]
    print(f"\n{concurrency} video requests in flight, caller's event loop (ms):")
    print(f"  {'':8s} {'lag p99':>9s} {'lag max':>9s} {'probe p99':>10s} {'wall s':>8s}")
    for name in (baseline, "gpu_mm"):
        r = c[name]
        print(f"  {name:8s} {r['loop_lag']['p99_ms']:9.1f} {r['loop_lag']['max_ms']:9.1f} "
              f"{r['health_probe']['p99_ms']:10.1f} {r['wall_s']:8.2f}  errors {r['errors'] or 'none'}")
