"""What gpu_mm._ingest earns: an event loop's lag while threads of its process parse request bodies that carry
base64 media, with the extension (its copies and long-literal scan without the GIL) and without it (``b"".join``
and ``json.loads``, what runs where no C compiler was found), side by side.

    python benchmarks/body_parse.py [--mb 3 12] [--threads N] [--seconds 4] [--rounds 3] [--out benchmarks/results]

Each parse is :func:`gpu_mm.serve.parse_request` of a body of 64 KiB chunks (as ``read_body`` hands them over)
holding one base64 payload of ``--mb`` megabytes, then pybase64's decode of it, as ``gpu-mm serve`` does before a
request reaches the pipeline. The loop sleeps 1 ms and records how late it wakes: time a parse thread held the
GIL in one C call is time the loop waits, whatever the core count. Modes run interleaved, ``--rounds`` times.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import statistics
import sys
import threading
import time
from typing import Any

from gpu_mm import serve
from gpu_mm.bench.machine import machine_info, machine_label, write_result
from gpu_mm.media.sources import _b64

CHUNK = 1 << 16


def make_body(mb: float) -> list[bytes]:
    payload = base64.b64encode(os.urandom(int(mb * 3 / 4 * (1 << 20)))).decode()
    raw = ('{"images": [{"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,' + payload +
           '"}}], "max_pixels": 1000000}').encode()
    return [raw[i : i + CHUNK] for i in range(0, len(raw), CHUNK)]


async def measure(chunks: list[bytes], threads: int, seconds: float, native: bool) -> dict[str, Any]:
    saved = serve._ingest
    if not native:
        serve._ingest = None
    stop = threading.Event()
    parsed = [0]

    def work() -> None:
        while not stop.is_set():
            images, _, _ = serve.parse_request(list(chunks))
            _b64(images[0]["image_url"]["url"].split(",", 1)[1], "image[0]")
            parsed[0] += 1

    pool = [threading.Thread(target=work, daemon=True) for _ in range(threads)]
    for t in pool:
        t.start()
    lags = []
    end = time.perf_counter() + seconds
    try:
        while time.perf_counter() < end:
            t0 = time.perf_counter()
            await asyncio.sleep(0.001)
            lags.append((time.perf_counter() - t0 - 0.001) * 1e3)
    finally:
        stop.set()
        for t in pool:
            t.join()
        serve._ingest = saved
    lags.sort()
    return {"parses_per_s": parsed[0] / seconds, "lag_p50_ms": statistics.median(lags),
            "lag_p99_ms": lags[int(0.99 * (len(lags) - 1))], "lag_max_ms": lags[-1]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mb", type=float, nargs="+", default=[3.0, 12.0], help="base64 payload size per body")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 2, help="parse threads (default: cores)")
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default=None, help="folder for the JSON result")
    args = ap.parse_args()
    if serve._ingest is None:
        print("gpu_mm._ingest is not built: nothing to compare", file=sys.stderr)
        return 1
    info = machine_info()
    print(f"event-loop lag while {args.threads} threads parse bodies -- {machine_label(info)}")
    print(f"{'body MB':>7s} {'mode':14s} {'parses/s':>9s} {'lag p50':>8s} {'lag p99':>8s} {'lag max':>8s}")
    results = []
    for mb in args.mb:
        chunks = make_body(mb)
        rows: dict[str, list[dict[str, Any]]] = {"python": [], "gpu_mm._ingest": []}
        for _ in range(args.rounds):
            for mode in rows:
                rows[mode].append(asyncio.run(measure(chunks, args.threads, args.seconds,
                                                      native=mode != "python")))
        for mode, runs in rows.items():
            med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
            print(f"{mb:7.1f} {mode:14s} {med['parses_per_s']:9.1f} {med['lag_p50_ms']:8.2f} "
                  f"{med['lag_p99_ms']:8.2f} {med['lag_max_ms']:8.1f}")
            results.append({"body_mb": mb, "mode": mode, "rounds": runs, "median": med})
        py, nat = (statistics.median(r["lag_p99_ms"] for r in rows[m]) for m in ("python", "gpu_mm._ingest"))
        print(f"{mb:7.1f} lag p99 python / _ingest: {py / nat:.2f}x")
    if args.out:
        path = write_result(args.out, "body_parse_cpu", info, {"threads": args.threads, "seconds": args.seconds,
                                                               "rows": results})
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
