"""Reliability under hostile input: peak memory of the worst items against the bound gpu-mm states for them,
``/health`` latency while hostile requests are served, and RSS growth over a soak of mixed calls.

    python benchmarks/reliability.py [--quick] [--out benchmarks/results]

Peak memory: each item runs in a fresh process after a warm-up; the figure is the process's peak RSS
(``VmHWM``) minus its RSS just before the item, set beside the plan's stated bound (``plan.nbytes``,
what the memory budget admits) and the output's own size. Items are generated in a separate process and
passed as files, so their generation does not count.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import pathlib
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

from gpu_mm.bench.hostile import jpeg_claiming, png

HERE = pathlib.Path(__file__).resolve().parent


# ---------------------------------------------------------------------------------------------- the items

def make_items(folder: pathlib.Path, quick: bool) -> list[dict[str, Any]]:
    from gpu_mm.media.synth import make_image, make_video

    items = [
        {"name": "png_rgba_8192x8192 (max_image_pixels)", "kind": "image", "make": lambda: png(8192, 8192, "RGBA")},
        {"name": "jpeg_8192x8192", "kind": "image", "make": lambda: make_image(8192, 8192, "JPEG")},
        {"name": "jpeg_1.3KB_claims_8000x8000", "kind": "image", "make": lambda: jpeg_claiming(8000, 8000)},
        {"name": "png_rgba_9400x9400 (over the limit)", "kind": "image", "make": lambda: png(9400, 9400, "RGBA")},
        {"name": f"h264_1080p_{200 if quick else 800}_frames_1fps", "kind": "video",
         "make": lambda: make_video(200 if quick else 800, 1080, 1920, fps=1, gop=30, bit_rate=400_000)},
        {"name": "h264_4320x7680_8_frames", "kind": "video", "make": lambda: make_video(8, 4320, 7680, gop=8)},
    ]
    for it in items:
        path = folder / (it["name"].split(" ")[0] + ".bin")
        path.write_bytes(it.pop("make")())
        it["path"] = str(path)
        it["bytes"] = path.stat().st_size
    return items


PEAK_CHILD = r"""
import json, resource, sys, time
import gpu_mm
from gpu_mm.media.synth import make_image, make_video
kind, path = sys.argv[1], sys.argv[2]
pre = gpu_mm.Qwen2VLPreprocessor("cpu", cache_bytes=0)
pre(images=[make_image(64, 64, "PNG")], videos=[make_video(8, 64, 64)])  # warm-up: imports, allocator
data = open(path, "rb").read()
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()
plans = None
try:
    plans = pre.plan(images=None if kind == "video" else [data], videos=[data] if kind == "video" else None)
except gpu_mm.GpuMMError:
    pass
before = rss()
t0 = time.perf_counter()
try:
    feats = pre(images=[data]) if kind == "image" else pre(videos=[data])
    out = feats.pixel_values if kind == "image" else feats.pixel_values_videos
    outcome, out_bytes = "ok", out.numel() * out.element_size()
    item = feats.items[0]
    detail = {"source": list(item.source_size), "resized": list(item.resized), "frames": len(item.frame_indices or [0])}
except gpu_mm.GpuMMError as exc:
    outcome, out_bytes, detail = f"{type(exc).__name__}: {str(exc)[:160]}", 0, {}
seconds = time.perf_counter() - t0
with open("/proc/self/status") as f:  # VmHWM: this process's own peak (ru_maxrss keeps the parent's)
    peak = next(int(line.split()[1]) for line in f if line.startswith("VmHWM")) * 1024
print(json.dumps({"outcome": outcome, "seconds": seconds, "rss_before": before, "peak": peak,
                  "peak_over_before": peak - before, "output_bytes": out_bytes,
                  "bound": plans[0].nbytes if plans else None, "budget": pre.memory_budget_bytes, **detail}))
"""


def peak_memory(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for it in items:
        proc = subprocess.run([sys.executable, "-c", PEAK_CHILD, it["kind"], it["path"]], capture_output=True,
                              text=True, timeout=1800)
        if proc.returncode != 0:
            rows.append({"item": it["name"], "crashed": proc.stderr[-800:]})
            continue
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        r.update(item=it["name"], input_bytes=it["bytes"])
        if r["bound"]:
            r["peak_over_bound"] = r["peak_over_before"] / r["bound"]
        rows.append(r)
    return rows


# ---------------------------------------------------------------------------------------------- /health under attack

def health_benchmark(seconds: float, concurrency: int, workers: str = "threads",
                     server_args: list[str] | None = None) -> dict:
    from gpu_mm.bench.hostile import health_when_up, hostile_bodies
    from gpu_mm.bench.http import _free_port
    from gpu_mm.bench.http import server as serve_cmd

    port = _free_port()
    # --cache-mb 0 (server()'s): hostile traffic repeats, every request computed, as in the committed run
    with serve_cmd("gpu_mm", "cpu", port, ["--timeout-s", "10", "--workers", workers, *(server_args or [])]) as server:
        result = asyncio.run(health_when_up(port, server, seconds, concurrency, hostile_bodies()))
        result["server_vm_hwm_mib"] = _status_mib(server.pid, "VmHWM")
        # Slot processes (--workers processes) are the server's children: their peaks count too.
        kids = []
        for t in os.listdir(f"/proc/{server.pid}/task"):
            try:
                kids += [int(k) for k in pathlib.Path(f"/proc/{server.pid}/task/{t}/children").read_text().split()]
            except FileNotFoundError:  # the thread ended meanwhile
                pass
        result["slot_processes"] = len(kids)
        # Their peaks count pages they share with each other and the server (libraries, the output blocks);
        # their private (anonymous) memory at the end is what they add.
        result["slot_processes_vm_hwm_mib"] = sum(_status_mib(k, "VmHWM") for k in kids)
        result["slot_processes_rss_anon_mib"] = sum(_status_mib(k, "RssAnon") for k in kids)
        return result


def _status_mib(pid: int, field: str) -> float:
    """A ``/proc/<pid>/status`` memory field (kB there) in MiB."""
    with open(f"/proc/{pid}/status") as f:
        return next(int(ln.split()[1]) for ln in f if ln.startswith(field)) / 1024


# ---------------------------------------------------------------------------------------------- starvation

async def _cheap_behind_bombs(express_slots: int, bombs: list[bytes], cheap: bytes, n_cheap: int) -> dict:
    import gpu_mm

    pre = gpu_mm.Qwen2VLPreprocessor("cpu", express_slots=express_slots, cache_bytes=0)
    pre(images=[cheap])  # warm-up
    t0 = time.perf_counter()
    heavy = [asyncio.ensure_future(pre.preprocess(videos=[b])) for b in bombs]
    await asyncio.sleep(0.05)  # the bombs are admitted first, as in the reported case
    lat: list[float] = []

    async def one() -> None:
        t = time.perf_counter()
        await pre.preprocess(images=[cheap])
        lat.append(time.perf_counter() - t)

    await asyncio.gather(*(one() for _ in range(n_cheap)))
    cheap_done = time.perf_counter() - t0
    await asyncio.gather(*heavy)
    all_done = time.perf_counter() - t0
    await pre.aclose()
    lat.sort()
    return {"express_slots": express_slots, "cheap_p50_ms": statistics.median(lat) * 1e3,
            "cheap_max_ms": lat[-1] * 1e3, "cheap_all_done_s": cheap_done, "everything_done_s": all_done}


def starvation(quick: bool) -> dict:
    from gpu_mm.media.synth import make_image, make_video

    bombs = [make_video(120 if quick else 300, 720, 1280, fps=4, gop=30) for _ in range(2)]
    cheap = make_image(720, 1280, "JPEG")
    runs = [asyncio.run(_cheap_behind_bombs(e, bombs, cheap, 12)) for e in (0, 1, 0, 1)]
    by = {e: [r for r in runs if r["express_slots"] == e] for e in (0, 1)}
    return {"runs": runs, "cheap_p50_ratio_off_over_on": statistics.median(r["cheap_p50_ms"] for r in by[0])
            / statistics.median(r["cheap_p50_ms"] for r in by[1])}


# ---------------------------------------------------------------------------------------------- soak

async def _soak(calls: int, workers: str = "threads") -> dict:
    import gpu_mm
    from gpu_mm.media.synth import make_image, make_video

    def rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * resource.getpagesize()

    good_img, good_vid = make_image(120, 160, "JPEG"), make_video(16, 64, 96, gop=4)
    bad = [b"\x00" * 300, good_vid[: len(good_vid) // 2], jpeg_claiming(3000, 3000), "/etc/passwd"]
    pre = gpu_mm.Qwen2VLPreprocessor("cpu", limits=gpu_mm.MediaLimits.for_network(), cache_bytes=0, workers=workers)
    proc = gpu_mm.AsyncMMDataProcessor(pre, max_concurrent_calls=4, max_queued=8, timeout_s=5)
    marks = {}

    async def one(i: int) -> None:
        kind = i % 5
        try:
            if kind == 0:
                await proc.process(image_data=[good_img])
            elif kind == 1:
                await proc.process(image_data=[bad[i % len(bad)]], video_data=[good_vid])
            elif kind == 2:
                task = asyncio.ensure_future(proc.process(video_data=[good_vid]))
                await asyncio.sleep(0.001)
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
            elif kind == 3:
                await asyncio.wait_for(proc.process(video_data=[good_vid]), 0.002)
            else:
                await proc.process(video_data=[good_vid], fps=1.0)
        except (gpu_mm.GpuMMError, asyncio.TimeoutError):
            pass

    batch = 16
    for start in range(0, calls, batch):
        await asyncio.gather(*(one(i) for i in range(start, min(calls, start + batch))))
        done = min(calls, start + batch)
        if done >= calls // 5 and "after_20pct" not in marks:
            marks["after_20pct"] = rss()
    await asyncio.sleep(0.2)
    marks["end"] = rss()
    s = proc.statistics()
    await proc.aclose()
    await pre.aclose()
    return {"calls": calls, "rss_after_20pct_mib": marks["after_20pct"] / 2**20, "rss_end_mib": marks["end"] / 2**20,
            "growth_mib": (marks["end"] - marks["after_20pct"]) / 2**20, "in_flight": s.in_flight,
            "queued": s.queued, "abandoned": s.abandoned, "completed": s.completed, "failed": s.failed,
            "timed_out": s.timed_out, "cancelled": s.cancelled, "rejected": s.rejected,
            "threads": len(os.listdir("/proc/self/task")), "fds": len(os.listdir("/proc/self/fd")),
            "workers": workers, "process_starts": pre.statistics().process_starts}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=None)
    ap.add_argument("--skip", default="", help="comma-separated sections to skip: memory,starvation,health,soak")
    ap.add_argument("--workers", default="threads", choices=["threads", "processes"],
                    help="where the health and soak sections' slot jobs run (gpu_mm.Preprocessor's workers)")
    args = ap.parse_args()
    from gpu_mm.bench.machine import machine_info, machine_label, write_result

    info = machine_info()
    skip = set(filter(None, args.skip.split(",")))
    res: dict[str, Any] = {}
    print(f"reliability -- {machine_label(info)}")
    if "memory" not in skip:
        with tempfile.TemporaryDirectory() as tmp:
            items = make_items(pathlib.Path(tmp), args.quick)
            res["peak_memory"] = peak_memory(items)
        print(f"\n{'item':40s} {'outcome':14s} {'s':>6s} {'peak-before':>12s} {'bound':>10s} {'ratio':>6s} "
              f"{'output':>9s}")
        for r in res["peak_memory"]:
            if "crashed" in r:
                print(f"{r['item']:40s} CRASHED {r['crashed'][-200:]}")
                continue
            bound = f"{r['bound'] / 2**20:8.0f}Mi" if r["bound"] else "-"
            ratio = f"{r['peak_over_bound']:6.2f}" if r.get("peak_over_bound") else "-"
            peak = f"{r['peak_over_before'] / 2**20:10.0f}Mi"
            print(f"{r['item']:40s} {r['outcome'][:14]:14s} {r['seconds']:6.1f} {peak} {bound:>10s} {ratio:>6s} "
                  f"{r['output_bytes'] / 2**20:7.0f}Mi")
    if "starvation" not in skip:
        res["starvation"] = starvation(args.quick)
        print("\n12 cheap 720p JPEGs sent while two long 720p videos hold the one slot (interleaved runs):")
        for r in res["starvation"]["runs"]:
            print(f"  express_slots={r['express_slots']}: cheap p50 {r['cheap_p50_ms']:8.0f} ms, max "
                  f"{r['cheap_max_ms']:8.0f} ms; cheap all done {r['cheap_all_done_s']:5.1f} s, everything "
                  f"{r['everything_done_s']:5.1f} s")
        print(f"  cheap p50 without / with the express slot: {res['starvation']['cheap_p50_ratio_off_over_on']:.0f}x")
    if "health" not in skip:
        res["health_under_hostile_load"] = health_benchmark(10 if args.quick else 30, 8, args.workers)
        h = res["health_under_hostile_load"]
        print(f"\n/health while 8 clients send hostile requests: p50 {h['health_p50_ms']:.1f} ms, p99 "
              f"{h['health_p99_ms']:.1f} ms, max {h['health_max_ms']:.1f} ms over {h['health_probes']} probes; "
              f"answers {h['statuses']}; server peak RSS {h['server_vm_hwm_mib']:.0f} MiB"
              + (f" + {h['slot_processes']} slot processes (peaks {h['slot_processes_vm_hwm_mib']:.0f} MiB, "
                 f"private memory at the end {h['slot_processes_rss_anon_mib']:.0f} MiB)"
                 if h["slot_processes"] else ""))
    if "soak" not in skip:
        res["soak"] = asyncio.run(_soak(1000 if args.quick else 5000, args.workers))
        s = res["soak"]
        print(f"\nsoak: {s['calls']} mixed calls; RSS {s['rss_after_20pct_mib']:.0f} MiB after 20% -> "
              f"{s['rss_end_mib']:.0f} MiB at the end ({s['growth_mib']:+.1f} MiB); in flight {s['in_flight']}, "
              f"queued {s['queued']}, abandoned {s['abandoned']}; threads {s['threads']}, fds {s['fds']}")
    if args.out:
        # A partial rerun (--skip) updates the sections it ran.
        name = "reliability_cpu" if args.workers == "threads" else "reliability_slot_processes_cpu"
        print(f"wrote {write_result(args.out, name, info, res, merge=bool(skip))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
