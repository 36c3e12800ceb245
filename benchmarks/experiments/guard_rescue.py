"""How long the starvation guard takes to rescue a starved ``SCHED_IDLE`` thread: about 1 s of Python work on a
guarded ``SCHED_IDLE`` thread behind one spinning process per core, the seconds until it is done, for guards of
``--windows`` (each of 100 ms), side by side in one run, arms alternating.

    python benchmarks/experiments/guard_rescue.py [--rounds 3] [--windows 2 10] [--out benchmarks/results]

The starved thread holds the interpreter lock while it waits for a core, so the guard's own thread cannot look at
it on time (its first look came 1.3 s late here): the guard counts a late look as every window it spans. Needs
root or ``CAP_SYS_NICE`` (a thread must be able to leave ``SCHED_IDLE``); elsewhere it says so and stops.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import threading
import time

from gpu_mm import sched
from gpu_mm.bench.machine import machine_info, machine_label, write_result
from gpu_mm.concurrency import usable_cores


def _spin(n: int) -> None:
    x = 0
    for i in range(n):
        x += i


def iterations_per_second() -> int:
    t0 = time.perf_counter()
    _spin(2_000_000)
    return int(2_000_000 / (time.perf_counter() - t0))


def rescue(windows: int, n: int) -> dict[str, float]:
    """Seconds for ``n`` iterations on a guarded SCHED_IDLE thread while every core spins elsewhere."""
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(usable_cores())]
    out: dict[str, float] = {}
    try:
        time.sleep(0.3)
        with sched.StarvationGuard._shared_lock:
            sched.StarvationGuard._shared = sched.StarvationGuard(windows=windows)

        def work() -> None:
            assert sched.set_idle_policy()
            guard = sched.StarvationGuard.shared()
            assert guard is not None
            t0 = time.perf_counter()
            try:
                _spin(n)
                out.update(seconds=time.perf_counter() - t0, promotions=guard.promotions)
            finally:
                sched.leave_idle_policy()

        t = threading.Thread(target=work)
        t.start()
        t.join(120)
    finally:
        for h in hogs:
            h.kill()
            h.wait()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--windows", type=int, nargs="+", default=[2, 10])
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if not sched._idle_is_reversible():
        print("a thread cannot leave SCHED_IDLE here (needs root or CAP_SYS_NICE): gpu-mm does not use it, nothing "
              "to measure")
        return 0
    info = machine_info()
    print(f"machine: {machine_label(info)}")
    n = iterations_per_second()  # about 1 s of this thread's work alone
    runs: dict[str, list[dict[str, float]]] = {str(w): [] for w in args.windows}
    for r in range(args.rounds):
        order = args.windows if r % 2 == 0 else args.windows[::-1]
        for w in order:
            res = rescue(w, n)
            runs[str(w)].append(res)
            print(f"  round {r} windows {w:3d}: {res.get('seconds', float('nan')):5.2f} s, "
                  f"{res.get('promotions', 0):.0f} promotions", flush=True)
    for w, rows in runs.items():
        secs = sorted(row["seconds"] for row in rows if "seconds" in row)
        print(f"windows {w}: {secs[0]:.2f}-{secs[-1]:.2f} s for ~1 s of work behind {usable_cores()} spinning "
              "processes")
    if args.out:
        print(f"wrote {write_result(args.out, 'guard_rescue_cpu', info, {'iterations': n, 'runs': runs})}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
