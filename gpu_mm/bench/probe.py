"""Probe a server's ``/health`` and ``/metrics`` from a process of its own (:class:`Prober`).

A probe that shares the load-generating client's event loop measures that loop too: when the client was
encoding sixteen 2.8 MB JSON bodies, its probes waited tens of milliseconds before they were even sent
(measured beside this prober in one run: /health p99 70 vs 27 ms). ``python -m gpu_mm.bench.probe HOST PORT
INTERVAL_S`` holds one keep-alive connection, sends ``GET /health`` then ``GET /metrics`` every ``INTERVAL_S``,
prints ``ready`` once both have answered, and when its standard input closes prints the latencies in seconds
as one JSON object and exits.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import subprocess
import sys
import threading
import time
from typing import Any

PATHS = ("/health", "/metrics")


def probe(host: str, port: int, interval_s: float, stop: threading.Event) -> dict[str, list[float]]:
    conn = http.client.HTTPConnection(host, port, timeout=120)
    out: dict[str, list[float]] = {p: [] for p in PATHS}
    try:
        while True:
            for path in PATHS:
                t0 = time.perf_counter()
                conn.request("GET", path)
                response = conn.getresponse()
                response.read()
                if response.status != 200:
                    raise RuntimeError(f"GET {path}: HTTP {response.status}")
                out[path].append(time.perf_counter() - t0)
            if len(out[PATHS[0]]) == 1:
                print("ready", flush=True)
            if stop.wait(interval_s):
                return out
    finally:
        conn.close()


class Prober:
    """``async with Prober(port) as p: ...; latencies = await p.results()``: the prober process runs (and has
    answered once) inside the block; :meth:`results` stops it and returns ``{path: [seconds, ...]}``."""

    def __init__(self, port: int, interval_s: float = 0.02, host: str = "127.0.0.1") -> None:
        self.cmd = [sys.executable, "-m", "gpu_mm.bench.probe", host, str(port), str(interval_s)]
        self.interval_s = interval_s
        self.proc: subprocess.Popen[bytes] | None = None

    def describe(self) -> str:
        return f"own process, one keep-alive connection, /health then /metrics every {self.interval_s * 1e3:.0f} ms"

    async def __aenter__(self) -> Prober:
        self.proc = subprocess.Popen(self.cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert self.proc.stdout is not None
        ready = await asyncio.get_running_loop().run_in_executor(None, self.proc.stdout.readline)
        if ready.strip() != b"ready":
            raise RuntimeError("the /health prober did not start")
        return self

    async def results(self) -> dict[str, list[float]]:
        assert self.proc is not None
        out, _ = await asyncio.get_running_loop().run_in_executor(None, self.proc.communicate)
        if self.proc.returncode != 0:
            raise RuntimeError(f"the /health prober failed (exit {self.proc.returncode})")
        latencies: dict[str, list[float]] = json.loads(out)
        return latencies

    async def __aexit__(self, *exc: Any) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def main(argv: list[str]) -> int:
    host, port, interval_s = argv[0], int(argv[1]), float(argv[2])
    stop = threading.Event()

    def wait_for_eof() -> None:
        sys.stdin.read()
        stop.set()

    threading.Thread(target=wait_for_eof, daemon=True).start()
    out = probe(host, port, interval_s, stop)
    for path in PATHS:
        out[path] = out[path][1:]  # the first pair only said the server was up
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
