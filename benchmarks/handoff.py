"""Feature hand-off between processes: pickle through a pipe vs gpu-mm's shared-memory pool.

    python benchmarks/handoff.py [--reps 5] [--out DIR]
"""

from __future__ import annotations

import argparse
import sys

from gpu_mm.bench.handoff import run
from gpu_mm.bench.machine import machine_info, machine_label, write_result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    res = run(args.reps)
    info = machine_info()
    print(f"hand-off round trip (p50) -- {machine_label(info)}")
    for name, r in res.items():
        print(f"  {name:16s} {r['bytes'] / 1e6:7.1f} MB  pickle {r['pickle_pipe_ms']:8.2f} ms  "
              f"shm copy-in {r['shm_copy_in_ms']:7.2f} ms ({r['speedup_copy_in']:.1f}x)  "
              f"shm in place {r['shm_in_place_ms']:6.3f} ms ({r['speedup_in_place']:.0f}x)")
    if args.out:
        print(f"wrote {write_result(args.out, 'handoff_cpu', info, res)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
