"""/health under hostile load, gpu-mm serve beside its floor (``gpu_mm.bench.hostile.compare``), in interleaved
rounds: a server that does no work paced to the rate gpu-mm answered; the same with gpu-mm's pixel work for the
valid items in as many ``SCHED_IDLE`` processes as gpu-mm has slot processes; and the same floor server parsing
each body as gpu-mm serve does. Each arm also reports the server's threads' CPU over the middle half of the load
(``/proc/<pid>/task/*/schedstat``): how long its event loop ran and waited, runnable, for a core, and how long its
other threads ran.

    python benchmarks/experiments/health_floor.py [--rounds 4] [--seconds 10] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import json
import sys

from gpu_mm.bench.hostile import compare
from gpu_mm.bench.machine import write_runs


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    result = compare(args.seconds, rounds=args.rounds, floor_parse=True, progress=print)
    runs = result.pop("runs")
    arms = list(runs[0])
    result["p99_ms_by_round"] = {arm: [round(r[arm]["health_p99_ms"], 2) for r in runs] for arm in arms}
    result["max_ms_by_round"] = {arm: [round(r[arm]["health_max_ms"], 1) for r in runs] for arm in arms}
    result["answers_by_round"] = {arm: [r[arm]["answers"] for r in runs] for arm in arms}
    for key in ("loop_run_pct", "loop_wait_pct", "threads_run_pct"):  # the server's threads, middle half of the load
        result[f"{key}_by_round"] = {arm: [(r[arm].get("server_cpu") or {}).get(key) for r in runs] for arm in arms}
    print(json.dumps({k: v for k, v in result.items() if k != "note"}, indent=1))
    if args.out:
        rows = [{"round": k, "arm": arm, **r[arm]} for k, r in enumerate(runs) for arm in arms]
        print(f"wrote {write_runs(args.out, 'health_floor_cpu.json', result, rows)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
