"""Slot threads or slot processes: the caller's event-loop lag and the throughput under 64 concurrent 1080p JPEG
requests, each design with its slots on the normal policy and on ``SCHED_IDLE``, side by side in one run.

    python benchmarks/slot_processes.py [--rounds 5] [--requests 64] [--out benchmarks/results]

Each design gets its own ``AsyncMMDataProcessor`` over a ``Qwen2VLPreprocessor`` (CPU, cache off, default slots),
started and warmed with two full bursts before any is measured; then the bursts run interleaved, ``--rounds``
times, while a task asks to wake every 1 ms (its lateness is the loop lag). ``SCHED_IDLE`` needs root (or
``CAP_SYS_NICE``): elsewhere the ``idle`` rows run on the normal policy and say so.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import sys
import time
from typing import Any

from gpu_mm import AsyncMMDataProcessor, Qwen2VLPreprocessor
from gpu_mm.bench.machine import machine_info, machine_label, write_result
from gpu_mm.media.synth import make_image
from gpu_mm.runtime import freeze_gc, tune_allocator
from gpu_mm.sched import _idle_is_reversible

DESIGNS = {
    "threads": ("threads", False),
    "threads_idle": ("threads", True),
    "processes": ("processes", False),
    "processes_idle": ("processes", True),
}


async def burst(proc: AsyncMMDataProcessor, image: bytes, n: int) -> dict[str, float]:
    lags: list[float] = []
    done = asyncio.Event()

    async def ticker() -> None:
        while not done.is_set():
            t0 = time.perf_counter()
            await asyncio.sleep(0.001)
            lags.append(max(0.0, time.perf_counter() - t0 - 0.001))

    tick = asyncio.ensure_future(ticker())
    await asyncio.sleep(0.02)
    t0 = time.perf_counter()
    await asyncio.gather(*(proc.process(image_data=[image]) for _ in range(n)))
    wall = time.perf_counter() - t0
    done.set()
    await tick
    q = statistics.quantiles(lags, n=100)
    return {"lag_p50_ms": q[49] * 1e3, "lag_p99_ms": q[98] * 1e3, "lag_max_ms": max(lags) * 1e3,
            "images_per_s": n / wall, "wall_s": wall}


async def run(rounds: int, n: int) -> dict[str, Any]:
    image = make_image(1080, 1920)
    procs: dict[str, AsyncMMDataProcessor] = {}
    for name, (workers, idle) in DESIGNS.items():
        pre = Qwen2VLPreprocessor("cpu", cache_bytes=0, workers=workers, idle_workers=idle)
        await pre.start()
        procs[name] = AsyncMMDataProcessor(pre, max_concurrent_calls=n, max_queued=4 * n)
        for _ in range(2):  # warm: first calls, every output block made and mapped
            await asyncio.gather(*(procs[name].process(image_data=[image]) for _ in range(n)))
    gc.collect()
    freeze_gc()
    out: dict[str, list[dict[str, float]]] = {name: [] for name in procs}
    for r in range(rounds):
        for name, proc in procs.items():
            res = await burst(proc, image, n)
            out[name].append(res)
            print(f"  round {r} {name:15s} lag p99 {res['lag_p99_ms']:5.2f} ms  max {res['lag_max_ms']:6.2f} ms  "
                  f"{res['images_per_s']:6.1f} images/s", flush=True)
    for proc in procs.values():
        await proc.aclose()
        await proc.mm_processor.aclose()
    return {"requests": n, "rounds": rounds, "idle_policy_available": _idle_is_reversible(), "designs": out}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--requests", type=int, default=64)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    info = machine_info()
    print(f"machine: {machine_label(info)}")
    tune_allocator()  # as gpu-mm serve and gpu-mm bench do
    res = asyncio.run(run(args.rounds, args.requests))
    if not res["idle_policy_available"]:
        print("note: SCHED_IDLE is not available here (needs root or CAP_SYS_NICE): the idle rows ran as normal")
    print(f"\nmedians over {args.rounds} rounds ({args.requests} concurrent 1080p JPEG requests):")
    for name, rows in res["designs"].items():
        p99 = sorted(r["lag_p99_ms"] for r in rows)
        print(f"  {name:15s} lag p99 {statistics.median(p99):5.2f} ms (range {p99[0]:.2f}-{p99[-1]:.2f})  max "
              f"{statistics.median(r['lag_max_ms'] for r in rows):6.2f} ms  "
              f"{statistics.median(r['images_per_s'] for r in rows):6.1f} images/s")
    if args.out:
        print(f"wrote {write_result(args.out, 'slot_processes_cpu', info, res)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
