"""Is it the GIL or the cores? An event loop's lag while the same PyAV decodes run in threads of its process,
in worker processes, or not at all.

    python benchmarks/experiments/gil_vs_cores.py [--seconds 8] [--rounds 2] [--workers 2] [--out benchmarks/results]

The work is gpu-mm's own video decode of the 2.1 MB 720p clip's 60 planned frames (PyAV, whose per-frame
Python loop holds the GIL). Threads share the loop's GIL and its cores; processes share only the cores. If the
loop's lag with threads is far above its lag with processes at the same throughput, the GIL is what delays it
and worker processes are the fix; if both are alike, the cores are, and moving decode out of the process
would not help. Modes run interleaved, each for ``--seconds``, ``--rounds`` times; the loop ticks every 1 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import multiprocessing
import statistics
import sys
import threading
import time
from typing import Any

from gpu_mm.bench.machine import machine_info, machine_label, write_result
from gpu_mm.media.sources import load_source
from gpu_mm.media.synth import make_video
from gpu_mm.media.video import get_video_decoder, probe_video

_CLIP: bytes = b""


def _init(clip: bytes) -> None:
    global _CLIP
    _CLIP = clip


def decode_once(_: int = 0) -> int:
    """The 60 frames gpu-mm plans for the clip (2 fps of 30), decoded; returns the frames' bytes."""
    src = load_source(_CLIP, "video")
    info = probe_video(src)
    indices = [round(i * (info.num_frames - 1) / 59) for i in range(60)]
    return int(get_video_decoder("pyav").get_frames_at(src, info, indices).numel())


async def _window(mode: str, pool: Any, seconds: float, workers: int) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    lags: list[float] = []
    done = 0
    stop = threading.Event()

    def feeder() -> None:
        nonlocal done
        if pool is None:
            return
        pending = {pool.submit(decode_once) for _ in range(workers)}
        while pending:
            finished, pending = concurrent.futures.wait(pending, return_when=concurrent.futures.FIRST_COMPLETED)
            for f in finished:
                f.result()
                done += 1
                if not stop.is_set():
                    pending.add(pool.submit(decode_once))

    feeding = threading.Thread(target=feeder, daemon=True)
    feeding.start()
    t_end = time.perf_counter() + seconds
    while time.perf_counter() < t_end:
        t0 = time.perf_counter()
        await asyncio.sleep(0.001)
        lags.append(max(0.0, time.perf_counter() - t0 - 0.001))
    stop.set()
    await loop.run_in_executor(None, feeding.join)
    q = statistics.quantiles(lags, n=100)
    return {"mode": mode, "decodes_per_s": done / seconds, "lag_p50_ms": statistics.median(lags) * 1e3,
            "lag_p99_ms": q[98] * 1e3, "lag_max_ms": max(lags) * 1e3, "ticks": len(lags)}


async def run(clip: bytes, seconds: float, rounds: int, workers: int) -> dict[str, Any]:
    _init(clip)
    threads = concurrent.futures.ThreadPoolExecutor(workers)
    procs = concurrent.futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                                   initializer=_init, initargs=(clip,))
    # Warm both pools (process start-up, imports) outside the windows.
    list(threads.map(decode_once, range(workers)))
    list(procs.map(decode_once, range(workers)))
    out: list[dict[str, Any]] = []
    for r in range(rounds):
        for mode, pool in (("idle", None), ("threads", threads), ("processes", procs)):
            res = await _window(mode, pool, seconds, workers)
            res["round"] = r
            out.append(res)
            print(f"  round {r} {mode:9s} lag p50 {res['lag_p50_ms']:6.2f} ms  p99 {res['lag_p99_ms']:6.2f} ms  "
                  f"max {res['lag_max_ms']:7.2f} ms  {res['decodes_per_s']:.2f} decodes/s", flush=True)
    threads.shutdown()
    procs.shutdown()
    return {"workers": workers, "seconds": seconds, "windows": out}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=8)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    info = machine_info()
    print(f"machine: {machine_label(info)}")
    clip = make_video(900, 720, 1280, fps=30, gop=60, bframes=2, bit_rate=550_000)
    res = asyncio.run(run(clip, args.seconds, args.rounds, args.workers))
    by_mode: dict[str, list[dict[str, Any]]] = {}
    for w in res["windows"]:
        by_mode.setdefault(w["mode"], []).append(w)
    print("\nmedians over rounds:")
    for mode, ws in by_mode.items():
        print(f"  {mode:9s} lag p99 {statistics.median(w['lag_p99_ms'] for w in ws):6.2f} ms  max "
              f"{statistics.median(w['lag_max_ms'] for w in ws):7.2f} ms  "
              f"{statistics.median(w['decodes_per_s'] for w in ws):.2f} decodes/s")
    if args.out:
        print(f"wrote {write_result(args.out, 'gil_vs_cores_cpu', info, res)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
