"""One video's keyframe runs decoded at once on spare threads (``decode_threads``) against one decoder per video,
side by side and interleaved in one run, on the CPU path with its default workers (slot processes):

1. One request at a time, a 30 s 720p H.264 clip (60 planned frames of 900, a keyframe every 2 s, B-frames):
   latency p50. Twice: encoded with one slice per frame (as phones, cameras and ``ffmpeg``'s x264 write it: FFmpeg
   then decodes it on one core), and with several slices (PyAV's default x264, which FFmpeg's slice threads
   already spread over the cores).
2. 8 such one-slice clips at once: wall time and CPU seconds, the machine busy.

3. The decoder alone on the one-slice clip's planned frames, against the library's own answer to a one-slice
   stream: FFmpeg's frame threads (``thread_type="FRAME"``, one per core), with keyframe runs (one per core, at most
   the 4 a plan reserves; with cores to spare beyond them, also runs of frame-threaded decoders) and with one
   thread; wall time and CPU seconds (this process's, every thread counted).

4. With vLLM installed: the vLLM plug-in's video loader (``gpu_mm.integrations.vllm``, PyAV), the one-slice clip's
   frames for Qwen2-VL, one load at a time, with no thread lent and with ``--lend``.

The configurations: ``slots`` slots and an express slot with no threads lent (``decode_threads=0``), the same with
``--lend`` threads lent whatever runs (``decode_threads=N``), and the default (the cores no running slot job uses,
taken as a video's job starts). Same features in all (checked each run).

    python benchmarks/split_decode.py [--reps 5] [--lend 1] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import asyncio
import pathlib
import resource
import statistics
import sys
import time
from typing import Any

import torch

from gpu_mm.bench.machine import machine_info, report
from gpu_mm.media.synth import make_video
from gpu_mm.pipeline.families import Qwen2VLPreprocessor


def _cpu_s() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)  # slot processes count once they exit
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def _children_cpu_s(pre: Any) -> float:
    """CPU seconds of the preprocessor's running slot processes so far (/proc: they have not exited)."""
    total = 0.0
    for pid in pre.statistics().process_pids:
        fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / 100  # utime, stime in clock ticks (100 Hz)
    return total


async def measure(reps: int = 5, lend: int = 1, slots: int | None = None) -> dict[str, Any]:
    clips = {"one_slice": make_video(900, 720, 1280, fps=30, gop=60, bframes=2, bit_rate=550_000, single_slice=True),
             "several_slices": make_video(900, 720, 1280, fps=30, gop=60, bframes=2, bit_rate=550_000)}
    configs: dict[str, int | None] = {"no_threads_lent": 0, f"{lend}_lent": lend, "default_idle_cores": None}
    pres = {name: Qwen2VLPreprocessor("cpu", cache_bytes=0, num_slots=slots, decode_threads=n)
            for name, n in configs.items()}
    try:
        for pre in pres.values():
            await pre.start()
        runs: dict[str, dict[str, list[float]]] = {clip: {name: [] for name in pres} for clip in clips}
        threads: dict[str, dict[str, int]] = {clip: {} for clip in clips}
        for clip, data in clips.items():  # warm, and the same features from each
            got = {name: await pre.preprocess(videos=[data]) for name, pre in pres.items()}
            first, *others = got.values()
            assert all(torch.equal(first.pixel_values_videos, o.pixel_values_videos) for o in others), clip
        for _ in range(reps):
            for clip, data in clips.items():
                for name, pre in pres.items():
                    t0 = time.perf_counter()
                    out = await pre.preprocess(videos=[data])
                    runs[clip][name].append(time.perf_counter() - t0)
                    threads[clip][name] = out.items[0].decoded.threads
        load: dict[str, list[dict[str, float]]] = {name: [] for name in pres}
        for pre in pres.values():  # every slot warm (one at a time above used one slot): its first job costs more
            await asyncio.gather(*(pre.preprocess(videos=[clips["one_slice"]]) for _ in range(8)))
        for _ in range(max(3, reps // 2)):
            for name, pre in pres.items():
                c0, k0, t0 = _cpu_s(), _children_cpu_s(pre), time.perf_counter()
                outs = await asyncio.gather(*(pre.preprocess(videos=[clips["one_slice"]]) for _ in range(8)))
                load[name].append({"wall_s": time.perf_counter() - t0,
                                   "cpu_s": _cpu_s() - c0 + _children_cpu_s(pre) - k0,
                                   "runs": [o.items[0].decoded.threads for o in outs]})
        concurrency = next(iter(pres.values())).concurrency.as_dict()
    finally:
        for pre in pres.values():
            await pre.aclose()
    p50 = {clip: {name: statistics.median(v) * 1e3 for name, v in r.items()} for clip, r in runs.items()}
    names = list(pres)
    return {
        "clip": "30 s 720p H.264, GOP 60, 2 B-frames, 900 frames, 60 planned -> grid [30, 40, 72]",
        "slots": {k: concurrency[k] for k in ("cores", "slots", "express_slots")},
        "one_request_p50_ms": p50,
        "keyframe_runs": threads,
        "one_request_speedup": {clip: {name: p50[clip][names[0]] / p50[clip][name] for name in names[1:]}
                                for clip in clips},
        "eight_at_once": {name: {k: statistics.median(r[k] for r in v) for k in ("wall_s", "cpu_s")}
                          for name, v in load.items()},
        "eight_at_once_rounds": load,
        "rounds_ms": {clip: {name: [round(x * 1e3, 1) for x in v] for name, v in r.items()}
                      for clip, r in runs.items()},
    }


def measure_vllm_loader(reps: int = 5, lend: int = 1) -> dict[str, Any]:
    """The vLLM loader's decode of the one-slice clip (p50 ms), no thread lent and ``lend`` lent, interleaved."""
    try:
        from gpu_mm.integrations.vllm import _Loads
    except ImportError as exc:
        return {"not measured": f"vLLM is not installed ({exc})"}
    from gpu_mm.settings import Settings

    clip = make_video(900, 720, 1280, fps=30, gop=60, bframes=2, bit_rate=550_000, single_slice=True)
    loads = {name: _Loads(Settings(decode_threads=n)) for name, n in (("no_threads_lent", 0), (f"{lend}_lent", lend))}
    times: dict[str, list[float]] = {name: [] for name in loads}
    frames = {}
    for _ in range(reps + 1):
        for name, loader in loads.items():
            t0 = time.perf_counter()
            frames[name], _ = loader.decode(loader.plan("qwen2_vl", clip, {}))
            times[name].append(time.perf_counter() - t0)
    first, second = frames.values()
    assert (first == second).all()
    for loader in loads.values():
        loader.close()
    p50 = {name: statistics.median(v[1:]) * 1e3 for name, v in times.items()}  # the first round warms
    return {"frames": list(first.shape), "p50_ms": p50, "speedup": p50["no_threads_lent"] / p50[f"{lend}_lent"]}


def measure_decoder_alone(reps: int = 5) -> dict[str, Any]:
    """PyAV on the one-slice clip's 60 planned frames (Qwen2-VL's plan), interleaved: one FFmpeg thread, FFmpeg's
    frame threads (one per core), keyframe runs at once (one per core, at most ``SPLIT_MAX_DECODERS``); wall p50 and
    CPU seconds p50. Every configuration's frames equal the first's (checked)."""
    import os

    from gpu_mm.media.sources import load_source
    from gpu_mm.media.video import PyAVDecoder, probe_video
    from gpu_mm.media.video.runs import split_starts
    from gpu_mm.pipeline.memory import SPLIT_MAX_DECODERS

    cores = len(os.sched_getaffinity(0))
    clip = make_video(900, 720, 1280, fps=30, gop=60, bframes=2, bit_rate=550_000, single_slice=True)
    src = load_source(clip, "video")
    info = probe_video(src)
    indices = Qwen2VLPreprocessor("cpu", cache_bytes=0, workers="threads").plan(videos=[clip])[0].indices
    assert indices is not None
    starts = split_starts(info, indices, min(cores, SPLIT_MAX_DECODERS), 2)
    configs = {
        "one_thread": lambda: PyAVDecoder("SLICE", 1).get_frames_at(src, info, indices),
        f"frame_threads_{cores}": lambda: PyAVDecoder("FRAME", cores).get_frames_at(src, info, indices),
        f"keyframe_runs_{len(starts)}": lambda: PyAVDecoder().get_frames_in_runs(src, info, indices, starts),
    }
    per_run = cores // len(starts)
    if per_run >= 2:  # cores beyond the runs' (16 cores: 4 runs of 4 frame threads each)
        configs[f"keyframe_runs_{len(starts)}_of_{per_run}_frame_threads"] = (
            lambda: PyAVDecoder("FRAME", per_run).get_frames_in_runs(src, info, indices, starts))
    first = configs["one_thread"]()
    wall: dict[str, list[float]] = {name: [] for name in configs}
    cpu: dict[str, list[float]] = {name: [] for name in configs}
    for _ in range(reps):
        for name, decode in configs.items():
            t0, c0 = time.perf_counter(), time.process_time()
            frames = decode()
            wall[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
            assert torch.equal(frames, first), name
    p50 = {name: statistics.median(v) * 1e3 for name, v in wall.items()}
    return {"cores": cores, "frames": len(indices), "wall_p50_ms": p50,
            "cpu_p50_s": {name: statistics.median(v) for name, v in cpu.items()},
            "speedup_vs_one_thread": {name: p50["one_thread"] / v for name, v in p50.items()}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--lend", type=int, default=1, help="threads lent in the second configuration")
    parser.add_argument("--slots", type=int, default=None, help="slots (default: chosen for the machine)")
    parser.add_argument("--out", type=pathlib.Path)
    args = parser.parse_args()
    result = {"machine": machine_info(), **asyncio.run(measure(args.reps, args.lend, args.slots)),
              "decoder_alone": measure_decoder_alone(args.reps),
              "vllm_loader": measure_vllm_loader(args.reps, args.lend)}
    report(result, args.out, quiet=("rounds_ms",))
    return 0


if __name__ == "__main__":
    sys.exit(main())
