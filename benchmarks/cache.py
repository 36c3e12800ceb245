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
import sys

from gpu_mm.bench.cache import run, summary
from gpu_mm.bench.machine import machine_info, machine_label, write_result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    info = machine_info()
    res = run(args.quick)
    print(f"-- {machine_label(info)}")
    print("\n".join(summary(res)))
    if args.out:
        print(f"wrote {write_result(args.out, 'cache_cpu', info, res)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
