"""How many device slots on the CPU? Throughput and event-loop lag of one Preprocessor for each slot setting, on
1 core and on all of this machine's cores (each run a fresh process pinned with sched_setaffinity before torch is
imported, so torch's and FFmpeg's thread pools see only those cores).

    python benchmarks/cpu_concurrency.py [--rounds 2] [--out benchmarks/results]

Workloads, each sent all at once through ``await pre.preprocess(...)`` on one event loop: 32 1920x1080 JPEGs;
6 10 s 1280x720 H.264 clips (GOP 60, B-frames; 20 frames each); both mixed. Settings are (slots, express
slots): gpu-mm's default is (1, 1), where the express slot takes only items planned under 256 MiB (all of
these are), so two items run at once. Settings run interleaved, ``--rounds`` times; medians are kept. What
``gpu_mm.concurrency.choose`` picks is printed beside the winner for each core count.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
from typing import Any

SETTINGS = [(1, 0), (1, 1), (2, 0), (2, 1), (3, 1), (4, 1)]


def child(slots: int, express: int) -> dict[str, Any]:
    """One process, one setting: every workload once. Printed as JSON on stdout."""
    from gpu_mm import Qwen2VLPreprocessor
    from gpu_mm.bench.loop_lag import measure
    from gpu_mm.media.synth import make_image, make_video

    jpeg = make_image(1080, 1920, "JPEG")
    clip = make_video(300, 720, 1280, fps=30, gop=60, bframes=2, bit_rate=550_000)
    work = {
        "images": ([jpeg] * 32, []),
        "videos": ([], [clip] * 6),
        "mixed": ([jpeg] * 16, [clip] * 3),
    }

    async def run() -> dict[str, Any]:
        pre = Qwen2VLPreprocessor(device="cpu", num_slots=slots, express_slots=express, cache_bytes=0)
        try:
            await pre.preprocess(images=[jpeg])  # warm-up: imports, first-call caches, threads
            out: dict[str, Any] = {}
            for name, (images, videos) in work.items():
                items = [("image", x) for x in images] + [("video", x) for x in videos]

                async def call(i: int, items: list[tuple[str, bytes]] = items) -> Any:
                    kind, data = items[i]
                    return await pre.preprocess(**{kind + "s": [data]})

                r = await measure(call, len(items))
                out[name] = {"wall_s": r["wall_s"], "lag_p99_ms": r["loop_lag"]["p99_ms"],
                             "lag_max_ms": r["loop_lag"]["max_ms"], "errors": r["errors"]}
            return out
        finally:
            await pre.aclose()

    return asyncio.run(run())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--child", nargs=2, type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(*args.child)))
        return 0

    from gpu_mm.bench.machine import machine_info, machine_label, write_result
    from gpu_mm.concurrency import choose

    info = machine_info()
    cores = sorted(os.sched_getaffinity(0))
    counts = sorted({1, len(cores)})
    runs: dict[str, list[dict[str, Any]]] = {}
    for _ in range(args.rounds):
        for n in counts:
            for slots, express in SETTINGS:
                p = subprocess.run([sys.executable, __file__, "--child", str(slots), str(express)], check=True,
                                   capture_output=True, text=True,
                                   preexec_fn=lambda n=n: os.sched_setaffinity(0, cores[:n]))
                runs.setdefault(f"{n}:{slots}:{express}", []).append(json.loads(p.stdout.strip().splitlines()[-1]))
                print(f"  {n} core(s), slots {slots}+{express}: done", file=sys.stderr)
    table: dict[str, Any] = {}
    for key, rs in runs.items():
        n, slots, express = map(int, key.split(":"))
        row = {w: {m: statistics.median(r[w][m] for r in rs) for m in ("wall_s", "lag_p99_ms", "lag_max_ms")}
               for w in rs[0]}
        table[key] = {"cores": n, "slots": slots, "express_slots": express, **row}
    print(f"\nCPU slots on {machine_label(info)}: wall seconds (loop lag p99 ms), medians of {args.rounds}")
    print(f"  {'cores':>5} {'slots':>7} " + " ".join(f"{w:>18}" for w in ("images", "videos", "mixed")))
    for n in counts:
        for slots, express in SETTINGS:
            t = table[f"{n}:{slots}:{express}"]
            cells = " ".join(f"{t[w]['wall_s']:8.2f} s ({t[w]['lag_p99_ms']:4.1f})"
                             for w in ("images", "videos", "mixed"))
            print(f"  {n:>5} {slots:>5}+{express} {cells}")
        best = min(SETTINGS, key=lambda s: table[f"{n}:{s[0]}:{s[1]}"]["mixed"]["wall_s"])
        c = choose("cpu", n)
        print(f"  {n} core(s): fastest on the mixed load {best[0]}+{best[1]}; gpu_mm.concurrency.choose picks "
              f"{c.slots}+{c.express_slots}")
    print(f"wrote {write_result(args.out, 'cpu_concurrency', info, {'rounds': args.rounds, 'table': table})}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
