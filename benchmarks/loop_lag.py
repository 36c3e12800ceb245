"""Event-loop lag and health-probe latency while 64 concurrent Qwen2-VL image requests run:
processing inline, the seed's wrapper (SGLang PR #12066), and gpu-mm, measured side by side.

    python benchmarks/loop_lag.py [--requests 64] [--workers 2] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import pathlib
import sys

from gpu_mm.bench.loop_lag import run_all
from gpu_mm.bench.machine import machine_info, machine_label
from gpu_mm.media.synth import make_image


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=64)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", default=None, help="folder for the JSON result")
    args = ap.parse_args()
    image = make_image(1080, 1920, "JPEG")
    res = asyncio.run(run_all(image, args.requests, args.workers, progress=lambda n: print(f"running {n} ...",
                                                                                           file=sys.stderr)))
    info = machine_info()
    print(f"\n{args.requests} concurrent 1920x1080 JPEG requests -- {machine_label(info)}")
    print(f"{'scenario':26s} {'wall s':>7s} {'lag p50':>8s} {'lag p99':>8s} {'lag max':>8s} "
          f"{'health p99':>10s} {'health max':>10s}  errors")
    for name, r in res.items():
        lag, h = r["loop_lag"], r["health_probe"]
        print(f"{name:26s} {r['wall_s']:7.2f} {lag['p50_ms']:8.2f} {lag['p99_ms']:8.2f} {lag['max_ms']:8.1f} "
              f"{h['p99_ms']:10.2f} {h['max_ms']:10.1f}  {r['errors'] or ''}")
    base = res.get("inline")
    if base:
        for name in ("gpu_mm_wrapping_hf", "gpu_mm_native"):
            if name in res:
                ratio = base["loop_lag"]["max_ms"] / max(res[name]["loop_lag"]["max_ms"], 1e-6)
                print(f"max loop lag, inline / {name}: {ratio:.0f}x")
    if args.out:
        out = pathlib.Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        name = f"loop_lag_{(info['gpu'] or 'cpu').replace(' ', '_')}_{info['date'][:10]}.json"
        (out / name).write_text(json.dumps({"machine": info, "requests": args.requests, "results": res}, indent=2))
        print(f"wrote {out / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
