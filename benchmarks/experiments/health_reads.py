"""``/health`` under 16 concurrent 2.8 MB video uploads with the server's socket reads as ``gpu-mm serve`` sets
them (64 KiB, ``gpu_mm.serve.limit_reads``) and as the event loop leaves them (256 KiB), interleaved rounds on this
machine; the load client and the prober share its cores with the server.

    python benchmarks/experiments/health_reads.py [--rounds 6] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

from gpu_mm.bench.http import run_mode, upload_clip
from gpu_mm.bench.machine import health_summary, write_runs

ARMS = {"reads_256k": ["--read-chunk-kb", "0"], "reads_64k": []}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--requests", type=int, default=16)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    video = upload_clip()
    runs: list[dict] = []
    for _ in range(args.rounds):
        for arm, extra in ARMS.items():
            r = asyncio.run(run_mode("gpu_mm", video, args.requests, "cpu", ["--workers", "processes", *extra]))
            runs.append({"arm": arm, **r})
            h = r["health"]
            print(f"{arm:>10}: /health p50 {h['p50_ms']:.2f} p99 {h['p99_ms']:.2f} max {h['max_ms']:.1f} ms "
                  f"({h['count']} probes); request p50 {r['request']['p50_ms']:.0f} ms; {r['status']}", flush=True)
    summary = {arm: health_summary([{**r, **r["health"]} for r in runs if r["arm"] == arm]) for arm in ARMS}
    print(json.dumps(summary, indent=1))
    if args.out:
        print(f"wrote {write_runs(args.out, 'health_reads_cpu.json', summary, runs)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
