"""How late a thread that sleeps in ``recv`` runs after another process writes to it, while busy processes
keep both cores busy at a given scheduling policy: what a server's event loop (or a health checker) meets when it
wakes beside ``SCHED_IDLE`` slot processes.

    python benchmarks/experiments/wake_latency.py [--wakes 1500] [--out benchmarks/results]

Arms: no busy process; two spinning on ``SCHED_IDLE``; two at nice 19; two on ``SCHED_IDLE`` with the receiving
thread on ``SCHED_RR`` (needs root or ``CAP_SYS_NICE``; skipped otherwise). A forked writer sends a timestamp
every 3 ms; the receiver's latency is its ``perf_counter`` at ``recv``'s return minus the writer's before ``send``.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time

from gpu_mm.bench.machine import write_runs

SPIN = {"idle": "import os\nos.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))\nwhile True: pass\n",
        "nice19": "import os\nos.nice(19)\nwhile True: pass\n"}
ARMS = {"no_busy_process": (None, False), "busy_sched_idle": ("idle", False), "busy_nice19": ("nice19", False),
        "busy_sched_idle_receiver_rr": ("idle", True)}


def one(busy: str | None, rr: bool, wakes: int) -> dict:
    kids = [subprocess.Popen([sys.executable, "-c", SPIN[busy]]) for _ in range(2)] if busy else []
    a, b = socket.socketpair()
    writer = os.fork()
    if writer == 0:  # pragma: no cover - the child
        a.close()
        time.sleep(0.5)  # the busy processes are spinning by then
        for _ in range(wakes):
            time.sleep(0.003)
            b.send(repr(time.perf_counter()).encode().ljust(32))
        b.send(b"end".ljust(32))
        os._exit(0)
    b.close()
    prev = os.sched_getscheduler(0), os.sched_getparam(0)
    try:
        if rr:
            os.sched_setscheduler(0, os.SCHED_RR, os.sched_param(1))
        lat = []
        while (msg := a.recv(32)) and not msg.startswith(b"end"):
            lat.append((time.perf_counter() - float(msg)) * 1e3)
    finally:
        if rr:
            os.sched_setscheduler(0, *prev)
        os.waitpid(writer, 0)
        for k in kids:
            k.kill()
            k.wait()
    lat.sort()
    return {"wakes": len(lat), "p50_ms": lat[len(lat) // 2], "p99_ms": lat[int(len(lat) * 0.99)], "max_ms": lat[-1],
            "over_1ms": sum(x > 1 for x in lat)}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--wakes", type=int, default=1500)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    runs = []
    for _ in range(args.rounds):
        for arm, (busy, rr) in ARMS.items():
            try:
                r = one(busy, rr, args.wakes)
            except PermissionError as exc:
                print(f"{arm}: skipped ({exc})")
                continue
            runs.append({"arm": arm, **r})
            print(f"{arm:>28}: p50 {r['p50_ms']:.3f} p99 {r['p99_ms']:.3f} max {r['max_ms']:.2f} ms; "
                  f"{r['over_1ms']} of {r['wakes']} over 1 ms", flush=True)
    summary = {arm: {"wakes": sum(r["wakes"] for r in mine), "over_1ms": sum(r["over_1ms"] for r in mine),
                     "max_ms": sorted(round(r["max_ms"], 2) for r in mine)}
               for arm in ARMS if (mine := [r for r in runs if r["arm"] == arm])}
    print(json.dumps(summary, indent=1))
    if args.out:
        print(f"wrote {write_runs(args.out, 'wake_latency_cpu.json', summary, runs)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
