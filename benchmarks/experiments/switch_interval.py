"""``/health`` with the interpreter switch interval ``gpu-mm serve`` sets (0.5 ms, ``--switch-interval-ms``)
against Python's own (5 ms) and 0.2 ms, interleaved rounds on this machine, under two loads that share its cores
with the server: 8 clients sending ``benchmarks/reliability.py``'s hostile requests for 10 s (slot processes, as
served) and 16 concurrent 2.8 MB video uploads (``benchmarks/experiments/health_reads.py``'s load).

    python benchmarks/experiments/switch_interval.py [--rounds 4] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # benchmarks/, for reliability.py
from reliability import health_benchmark  # noqa: E402

from gpu_mm.bench.http import run_mode, upload_clip
from gpu_mm.bench.machine import health_summary, write_runs

ARMS = {"python_5ms": ["--switch-interval-ms", "0"], "served_0.5ms": [], "0.2ms": ["--switch-interval-ms", "0.2"]}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--hostile-s", type=float, default=10.0)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    video = upload_clip()
    runs: list[dict] = []
    for _ in range(args.rounds):
        for arm, extra in ARMS.items():
            h = health_benchmark(args.hostile_s, 8, "processes", extra)
            runs.append({"load": "hostile", "arm": arm, "p99_ms": h["health_p99_ms"], "max_ms": h["health_max_ms"],
                         "probes": h["health_probes"], "statuses": h["statuses"]})
            print(f"hostile {arm:>12}: /health p99 {h['health_p99_ms']:.2f} max {h['health_max_ms']:.1f} ms "
                  f"({h['health_probes']} probes); {h['statuses']}", flush=True)
            r = asyncio.run(run_mode("gpu_mm", video, 16, "cpu", ["--workers", "processes", *extra]))
            runs.append({"load": "uploads", "arm": arm, "p99_ms": r["health"]["p99_ms"],
                         "max_ms": r["health"]["max_ms"], "probes": r["health"]["count"],
                         "request_p50_ms": r["request"]["p50_ms"], "statuses": r["status"]})
            print(f"uploads {arm:>12}: /health p99 {r['health']['p99_ms']:.2f} max {r['health']['max_ms']:.1f} ms; "
                  f"request p50 {r['request']['p50_ms']:.0f} ms; {r['status']}", flush=True)
    summary = {f"{load}/{arm}": health_summary([r for r in runs if r["load"] == load and r["arm"] == arm])
               for load in ("hostile", "uploads") for arm in ARMS}
    print(json.dumps(summary, indent=1))
    if args.out:
        print(f"wrote {write_runs(args.out, 'switch_interval_cpu.json', summary, runs)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
