"""One preprocessor per node against one per front end: 4 front-end processes each with an in-process
``Preprocessor``, against the same 4 processes as ``gpu_mm.Client`` s of one ``gpu-mm serve`` on a Unix socket
(features as safetensors bodies, and as leased shared blocks: ``handles=True``, each released once read), side by
side in one run, on the same trace.

The trace is what several front ends of one engine see: each front end gets the same requests (images and short
clips, encoded) in its own order, so every item reaches the node once per front end. Measured per setup: the wall
time of the whole trace, the latency of each request (p50, p99), the items decoded (an item served from a cache or
joined to a computation in flight is not), and the memory of every process involved while the trace runs (the
proportional set size, PSS, summed over the front ends, the service and their slot processes: shared pages such as
torch's libraries counted once in all).

Both setups use gpu-mm's defaults for the machine (slot processes on the CPU, the feature cache on). Run it where
it is to be judged (a serving node's cores); the figures of a run go to ``benchmarks/results/``.

    python benchmarks/node_service.py [--front-ends 4] [--images 8] [--clips 2] [--concurrency 2] [--distinct]
                                      [--device cpu|cuda] [--decoded] [--out FILE]

``--distinct`` gives each front end media of its own: nothing repeats, so the service's shared cache gains nothing
and what remains is the price of the extra hop and the gain of one set of slot processes instead of four.

``--decoded``: the front ends hand over decoded pixels, as vLLM's processors get them (images as H x W x 3 arrays,
clips as their first 16 frames): in-process they go straight in, to a service in shared memory (``gpu_mm.uploads``),
as the drop-ins send them in client mode (with handles).

``--device cuda`` (a GPU node; the GPU check): every preprocessor on the GPU, and per setup also the processes that
hold a CUDA context and their device memory at its peak (``nvidia-smi --query-compute-apps``, sampled with PSS).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import pathlib
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import psutil

ROOT = pathlib.Path(__file__).resolve().parents[1]


def trace(images: int, clips: int, first_seed: int = 0, decoded: bool = False) -> list[tuple[str, object]]:
    from gpu_mm.media.synth import make_image, make_video

    items: list[tuple[str, object]] = [("image", make_image(720, 1280, "JPEG", seed=first_seed + i))
                                       for i in range(images)]
    items += [("video", make_video(60, 240, 320, fps=30, seed=first_seed + i)) for i in range(clips)]
    if decoded:
        items = [(kind, _decode(kind, data)) for kind, data in items]  # type: ignore[arg-type]
    return items


def _decode(kind: str, data: bytes) -> object:
    """An item as a front end that decoded it holds it: H x W x 3, or a clip's first 16 frames T x H x W x 3."""
    import io

    import numpy as np
    from PIL import Image

    if kind == "image":
        return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    from gpu_mm.media.sources import load_source
    from gpu_mm.media.video import get_video_decoder, probe_video

    src = load_source(data, "video")
    return get_video_decoder("pyav").get_frames_at(src, probe_video(src), list(range(16))).numpy()


# ---------------------------------------------------------------- one front end (a child process)


def front_end(mode: str, url: str, images: int, clips: int, concurrency: int, seed: int, ready: str,
              distinct: bool, device: str = "cpu", decoded: bool = False) -> None:
    """Run the trace (shuffled by ``seed``; with ``distinct``, media of this front end's own) through an in-process
    preprocessor or a client; print a JSON line."""
    import gpu_mm

    items = trace(images, clips, first_seed=1000 * (seed + 1) if distinct else 0, decoded=decoded)
    random.Random(seed).shuffle(items)
    pre: gpu_mm.Preprocessor | gpu_mm.Client
    if mode == "in-process":
        pre = gpu_mm.Preprocessor.for_model("qwen2_vl", device=device)
    else:
        pre = gpu_mm.Client(url, timeout_s=600, handles=mode == "client-handles")

    async def main() -> dict:
        if isinstance(pre, gpu_mm.Preprocessor):
            await pre.start()  # slot processes ready before the clock starts, as a server's would be
        pathlib.Path(ready).touch()
        while not pathlib.Path(ready + ".go").exists():
            await asyncio.sleep(0.01)
        gate = asyncio.Semaphore(concurrency)
        latencies: list[float] = []
        states: list[str | None] = []

        async def one(kind: str, data: object) -> None:
            async with gate:
                t0 = time.perf_counter()
                feats = await pre.preprocess(**{f"{kind}s": [data]})
                latencies.append(time.perf_counter() - t0)
                states.append(feats.items[0].cache)
                if feats.handle is not None:  # the engine is done with the block
                    sum(float(t.sum()) for t in feats.to_dict().values())  # read it once, as an engine would
                    await pre.release(feats)

        t0 = time.perf_counter()
        await asyncio.gather(*(one(kind, data) for kind, data in items))
        wall = time.perf_counter() - t0
        await pre.aclose()
        return {"wall_s": wall, "latencies_s": latencies, "decoded": sum(s in (None, "miss") for s in states)}

    print(json.dumps(asyncio.run(main())))


# ---------------------------------------------------------------- the parent


def pss(pids: list[int]) -> int:
    """PSS in bytes of ``pids`` and all their descendants."""
    seen: set[int] = set()
    total = 0
    for pid in pids:
        try:
            procs = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
        except psutil.NoSuchProcess:
            continue
        for p in procs:
            if p.pid in seen:
                continue
            seen.add(p.pid)
            try:
                total += p.memory_full_info().pss
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass
    return total


def gpu_apps(text: str | None = None) -> dict[int, int]:
    """The processes holding a CUDA context and their device memory in bytes: ``nvidia-smi
    --query-compute-apps=pid,used_memory --format=csv,noheader,nounits`` (``text``: its output, for a test); empty
    where there is no nvidia-smi."""
    if text is None:
        try:
            text = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory",
                                   "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=10).stdout
        except (OSError, subprocess.TimeoutExpired):
            return {}
    apps: dict[int, int] = {}
    for line in text.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 2 and parts[0].isdigit() and parts[1].isdigit():
            apps[int(parts[0])] = apps.get(int(parts[0]), 0) + int(parts[1]) * 2**20
    return apps


def tree(pids: list[int]) -> set[int]:
    """``pids`` and all their descendants."""
    out: set[int] = set()
    for pid in pids:
        try:
            out |= {pid, *(c.pid for c in psutil.Process(pid).children(recursive=True))}
        except psutil.NoSuchProcess:
            pass
    return out


def wait_healthy(sock: str, server: subprocess.Popen) -> None:
    """Until the service answers ``GET /health`` on its socket (it readies its slot processes first)."""
    import socket

    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and server.poll() is None:
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(5)
                s.connect(sock)
                s.sendall(b"GET /health HTTP/1.0\r\n\r\n")
                if b" 200 " in s.recv(64).split(b"\r\n")[0]:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError("gpu-mm serve did not become healthy")


def run_setup(mode: str, args: argparse.Namespace, url: str, extra_pids: list[int]) -> dict:
    d = tempfile.mkdtemp()
    procs = []
    for i in range(args.front_ends):
        ready = os.path.join(d, f"ready-{i}")
        cmd = [sys.executable, __file__, "--child", mode, "--url", url, "--images", str(args.images),
               "--clips", str(args.clips), "--concurrency", str(args.concurrency), "--seed", str(i),
               "--ready", ready, "--device", args.device] + (["--distinct"] if args.distinct else []) + (
                   ["--decoded"] if args.decoded else [])
        procs.append((subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, cwd=ROOT), ready))
    while not all(os.path.exists(r) for _, r in procs):
        time.sleep(0.05)
    peak = [0]
    gpu = {"contexts": 0, "bytes": 0}
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            pids = [p.pid for p, _ in procs] + extra_pids
            peak[0] = max(peak[0], pss(pids))
            if args.device != "cpu":
                ours = tree(pids)
                held = {pid: n for pid, n in gpu_apps().items() if pid in ours}
                gpu["contexts"] = max(gpu["contexts"], len(held))
                gpu["bytes"] = max(gpu["bytes"], sum(held.values()))
            stop.wait(0.25)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    for _, r in procs:
        pathlib.Path(r + ".go").touch()
    outs = [json.loads(p.communicate()[0].strip().splitlines()[-1]) for p, _ in procs]
    stop.set()
    # From the start signal to the last front end's last answer (each front end times its own trace; its
    # shutdown afterwards is not counted).
    wall = max(o["wall_s"] for o in outs)
    watcher.join()
    lat = sorted(x for o in outs for x in o["latencies_s"])
    requests = len(lat)
    return {"wall_s": wall, "requests": requests, "requests_per_s": requests / wall,
            "p50_ms": statistics.median(lat) * 1e3, "p99_ms": lat[min(len(lat) - 1, int(0.99 * len(lat)))] * 1e3,
            "decoded": sum(o["decoded"] for o in outs), "peak_pss_mib": peak[0] / 2**20,
            "cuda_contexts": gpu["contexts"], "peak_device_mib": gpu["bytes"] / 2**20}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--front-ends", type=int, default=4)
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--clips", type=int, default=2)
    ap.add_argument("--concurrency", type=int, default=2, help="requests in flight per front end")
    ap.add_argument("--distinct", action="store_true",
                    help="each front end its own media (no repeats across front ends: no cache to share)")
    ap.add_argument("--device", default="cpu", help="cpu, or cuda on a GPU node")
    ap.add_argument("--decoded", action="store_true", help="the front ends hand over decoded pixels (as vLLM's)")
    ap.add_argument("--out", default=None)
    ap.add_argument("--child", default=None)
    ap.add_argument("--url", default="")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--ready", default="")
    args = ap.parse_args()
    if args.child:
        front_end(args.child, args.url, args.images, args.clips, args.concurrency, args.seed, args.ready,
                  args.distinct, args.device, args.decoded)
        return 0
    from gpu_mm.bench.machine import machine_info, machine_label

    result: dict = {"machine": machine_info(), "front_ends": args.front_ends, "device": args.device,
                    "decoded": args.decoded,
                    "trace": {"images_720p_jpeg": args.images, "clips_240p_2s": args.clips,
                              "concurrency_per_front_end": args.concurrency,
                              "repeats_across_front_ends": not args.distinct}}
    print(f"machine: {machine_label(result['machine'])}", flush=True)
    result["in_process"] = run_setup("in-process", args, "", [])
    for key, mode in (("service", "client"), ("service_handles", "client-handles")):
        sock = os.path.join(tempfile.mkdtemp(), "gpu-mm.sock")  # a fresh service (and cache) for each
        server = subprocess.Popen([sys.executable, "-m", "gpu_mm.cli", "serve", "--model", "qwen2_vl", "--device",
                                   args.device, "--port", "0", "--uds", sock], cwd=ROOT, stderr=subprocess.DEVNULL)
        try:
            wait_healthy(sock, server)
            result[key] = run_setup(mode, args, f"unix://{sock}", [server.pid])
        finally:
            server.terminate()
            server.wait(30)
    columns = [result[k] for k in ("in_process", "service", "service_handles") if k in result]
    print(f"{args.front_ends} front ends x ({args.images} JPEGs 720p + {args.clips} clips"
          f"{', decoded' if args.decoded else ''}), {args.concurrency} in flight each, "
          f"{'each its own media' if args.distinct else 'the same media in each front end'}:")
    print(f"  {'':22s} {'in-process':>12s} {'one service':>12s}" + (f" {'+ handles':>12s}" if len(columns) > 2 else ""))
    rows = [("wall_s", "wall (s)"), ("requests_per_s", "requests/s"), ("p50_ms", "latency p50 (ms)"),
            ("p99_ms", "latency p99 (ms)"), ("decoded", "items decoded"), ("peak_pss_mib", "peak PSS (MiB)")]
    if args.device != "cpu":
        rows += [("cuda_contexts", "CUDA contexts"), ("peak_device_mib", "peak device memory (MiB)")]
    for key, label in rows:
        print(f"  {label:22s}" + "".join(f" {col[key]:12.1f}" for col in columns))
    if args.out:
        pathlib.Path(args.out).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
