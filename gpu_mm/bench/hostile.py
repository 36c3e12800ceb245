"""``/health`` while clients send hostile requests, beside the floor the machine sets for it.

Eight clients on one event loop post hostile bodies (local paths, ``/dev/zero``, a truncated video, header bombs,
bad options, 50,000-deep JSON, SVG as video, and a valid image and clip among them) back to back, each sending
the next as soon as its last answer is read, while a prober in a process of its own (:mod:`gpu_mm.bench.probe`)
times ``/health`` and ``/metrics``. Server, clients and prober share the machine's cores.

Such closed-loop clients keep every core busy whatever the server does, so the same load against a server that
does no work at all does not measure 0: :func:`compare` runs ``gpu-mm serve`` and then :func:`floor_server`, an
aiohttp app that reads each body and answers 400, paced to the rate at which gpu-mm answered (a server that
answers faster gets more requests from the same clients: unpaced, the floor answered about four times as many
here, and its /health p99 was higher than gpu-mm's), then the floor server again with gpu-mm's pixel work for the
valid items running beside it (:func:`work_processes`, on the CPU), and reports all three. What gpu-mm's serving
adds to /health's latency is the difference to the last.

``python -m gpu_mm.bench.hostile floor PORT RATE [parse]`` runs the floor server (``RATE`` answers per second, 0:
as fast as it can; ``parse``: it also parses each body as ``gpu-mm serve`` does, on one thread, and answers 400
all the same: what that step alone costs /health).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import statistics
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

from ..metrics import LatencySummary
from .http import _free_port, _wait_up, served, server
from .probe import Prober


def png(width: int, height: int, mode: str) -> bytes:
    """A ``width`` x ``height`` PNG of ``mode`` (``L``, ``RGB``, ``RGBA``), gradients, fast to compress."""
    import numpy as np
    from PIL import Image

    y = np.linspace(0, 255, height, dtype=np.float32)[:, None]
    x = np.linspace(0, 255, width, dtype=np.float32)[None, :]
    ch: list[Any] = [(x + y) / 2, x, y, np.full((height, width), 200, np.float32)][: len(mode)]
    arr = np.stack([np.broadcast_to(c, (height, width)) for c in ch], axis=-1).astype(np.uint8)
    if arr.shape[-1] == 1:
        arr = arr[..., 0]
    buf = io.BytesIO()
    Image.fromarray(arr, mode).save(buf, "PNG", compress_level=1)
    return buf.getvalue()


def jpeg_claiming(width: int, height: int) -> bytes:
    """A 16x16 JPEG whose frame header is rewritten to claim ``width`` x ``height`` (truncated data)."""
    from ..media.synth import make_image

    data = bytearray(make_image(16, 16, "JPEG"))
    i = data.find(b"\xff\xc0")
    data[i + 5 : i + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def valid_media() -> list[tuple[str, bytes]]:
    """The media among :func:`hostile_bodies` that gpu-mm serves (``(kind, bytes)``): a 1080p JPEG, a 48-frame 360p
    H.264 clip, and a 1.3 KB JPEG whose header claims 8000x8000 (decoded to gray, within the pixel limit)."""
    from ..media.synth import make_image, make_video

    return [("image", make_image(1080, 1920)), ("video", make_video(48, 360, 640, gop=12)),
            ("image", jpeg_claiming(8000, 8000))]


def hostile_bodies() -> list[bytes]:
    """The request bodies the clients cycle through: ten JSON bodies (the three of :func:`valid_media` among
    them) and two that are not JSON."""
    import base64

    def b64(d: bytes) -> str:
        return base64.b64encode(d).decode()

    (_, image), (_, clip), (_, claiming) = valid_media()
    return [json.dumps(b).encode() for b in [
        {"images": ["/etc/passwd"]}, {"images": ["file:///dev/zero"]}, {"videos": [b64(clip[: len(clip) // 3])]},
        {"images": [b64(claiming)]}, {"images": [b64(png(9400, 9400, "L"))]},
        {"videos": [b64(clip)], "fps": "abc"}, {"videos": [b64(clip)], "fps": 1e308},
        {"videos": [b64(b"<svg xmlns='http://www.w3.org/2000/svg'/>")]}, {"images": [b64(image)]},
        {"videos": [b64(clip)]},
    ]] + [b"[" * 50_000 + b"]" * 50_000, b"\xff\xfe not json"]


async def send_hostile(session: Any, port: int, bodies: list[bytes], concurrency: int, stop: float) -> dict[int, int]:
    """``concurrency`` clients on one aiohttp session, each posting the next of ``bodies`` as soon as its last
    answer is read, until ``time.monotonic()`` passes ``stop``. Returns the answers counted by status."""
    url = f"http://127.0.0.1:{port}/v1/preprocess"
    statuses: dict[int, int] = {}

    async def attacker(k: int) -> None:
        i = k
        while time.monotonic() < stop:
            async with session.post(url, data=bodies[i % len(bodies)]) as r:
                await r.read()
                statuses[r.status] = statuses.get(r.status, 0) + 1
            i += concurrency

    await asyncio.gather(*(attacker(k) for k in range(concurrency)))
    return statuses


async def health_under_hostile_load(port: int, seconds: float, concurrency: int, bodies: list[bytes],
                                    server_pid: int | None = None) -> dict[str, Any]:
    """Hostile clients on this event loop for ``seconds``; /health probed from a process of its own (a probe on
    the clients' loop would measure that loop too). With ``server_pid`` (a server on this machine), also the
    server's threads' CPU over the middle half of the load (``server_cpu``: :func:`server_cpu`)."""
    import aiohttp

    async with aiohttp.ClientSession() as session, Prober(port) as prober:
        cpu = asyncio.ensure_future(_server_cpu_between(server_pid, seconds)) if server_pid is not None else None
        try:
            statuses = await send_hostile(session, port, bodies, concurrency, time.monotonic() + seconds)
        except BaseException:
            if cpu is not None:
                cpu.cancel()
            raise
        lat = LatencySummary.of((await prober.results())["/health"])  # interpolated between order statistics
    return {"seconds": seconds, "clients": concurrency, "health_probes": lat.count, "health_p50_ms": lat.p50_s * 1e3,
            "health_p99_ms": lat.p99_s * 1e3, "health_max_ms": lat.max_s * 1e3, "answers": sum(statuses.values()),
            "statuses": {str(k): v for k, v in sorted(statuses.items())}, "probe": prober.describe(),
            **({"server_cpu": await cpu} if cpu is not None else {})}


def floor_server(port: int, rate: float,
                 parse: bool = False) -> contextlib.AbstractContextManager[subprocess.Popen[bytes]]:
    """The floor server (``python -m gpu_mm.bench.hostile floor``) on 127.0.0.1:port, answering ``rate`` requests
    per second (0: unpaced), parsing each body as gpu-mm serve does when ``parse``; stopped on exit."""
    cmd = [sys.executable, "-m", "gpu_mm.bench.hostile", "floor", str(port), repr(rate)] + (["parse"] if parse else [])
    return served(cmd)


@contextlib.contextmanager
def work_processes(n: int) -> Iterator[list[subprocess.Popen[bytes]]]:
    """``n`` processes preprocessing :func:`valid_media` on the CPU, one item after another, as ``gpu-mm serve``'s
    slot processes do (``SCHED_IDLE`` where the slot processes go on it, torch's threads shared out the same
    way), ready when this yields; killed on exit."""
    procs = [subprocess.Popen([sys.executable, "-m", "gpu_mm.bench.hostile", "work", str(k), str(n)],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL) for k in range(n)]
    try:
        for p in procs:
            assert p.stdout is not None
            if p.stdout.readline().strip() != b"ready":
                raise RuntimeError(f"a work process did not start (exit {p.wait()})")
        yield procs
    finally:
        for p in procs:
            p.kill()
            p.wait()
            assert p.stdout is not None
            p.stdout.close()


def _work_main(first: int, processes: int) -> int:
    from ..concurrency import usable_cores
    from ..sched import set_idle_policy

    set_idle_policy()  # before torch starts its threads, as in a slot process
    import torch

    from .._procslots import process_threads
    from ..errors import GpuMMError
    from ..pipeline.families import Qwen2VLPreprocessor

    torch.set_num_threads(process_threads(usable_cores(), processes))
    pre = Qwen2VLPreprocessor(device="cpu")
    media = valid_media()
    print("ready", flush=True)
    k = first
    while True:
        kind, data = media[k % len(media)]
        k += 1
        try:
            pre(images=[data]) if kind == "image" else pre(videos=[data])
        except GpuMMError:
            pass


async def health_when_up(port: int, proc: subprocess.Popen[bytes], seconds: float, concurrency: int,
                         bodies: list[bytes]) -> dict[str, Any]:
    """Wait for the server ``proc`` to answer /health (:func:`gpu_mm.bench.http._wait_up`: it says why if the
    server exits instead), then :func:`health_under_hostile_load`, with the server's threads' CPU."""
    import aiohttp

    async with aiohttp.ClientSession() as session:
        await _wait_up(session, f"http://127.0.0.1:{port}", proc)
    return await health_under_hostile_load(port, seconds, concurrency, bodies, server_pid=proc.pid)


async def _server_cpu_between(pid: int, seconds: float) -> dict[str, float] | None:
    """:func:`server_cpu` of process ``pid`` over the middle half of the next ``seconds``."""
    await asyncio.sleep(seconds / 4)
    before, t0 = thread_times(pid), time.monotonic()
    await asyncio.sleep(seconds / 2)
    return server_cpu(before, thread_times(pid), time.monotonic() - t0, pid)


def thread_times(pid: int) -> dict[int, tuple[int, int]]:
    """``{tid: (ns run, ns waited runnable for a core)}`` for each thread of process ``pid`` since it started, from
    ``/proc/<pid>/task/<tid>/schedstat``; empty where the kernel does not say (or the process has gone)."""
    from ..sched import _schedstat

    try:
        tids = [int(tid) for tid in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        return {}
    stats = {tid: _schedstat(tid, pid) for tid in tids}
    return {tid: stat for tid, stat in stats.items() if stat is not None}  # None: exited since the listing


def server_cpu(before: dict[int, tuple[int, int]], after: dict[int, tuple[int, int]], seconds: float,
               pid: int) -> dict[str, float] | None:
    """Between two :func:`thread_times` of server ``pid``, ``seconds`` apart, in percent of one core: how long its
    main thread (the event loop's) ran and how long it waited, runnable, for a core (``loop_run_pct``,
    ``loop_wait_pct``), and how long its other threads ran together (``threads_run_pct``; a thread started in
    between counts from its start). A loop that waits runnable is waiting for the scheduler, not for the GIL
    (a thread waiting for the GIL sleeps). None where the kernel does not say."""
    if pid not in before or pid not in after or seconds <= 0:
        return None

    def pct(ns: int) -> float:
        return round(ns / 1e9 / seconds * 100, 1)

    others = sum(run - before.get(tid, (0, 0))[0] for tid, (run, _) in after.items() if tid != pid)
    return {"loop_run_pct": pct(after[pid][0] - before[pid][0]), "loop_wait_pct": pct(after[pid][1] - before[pid][1]),
            "threads_run_pct": pct(others)}


def compare(seconds: float, concurrency: int = 8, device: str = "cpu", server_args: list[str] | None = None,
            rounds: int = 1, floor_parse: bool = False, floor_work: bool = True,
            progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """``rounds`` times, one after the other on the same machine: ``gpu-mm serve`` under the hostile load; the
    floor server paced to the rate gpu-mm answered in that round; with ``floor_work`` the floor server again
    with :func:`work_processes` beside it, as many as gpu-mm's slot processes (the pixel work gpu-mm does for
    the valid items, without gpu-mm's serving); with ``floor_parse`` the floor server parsing each body as gpu-mm
    does. ``floor_work`` applies on the CPU only (on CUDA the pixel work is the device's, which these processes
    would not stand in for). ``server_args``: more ``gpu-mm serve`` options (e.g. ``--workers threads``). Returns
    each round's figures and the medians of their /health p99s (``p99_ms``)."""
    from ..concurrency import choose

    floor_work = floor_work and device == "cpu"

    c = choose(device)
    slot_processes = c.slots + c.express_slots
    bodies = hostile_bodies()
    runs = []
    arms = [("floor", False, 0)]  # (name, parse, work processes)
    arms += [("floor_work", False, slot_processes)] * floor_work + [("floor_parse", True, 0)] * floor_parse
    for k in range(rounds):
        port = _free_port()
        with server("gpu_mm", device, port, ["--timeout-s", "10", *(server_args or [])]) as proc:
            run = {"gpu_mm": asyncio.run(health_when_up(port, proc, seconds, concurrency, bodies))}
        rate = run["gpu_mm"]["answers"] / seconds
        for arm, parse, work in arms:
            port = _free_port()
            with work_processes(work), floor_server(port, rate, parse) as proc:
                run[arm] = asyncio.run(health_when_up(port, proc, seconds, concurrency, bodies))
            run[arm].update(paced_to_per_s=rate, work_processes=work)
        runs.append(run)
        if progress:
            progress(f"  round {k + 1}: /health p99 " + ", ".join(
                f"{arm} {r['health_p99_ms']:.1f} ms ({r['answers']} answers{_loop_wait(r)})" for arm, r in run.items()))
    p99 = {arm: statistics.median(r[arm]["health_p99_ms"] for r in runs) for arm in runs[0]}
    return {"runs": runs, "p99_ms": p99, "seconds": seconds, "clients": concurrency, "slot_processes": slot_processes,
            "note": "server, clients and prober share the machine's cores; the floor arms are paced to gpu-mm's rate"}


def _loop_wait(r: dict[str, Any]) -> str:
    cpu = r.get("server_cpu")
    return f", loop waited {cpu['loop_wait_pct']:.0f}% for a core" if cpu else ""


# ---------------------------------------------------------------------------------------------- the floor server

def _floor_app(rate: float, parse: bool = False) -> Any:
    import concurrent.futures

    from aiohttp import web

    from ..errors import InvalidRequest
    from ..metrics import PrometheusMetrics
    from ..serve import DEFAULT_MAX_ITEMS, limit_reads, parse_request, read_body
    from ..settings import Settings

    metrics = PrometheusMetrics()  # /metrics renders the same exposition gpu-mm serve's does (no processor watched)
    next_answer = [0.0]
    parser = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="floor-parse") if parse else None

    async def preprocess(request: web.Request) -> web.Response:  # the body read as gpu-mm serve reads it
        limit_reads(request.transport, Settings().read_chunk_bytes)
        chunks = await read_body(request.content, 64 * 2**20)
        if parser is not None:
            try:
                await asyncio.get_running_loop().run_in_executor(parser, parse_request, chunks, DEFAULT_MAX_ITEMS)
            except InvalidRequest:
                pass
        if rate > 0:  # answers spaced 1/rate apart: the clients always have requests waiting, so this is the rate
            loop = asyncio.get_running_loop()
            at = next_answer[0] = max(loop.time(), next_answer[0] + 1 / rate)
            await asyncio.sleep(at - loop.time())
        metrics.result("bad_input")
        return web.json_response({"error": "InvalidRequest", "message": "the floor server answers 400"}, status=400)

    async def health(_: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def prom(_: web.Request) -> web.Response:
        body, ctype = metrics.exposition()
        return web.Response(body=body, headers={"Content-Type": ctype})

    app = web.Application(client_max_size=64 * 2**20)
    app.router.add_post("/v1/preprocess", preprocess)
    app.router.add_get("/health", health)
    app.router.add_get("/metrics", prom)
    return app


def main(argv: list[str]) -> int:
    if argv[:1] == ["work"] and len(argv) == 3:
        return _work_main(int(argv[1]), int(argv[2]))
    if len(argv) not in (3, 4) or argv[0] != "floor" or argv[3:] not in ([], ["parse"]):
        print("usage: python -m gpu_mm.bench.hostile floor PORT RATE [parse] | work FIRST PROCESSES", file=sys.stderr)
        return 2
    from aiohttp import web

    from ..runtime import freeze_gc
    from ..settings import Settings

    sys.setswitchinterval(Settings().switch_interval_s or sys.getswitchinterval())  # as gpu-mm serve runs
    app = _floor_app(float(argv[2]), parse=argv[3:] == ["parse"])
    freeze_gc()
    web.run_app(app, host="127.0.0.1", port=int(argv[1]), print=None, access_log=None)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
