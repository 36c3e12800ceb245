"""Who holds the GIL while the event loop's thread waits for it: perf uprobes on the interpreter's
``take_gil`` / ``drop_gil``.

    python benchmarks/experiments/gil_waits.py [--scenario http|hostile|images|images-idle] [--seconds 3]
        [--out benchmarks/results]

``http``: ``gpu-mm serve`` (CPU) while 16 clients upload a 2.8 MB base64 video each, all at once (the
server's GIL); ``images``: this process's ``AsyncMMDataProcessor`` serving 64 concurrent 1080p JPEG requests,
as ``gpu-mm bench``'s loop-lag step does. For every thread it prints how long it held the GIL at a time and
how long it waited for it, and for the loop thread's longest waits, which threads held the GIL meanwhile.
Threads are named (``prctl``) after their Python names so that perf can tell them apart.

Needs Linux, ``perf`` with uprobe support, root (or perf_event_paranoid <= 1 and uprobes allowed) and a
CPython with a shared libpython (``take_gil`` is a static function there, which perf finds by its debug
symbols); it says which is missing and exits 2 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import contextlib
import json
import os
import pathlib
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Iterator

NAME_THREADS = """
import ctypes, threading
_libc = ctypes.CDLL(None)
_run = threading.Thread._bootstrap_inner
def _named(self):
    _libc.prctl(15, self.name[:15].encode(), 0, 0, 0)
    return _run(self)
threading.Thread._bootstrap_inner = _named
"""


def libpython() -> str | None:
    name = sysconfig.get_config_var("LDLIBRARY") or ""
    path = pathlib.Path(sysconfig.get_config_var("LIBDIR") or "") / name
    return str(path) if (name.endswith(".so") or ".so." in name) and path.exists() else None


def add_probes(lib: str) -> str:
    """Add the three uprobes (once) and return perf's group name for them."""
    listed = subprocess.run(["perf", "probe", "-l"], capture_output=True, text=True).stdout
    for spec in ("take_gil", "take_gil_ret=take_gil%return", "drop_gil"):
        if spec.split("=")[0] not in listed:
            done = subprocess.run(["perf", "probe", "-x", lib, "-a", spec], capture_output=True, text=True)
            if done.returncode != 0:
                raise SystemExit(f"perf probe {spec} failed: {done.stderr.strip()[-300:]}")
    listed = subprocess.run(["perf", "probe", "-l"], capture_output=True, text=True).stdout
    return next(line.split(":")[0].strip() for line in listed.splitlines() if "take_gil" in line)


def record(pid: int, group: str, seconds: float, out: str) -> subprocess.Popen[bytes]:
    events = [f"{group}:take_gil", f"{group}:take_gil_ret__return", f"{group}:drop_gil"]
    cmd = ["perf", "record", "-q", "-k", "mono", "-p", str(pid), "-o", out]
    for e in events:
        cmd += ["-e", e]
    return subprocess.Popen([*cmd, "--", "sleep", str(seconds)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def analyse(data: str, loop_tid: int) -> dict:
    text = subprocess.run(["perf", "script", "-i", data, "-F", "comm,tid,time,event"], capture_output=True,
                          text=True).stdout
    names: dict[int, str] = {}
    holds: dict[int, list[tuple[float, float]]] = collections.defaultdict(list)
    waits: dict[int, list[tuple[float, float]]] = collections.defaultdict(list)
    wanted: dict[int, float] = {}
    held: dict[int, float] = {}
    for line in text.splitlines():
        parts = line.split()
        try:
            t, tid, event = float(parts[-2].rstrip(":")), int(parts[-3]), parts[-1].rstrip(":").split(":")[-1]
        except (IndexError, ValueError):
            continue
        names[tid] = " ".join(parts[:-3])
        if event == "take_gil":
            wanted[tid] = t
        elif event.startswith("take_gil_ret"):
            if tid in wanted:
                waits[tid].append((wanted.pop(tid), t))
            held[tid] = t
        elif event == "drop_gil" and tid in held:
            holds[tid].append((held.pop(tid), t))

    def stats(spans: list[tuple[float, float]]) -> dict:
        d = sorted(b - a for a, b in spans)
        if not d:
            return {"count": 0}
        return {"count": len(d), "sum_ms": sum(d) * 1e3, "p99_ms": d[min(len(d) - 1, int(0.99 * len(d)))] * 1e3,
                "max_ms": d[-1] * 1e3}

    threads = {f"{names[tid]} ({tid})": {"holds": stats(holds[tid]), "waits": stats(waits[tid])}
               for tid in sorted(names) if holds[tid] or waits[tid]}
    worst = []
    every_hold = [(a, b, tid) for tid in holds for a, b in holds[tid]]
    for a, b in sorted(waits[loop_tid], key=lambda w: w[0] - w[1])[:10]:
        during: collections.Counter[str] = collections.Counter()
        for ha, hb, tid in every_hold:
            overlap = min(b, hb) - max(a, ha)
            if overlap > 0 and tid != loop_tid:
                during[names[tid]] += overlap * 1e3
        worst.append({"wait_ms": (b - a) * 1e3, "held_by_ms": {k: round(v, 2) for k, v in during.most_common(3)}})
    return {"threads": threads, "loop_thread": f"{names.get(loop_tid)} ({loop_tid})", "loop_longest_waits": worst}


@contextlib.contextmanager
def _served(port: int, *extra: str) -> Iterator[subprocess.Popen[bytes]]:
    """``gpu-mm serve`` on the CPU with its threads named for perf, stopped on exit."""
    code = NAME_THREADS + "import sys; from gpu_mm.cli import main; sys.exit(main(sys.argv[1:]))"
    server = subprocess.Popen([sys.executable, "-c", code, "serve", "--device", "cpu", "--port", str(port),
                               "--cache-mb", "0", *extra], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield server
    finally:
        server.terminate()
        server.wait()


def http_scenario(group: str, seconds: float, data: str) -> int:
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))
    from gpu_mm.bench.http import _free_port, upload_clip

    port = _free_port()
    body = json.dumps({"videos": [base64.b64encode(upload_clip()).decode()]}).encode()
    with _served(port) as server:
        import aiohttp

        async def load() -> None:
            url = f"http://127.0.0.1:{port}/v1/preprocess"
            headers = {"Content-Type": "application/json"}
            async with aiohttp.ClientSession() as s:
                for _ in range(600):
                    try:
                        async with s.post(url, data=body, headers=headers) as r:  # warm-up
                            await r.read()
                        break
                    except aiohttp.ClientError:
                        await asyncio.sleep(0.2)
                perf = record(server.pid, group, seconds, data)
                await asyncio.sleep(0.3)

                async def one() -> None:
                    async with s.post(url, data=body, headers=headers) as r:
                        await r.read()

                await asyncio.gather(*(one() for _ in range(16)))
                perf.wait()

        asyncio.run(load())
    return server.pid


def hostile_scenario(group: str, seconds: float, data: str, concurrency: int = 8) -> int:
    """``gpu-mm serve`` as it runs on the CPU while ``concurrency`` clients send reliability.py's hostile bodies."""
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))
    from gpu_mm.bench.hostile import hostile_bodies, send_hostile
    from gpu_mm.bench.http import _free_port, _wait_up

    port = _free_port()
    bodies = hostile_bodies()
    with _served(port, "--timeout-s", "10") as server:
        import aiohttp

        async def load() -> None:
            async with aiohttp.ClientSession() as s:
                await _wait_up(s, f"http://127.0.0.1:{port}", server)
                stop = time.monotonic() + seconds + 1.0
                attackers = asyncio.ensure_future(send_hostile(s, port, bodies, concurrency, stop))
                await asyncio.sleep(1.0)  # past the first requests' thread and process start-up
                perf = record(server.pid, group, seconds, data)
                await attackers
                perf.wait()

        asyncio.run(load())
    return server.pid


def images_scenario(group: str, seconds: float, data: str, idle_workers: bool = False) -> int:
    exec(NAME_THREADS, {})  # noqa: S102 - names this process's threads for perf
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))
    from gpu_mm.bench.loop_lag import measure, scenarios
    from gpu_mm.media.synth import make_image
    from gpu_mm.runtime import freeze_gc

    key = "gpu_mm_native_idle_workers" if idle_workers else "gpu_mm_native"
    call, closer = scenarios(make_image(1080, 1920, "JPEG"), 2)[key]()

    async def run() -> None:
        await call(-1)
        freeze_gc()  # as gpu-mm bench and gpu-mm serve do: no full collection of torch's objects mid-run
        perf = record(os.getpid(), group, seconds, data)
        await asyncio.sleep(0.3)
        t_end = time.monotonic() + seconds - 0.5
        while time.monotonic() < t_end:
            await measure(call, 64)
        perf.wait()

    asyncio.run(run())
    if closer:
        closer()
    return os.getpid()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scenario", choices=["http", "hostile", "images", "images-idle"], default="http",
                    help="hostile: reliability.py's hostile bodies from 8 clients; images-idle: the images scenario "
                         "with the slot threads on SCHED_IDLE")
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--out", default=None, help="folder for the JSON result")
    args = ap.parse_args()
    lib = libpython()
    if shutil.which("perf") is None or lib is None:
        print("needs perf and a CPython with a shared libpython", file=sys.stderr)
        return 2
    group = add_probes(lib)
    with tempfile.TemporaryDirectory() as tmp:
        data = os.path.join(tmp, "gil.data")
        if args.scenario == "http":
            pid = http_scenario(group, args.seconds, data)
        elif args.scenario == "hostile":
            pid = hostile_scenario(group, args.seconds, data)
        else:
            pid = images_scenario(group, args.seconds, data, idle_workers=args.scenario == "images-idle")
        result = {"scenario": args.scenario, "seconds": args.seconds, **analyse(data, pid)}
    print(f"{'thread':32s} {'holds':>7s} {'sum ms':>8s} {'p99 ms':>7s} {'max ms':>7s} | {'waits':>7s} "
          f"{'sum ms':>8s} {'p99 ms':>7s} {'max ms':>7s}")
    for name, t in result["threads"].items():
        h, w = t["holds"], t["waits"]
        cols = [f"{x['count']:7d} {x.get('sum_ms', 0):8.1f} {x.get('p99_ms', 0):7.2f} {x.get('max_ms', 0):7.2f}"
                for x in (h, w)]
        print(f"{name:32s} {cols[0]} | {cols[1]}")
    print(f"\nthe loop thread's ({result['loop_thread']}) longest waits for the GIL, and who held it meanwhile:")
    for w in result["loop_longest_waits"]:
        print(f"  {w['wait_ms']:6.2f} ms  {w['held_by_ms']}")
    if args.out:
        path = pathlib.Path(args.out) / f"gil_waits_{args.scenario}_cpu_{time.strftime('%Y-%m-%d')}.json"
        path.write_text(json.dumps(result, indent=2))
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
