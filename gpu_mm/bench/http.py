"""The seed's responsiveness scenario over real HTTP: N concurrent video requests against
``gpu-mm serve`` on loopback while a prober in a process of its own (:mod:`gpu_mm.bench.probe`) sends
``/health`` and ``/metrics``. Server, client and prober share the machine's cores."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

from ..metrics import LatencySummary
from .probe import Prober


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def served(cmd: list[str]) -> Iterator[subprocess.Popen[bytes]]:
    """Run a server command in its own process (its standard error kept for :func:`_wait_up` to report); on exit
    terminate it (killed after 10 s) and close the pipe."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        assert proc.stderr is not None
        proc.stderr.close()


def server(mode: str, device: str, port: int,
           extra: list[str] | None = None) -> contextlib.AbstractContextManager[subprocess.Popen[bytes]]:
    """Start ``gpu-mm serve`` (``mode`` ``gpu_mm``) or a baseline in front of its preprocessor (``inline``, ``seed``)
    in its own process on 127.0.0.1:port; stop it on exit."""
    cmd = [sys.executable, "-m", "gpu_mm.cli", "serve"] if mode == "gpu_mm" else \
        [sys.executable, "-m", "gpu_mm.bench.baselines", "serve", "--mode", mode]
    cmd += ["--device", device, "--host", "127.0.0.1",
           "--port", str(port), "--cache-mb", "0", *(extra or [])]  # every request computed: measure the work
    return served(cmd)


async def _wait_up(session: Any, base: str, proc: subprocess.Popen[bytes], timeout_s: float = 120.0) -> None:
    import aiohttp

    t_end = time.monotonic() + timeout_s
    while time.monotonic() < t_end:
        if proc.poll() is not None:
            err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
            raise RuntimeError(f"server exited with {proc.returncode}: {err[-2000:]}")
        try:
            async with session.get(base + "/health") as r:
                if r.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.2)
    raise RuntimeError("server did not come up")


def _ms(xs: list[float]) -> dict[str, float]:
    s = LatencySummary.of(xs)
    return {"p50_ms": s.p50_s * 1e3, "p99_ms": s.p99_s * 1e3, "max_ms": s.max_s * 1e3, "count": s.count}


def upload_clip() -> bytes:
    """The clip the upload scenarios send (``health_reads.py``, ``switch_interval.py``, ``gil_waits.py``): 30 s of
    360p H.264 at 30 fps, GOP 60 with B-frames, ~2 MB (2.8 MB as base64)."""
    from ..media.synth import make_video

    return make_video(900, 360, 640, fps=30, gop=60, bframes=2, bit_rate=550_000)


async def run_mode(mode: str, video: bytes, n_requests: int, device: str = "cpu",
                   server_args: list[str] | None = None, probe_interval_s: float = 0.02) -> dict[str, Any]:
    """Figures for one server mode: probe latencies, request latencies and status counts."""
    import aiohttp

    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    # Encoded once: aiohttp's json= would encode each request's 2.8 MB body again on the client's loop.
    body = json.dumps({"videos": [base64.b64encode(video).decode()]}).encode()
    headers = {"Content-Type": "application/json"}
    with server(mode, device, port, server_args) as proc:
        timeout = aiohttp.ClientTimeout(total=600)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            await _wait_up(session, base, proc)
            async with session.post(base + "/v1/preprocess", data=body, headers=headers) as r:  # warm-up
                await r.read()
            async with Prober(port, probe_interval_s) as prober:
                statuses: dict[int, int] = {}
                latencies: list[float] = []

                async def one() -> None:
                    t0 = time.perf_counter()
                    async with session.post(base + "/v1/preprocess", data=body, headers=headers) as r:
                        await r.read()
                        statuses[r.status] = statuses.get(r.status, 0) + 1
                    latencies.append(time.perf_counter() - t0)

                t0 = time.perf_counter()
                await asyncio.gather(*(one() for _ in range(n_requests)))
                wall = time.perf_counter() - t0
                probes = await prober.results()
    return {
        "mode": mode, "requests": n_requests, "wall_s": wall, "status": {str(k): v for k, v in statuses.items()},
        "request": _ms(latencies), "health": _ms(probes["/health"]), "metrics": _ms(probes["/metrics"]),
        "probe": prober.describe(),
        "rejected_503": statuses.get(503, 0), "timeouts_504": statuses.get(504, 0),
    }
