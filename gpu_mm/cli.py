"""The ``gpu-mm`` command: ``preprocess`` media into a model family's features, ``serve`` them over HTTP, or
``bench`` this machine."""

from __future__ import annotations

import argparse
import asyncio
import json
import pathlib
import statistics
import sys
import time
from typing import Any

from .errors import GpuMMError
from .settings import Settings

_MODEL_HELP = ("a model family or transformers model_type (qwen2_vl, qwen2_5_vl, qwen3_vl, qwen3_vl_moe, qwen3_5, "
               "glm4v, glm4v_moe, glm46v, internvl, internvl_chat, gemma3, qwen2_5_omni, qwen3_omni_moe), or a local "
               "model folder whose processor configs to follow (default qwen2_vl)")
_OPTIONS = ("fps", "nframes", "video_start", "video_end", "min_pixels", "max_pixels", "total_pixels",
            "do_pan_and_scan", "use_audio_in_video")


def _kind_of(source: Any, args: argparse.Namespace) -> str:
    """``image``, ``video`` or ``audio``: as ``--video`` / ``--audio`` say, else by the file's suffix."""
    from .media.sources import kind_of_path

    if args.video or args.audio:
        return "video" if args.video else "audio"
    return kind_of_path(source) if isinstance(source, str) else "image"


def _progress(msg: str) -> None:
    print(f"[gpu-mm] {msg}", file=sys.stderr, flush=True)


class _Steps:
    """Numbered progress lines with elapsed time for the long stages of a run."""

    def __init__(self, total: int) -> None:
        self.total, self.done, self.t0 = total, 0, time.perf_counter()

    def __call__(self, msg: str) -> None:
        self.done += 1
        _progress(f"[{self.done}/{self.total} +{time.perf_counter() - self.t0:5.0f}s] {msg}")


_FAST_JPEG_HELP = "decode large JPEGs at a reduced DCT scale (CPU; features differ slightly, see README)"
_IMAGE_DECODER_HELP = ("auto (nvJPEG on CUDA) | nvjpeg | cpu (libjpeg-turbo, then uploaded: transformers' decode of "
                       "4:2:0 JPEGs, which nvJPEG upsamples differently; README)")


def cmd_preprocess(args: argparse.Namespace) -> int:
    from .media.sources import MediaLimits
    from .options import RequestOptions
    from .pipeline import Preprocessor

    overrides = {} if args.sampling is None else {"sampling": args.sampling}
    try:
        options = RequestOptions.parse({k: getattr(args, k) for k in _OPTIONS if getattr(args, k) is not None})
        pre = Preprocessor.for_model(args.model, device=args.device, limits=MediaLimits(allow_urls=args.allow_urls),
                                     fast_jpeg=args.fast_jpeg, image_decoder=args.image_decoder, **overrides)
    except (GpuMMError, KeyError, ValueError, TypeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    rows: list[dict[str, Any]] = []
    status = 0
    for source in args.sources:
        data: Any = sys.stdin.buffer.read() if source == "-" else source
        kind = _kind_of(data, args)
        t0 = time.perf_counter()
        try:
            feats = pre(**{f"{kind}s": [data]}, options=options)
        except GpuMMError as exc:
            status = 1
            rows.append({"source": source, "error": type(exc).__name__, "message": str(exc)})
            print(f"error: {source}: {exc}", file=sys.stderr)
            continue
        total_ms = round((time.perf_counter() - t0) * 1e3, 3)
        for item in feats.items:  # the source, and with --use-audio-in-video a video's audio track after it
            pv = {"image": feats.pixel_values, "video": feats.pixel_values_videos,
                  "audio": getattr(feats, "input_features", None)}[item.kind]
            assert pv is not None
            rows.append({
                "source": source, "kind": item.kind, "grid_thw": list(item.grid_thw), "tokens": item.num_tokens,
                "shape": list(pv.shape), "dtype": str(pv.dtype).replace("torch.", ""), "device": str(pv.device),
                "decoder": item.decoder, "source_size": list(item.source_size), "resized": list(item.resized),
                "frame_indices": item.frame_indices, "sample_fps": item.sample_fps, "seconds": item.seconds,
                "timings_ms": {k: round(v * 1e3, 3) for k, v in item.timings.items()}, "total_ms": total_ms,
            })
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        for r in rows:
            if "error" in r:
                continue
            size = (f"{r['seconds']:.2f} s" if r["kind"] == "audio" else
                    f"{r['source_size'][0]}x{r['source_size'][1]} -> {r['resized'][0]}x{r['resized'][1]}")
            print(f"{r['source']}: {r['kind']} {size}, grid {r['grid_thw']}, {r['tokens']} tokens, "
                  f"features {r['shape']} {r['dtype']} on {r['device']}, decoder {r['decoder']}, "
                  f"{r['total_ms']:.1f} ms")
            if r["frame_indices"] is not None:
                print(f"  frames {r['frame_indices']} (sample fps {r['sample_fps']:.3f})")
            print("  stages: " + ", ".join(f"{k} {v:.1f} ms" for k, v in r["timings_ms"].items()))
    return status


def cmd_bench(args: argparse.Namespace) -> int:
    from .bench.loop_lag import run_all
    from .bench.machine import machine_info, machine_label
    from .bench.throughput import image_bench, patchify_bench, qwen3_bench, video_bench
    from .concurrency import choose
    from .media.synth import make_image, make_video
    from .pipeline import resolve_device

    device = resolve_device(args.device)
    info = machine_info()
    quick = args.quick
    reps = 5 if quick else 15
    _progress(f"machine: {machine_label(info)}; device {device}; {'quick' if quick else 'full'} run")
    concurrency = choose(device)
    _progress(f"concurrency: {concurrency.slots} slots + {concurrency.express_slots} express ({concurrency.reason}); "
              f"up to {concurrency.spare_threads} threads to lend to videos' keyframe runs (the cores no running slot "
              "job uses)")
    # (height, width, one slice per frame): PyAV's x264 writes a slice per encoding thread, which FFmpeg's slice
    # threads decode at once; phones, cameras and ffmpeg's x264 write one (decoded on one core unless gpu-mm lends
    # threads to its keyframe runs), so the full run also times the 720p content so encoded.
    clips = {"360p": (360, 640, False)} if quick else {
        "360p": (360, 640, False), "720p": (720, 1280, False), "1080p": (1080, 1920, False),
        "720p one slice": (720, 1280, True)}
    # media, image, each clip, Qwen3-VL, the other families, audio, responsiveness, the sweep; the cache (CPU); HTTP
    step = _Steps(1 + 1 + len(clips) + 1 + 1 + 1 + 1 + 1 + (device == "cpu") + (0 if args.no_http else 2))
    step("generating media (JPEG 1920x1080, H.264 clips) in memory ...")
    jpeg = make_image(1080, 1920, "JPEG")
    seconds = 10 if quick else 30
    # ~0.55 Mbit/s: a 30 s clip is ~2 MB, the size of the seed's example video.
    videos = {name: make_video(seconds * 30, h, w, fps=30, gop=60, bframes=2, bit_rate=550_000, single_slice=one)
              for name, (h, w, one) in clips.items()}
    # As `gpu-mm serve` does: freed blocks stay with the process for the next item (see runtime.tune_allocator);
    # the baselines run in this process too, under the same allocator settings.
    from .runtime import tune_allocator

    allocator = tune_allocator()
    _progress(f"allocator: {allocator}")
    result: dict[str, Any] = {"machine": info, "device": device, "quick": quick, "image": {}, "video": {},
                              "concurrency": concurrency.as_dict(), "allocator": allocator}
    step("image: bytes -> features, gpu-mm vs transformers ...")
    result["image"]["1080p_jpeg"] = image_bench(jpeg, device, reps)
    result["normalize_patchify"] = patchify_bench(reps * 3)
    for name, clip in videos.items():
        step(f"video {name} ({len(clip) / 1e6:.1f} MB, {seconds} s): gpu-mm vs qwen-vl-utils + transformers ...")
        result["video"][name] = video_bench(clip, device, max(3, reps // 3))
        result["video"][name]["bytes"] = len(clip)
    step("Qwen3-VL: the JPEG and the 360p clip, gpu-mm vs transformers (and qwen-vl-utils for the clip) ...")
    result["qwen3_vl"] = qwen3_bench(jpeg, videos["360p"], device, reps)
    step("GLM, InternVL, Gemma 3: the JPEG and the 360p clip, gpu-mm vs each family's transformers processor ...")
    from .bench.families import families_bench

    result["families"] = families_bench(jpeg, videos["360p"], device, reps)
    step("audio: Whisper log-mel of a 60 s clip and a batch, gpu-mm vs transformers (torch and numpy) ...")
    from .bench.audio import audio_bench

    result["audio"] = audio_bench(device, reps, batch=4 if quick else 16)
    # As `gpu-mm serve` does once started: a full cyclic-GC pass over the ~1M objects torch and transformers
    # leave would otherwise land on the loop (150 ms here) whatever processor runs (see runtime.freeze_gc).
    from .runtime import freeze_gc

    freeze_gc()
    step(f"responsiveness: {args.concurrency} concurrent image requests, loop lag and health probe ...")
    result["loop_lag"] = asyncio.run(run_all(jpeg, args.concurrency, workers=2, progress=lambda n: _progress(f"  {n}")))
    sweep_levels = [1, 8, 32] if quick else [1, 4, 16, 64]
    step(f"throughput vs concurrency {sweep_levels}: gpu-mm vs the seed's wrapper ...")
    result["concurrency_sweep"] = {}
    for c in sweep_levels:
        sweep = asyncio.run(run_all(jpeg, c, workers=2, only=["seed_wrapper_sync", "gpu_mm_native"]))
        for name, figures in sweep.items():
            result["concurrency_sweep"].setdefault(name, []).append({"concurrency": c, **figures})
    if device == "cpu":
        from .bench.cache import run as cache_bench

        step("feature cache off vs on: a trace where half the requests repeat, a hit, a burst of one new video ...")
        result["cache"] = cache_bench(quick)
    if not args.no_http:
        from .bench.http import run_mode

        n_http = 8 if quick else 16
        step(f"HTTP: {n_http} concurrent video requests to gpu-mm serve on loopback, probing /health and /metrics")
        result["http"] = {}
        # gpu_mm as served (on the CPU each slot's work in a process of its own, on SCHED_IDLE where it can leave
        # it), with its slots on the normal policy, with the opt-in loop slice (gpu_mm.sched), and with the work
        # in the slots' threads, side by side.
        for label, mode, extra in (("inline", "inline", []), ("seed", "seed", []), ("gpu_mm", "gpu_mm", []),
                                   ("gpu_mm_normal_workers", "gpu_mm", ["--no-idle-workers"]),
                                   ("gpu_mm_loop_slice", "gpu_mm", ["--loop-slice"]),
                                   ("gpu_mm_slot_threads", "gpu_mm", ["--workers", "threads"])):
            if extra[:1] == ["--workers"] and device != "cpu":
                continue  # on CUDA the slots are threads already
            _progress(f"  {mode} {' '.join(extra)}")
            result["http"][label] = asyncio.run(run_mode(mode, videos["360p"], n_http, device, extra))
        from .bench.hostile import compare

        rounds = 1 if quick else 3
        step(f"HTTP: 8 clients sending hostile requests, gpu-mm serve vs a server doing no work at the same rate "
             f"(10 s each, {rounds} round{'s' * (rounds > 1)}) ...")
        result["hostile"] = compare(10, device=device, rounds=rounds, progress=_progress)
    _print_summary(result)
    if args.out:
        from .bench.plots import write_plots

        out = pathlib.Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        stem = f"bench_{(info['gpu'] or 'cpu').replace(' ', '_')}_{info['date'][:10]}"
        path = out / f"{stem}.json"
        path.write_text(json.dumps(result, indent=2, default=str))
        _progress(f"wrote {path}")
        for png in write_plots(result, out / stem):
            _progress(f"wrote {png}")
    return 0


def _print_summary(r: dict[str, Any]) -> None:
    from .bench.machine import machine_label

    print(f"\ngpu-mm bench on {machine_label(r['machine'])}, device {r['device']}")
    if "concurrency" in r:
        c = r["concurrency"]
        print(f"concurrency chosen: {c['slots']} slots + {c['express_slots']} express ({c['reason']})")
    img = r["image"]["1080p_jpeg"]
    ours = img["gpu_mm"]["p50_ms"]
    print("\n1920x1080 JPEG, bytes -> pixel_values (p50):")
    print(f"  {'gpu-mm':28s} {ours:8.1f} ms")
    for k in ("hf_torchvision", "hf_pil"):
        if k in img:
            p50 = img[k]["p50_ms"]
            print(f"  {'transformers ' + k[3:]:28s} {p50:8.1f} ms   ({p50 / ours:.2f}x gpu-mm)")
    npb = r.get("normalize_patchify")
    if npb:
        print(f"\nnormalize + patchify of a 2-frame 728x1316 group ({npb['output_bytes'] / 2**20:.0f} MiB out, "
              f"{npb.get('path', 'torch ops')}) vs a copy of the same bytes (p50):")
        print(f"  into fresh memory: {npb['np_fresh_ms']:.1f} ms vs {npb['copy_fresh_ms']:.1f} ms "
              f"({npb['ratio_fresh']:.2f}x the copy)")
        print(f"  into touched memory: {npb['np_warm_ms']:.1f} ms vs {npb['copy_warm_ms']:.1f} ms "
              f"({npb['ratio_warm']:.2f}x the copy)")
        if "torch_ops_warm_ms" in npb:
            print(f"  the torch-ops path on the same frames: {npb['torch_ops_warm_ms']:.1f} ms "
                  f"({npb['speedup_vs_torch_ops']:.2f}x slower)")
    for name, v in r["video"].items():
        o = v["gpu_mm"]
        print(f"\nH.264 {name} clip ({v['bytes'] / 1e6:.1f} MB), {v['frames']} frames -> grid {v['grid_thw']} (p50):")
        stages = ", ".join(f"{k} {x:.0f}" for k, x in o.get("stages_ms", {}).items())
        runs = f"; {o['keyframe_runs']} keyframe runs at once" if o.get("keyframe_runs", 1) > 1 else ""
        print(f"  {'gpu-mm':28s} {o['p50_ms']:8.1f} ms   [{stages}{runs}]")
        q = v.get("qwen_vl_utils", {})
        if "p50_ms" in q:
            name = "qwen-vl-utils + transformers"
            print(f"  {name:28s} {q['p50_ms']:8.1f} ms   ({q['p50_ms'] / o['p50_ms']:.2f}x gpu-mm)")
        elif q:
            print(f"  qwen-vl-utils: {q.get('skipped')}")
    q3 = r.get("qwen3_vl")
    if q3:
        print("\nQwen3-VL (patch 16, the published processor settings), p50:")
        ours = q3["image"]["gpu_mm"]["p50_ms"]
        print(f"  {'1080p JPEG gpu-mm':28s} {ours:8.1f} ms")
        if "hf_torchvision" in q3["image"]:
            p50 = q3["image"]["hf_torchvision"]["p50_ms"]
            print(f"  {'  transformers torchvision':28s} {p50:8.1f} ms   ({p50 / ours:.2f}x gpu-mm)")
        v = q3["video"]
        ours = v["gpu_mm"]["p50_ms"]
        print(f"  {'360p clip gpu-mm':28s} {ours:8.1f} ms   {v.get('frames', '?')} frames -> grid {v.get('grid_thw')}")
        q = v.get("qwen_vl_utils", {})
        if "p50_ms" in q:
            name = "  qwen-vl-utils + transformers"
            print(f"  {name:28s} {q['p50_ms']:8.1f} ms   ({q['p50_ms'] / ours:.2f}x gpu-mm)")
    if r.get("families"):
        _print_families(r["families"])
    if r.get("audio"):
        _print_audio(r["audio"])
    ll = r["loop_lag"]
    n = next(v["requests"] for v in ll.values() if "requests" in v)
    print(f"\nevent loop while {n} image requests run (ms):")
    print(f"  {'scenario':31s} {'lag p99':>8s} {'lag max':>8s} {'health p99':>10s} {'wall s':>7s}")
    for k, v in ll.items():
        if "skipped" in v:
            print(f"  {k:31s} skipped: {v['skipped']}")
            continue
        print(f"  {k:31s} {v['loop_lag']['p99_ms']:8.2f} {v['loop_lag']['max_ms']:8.1f} "
              f"{v['health_probe']['p99_ms']:10.2f} {v['wall_s']:7.2f}")
    if "inline" in ll and "gpu_mm_native" in ll:
        ratio = ll["inline"]["loop_lag"]["max_ms"] / max(ll["gpu_mm_native"]["loop_lag"]["max_ms"], 1e-6)
        print(f"  max loop lag: inline is {ratio:.0f}x gpu-mm")
    if "cache" in r:
        from .bench.cache import summary

        print()
        print("\n".join(summary(r["cache"])))
    http = r.get("http")
    if http:
        n = next(iter(http.values()))["requests"]
        print(f"\nHTTP server under {n} concurrent video requests (ms):")
        print(f"  {'mode':22s} {'/health p99':>11s} {'/health max':>11s} {'/metrics p99':>12s} {'request p50':>11s} "
              f"{'503':>4s} {'504':>4s}")
        for k, v in http.items():
            health, metrics = v["health"], v["metrics"]
            print(f"  {k:22s} {health['p99_ms']:11.1f} {health['max_ms']:11.1f} {metrics['p99_ms']:12.1f} "
                  f"{v['request']['p50_ms']:11.0f} {v['rejected_503']:4d} {v['timeouts_504']:4d}")
    if "hostile" in r:
        _print_hostile(r["hostile"])


def _print_families(fams: dict[str, Any]) -> None:
    print("\nother families, vs the family's transformers processor (Pillow / PyAV decode), p50:")
    if "skipped" in fams:
        print(f"  skipped: {fams['skipped']}")
    for family, res in fams.items():
        if not isinstance(res, dict):
            continue
        for kind, v in res.items():
            media = "1080p JPEG" if kind == "image" else f"360p clip, {v.get('frames')} frames"
            ref = v.get("reference", "transformers")
            print(f"  {family:13s} {media:24s} gpu-mm {v['gpu_mm']['p50_ms']:7.1f} ms   {ref} "
                  f"{v[ref]['p50_ms']:7.1f} ms   ({v['speedup_p50']:.2f}x)   outputs {v.get('outputs')}")


def _print_audio(audio: dict[str, Any]) -> None:
    print("\naudio: Whisper log-mel, 128 bins, each clip padded to 300 s (Qwen2.5-Omni), p50:")
    if "skipped" in audio:
        print(f"  skipped: {audio['skipped']}")
        return
    for name, v in audio.items():
        what = f"{v['clips']} clip(s), {v['seconds']:g} s"
        print(f"  {what:24s} gpu-mm {v['gpu_mm']['p50_ms']:7.1f} ms   transformers (torch) "
              f"{v['transformers']['p50_ms']:7.1f} ms ({v['speedup_p50']:.1f}x)   (numpy) "
              f"{v['transformers_numpy']['p50_ms']:7.1f} ms ({v['speedup_numpy_p50']:.1f}x)")


def _print_hostile(hostile: dict[str, Any]) -> None:
    """The hostile-load step: gpu-mm serve's /health p99 beside the floor servers' (gpu_mm.bench.hostile)."""
    p99, runs = hostile["p99_ms"], hostile["runs"]
    answers = statistics.median(run["gpu_mm"]["answers"] for run in runs)
    print(f"\n/health p99 while {hostile['clients']} clients send hostile requests ({hostile['seconds']:.0f} s, "
          f"median of {len(runs)}; server, clients and prober on the same cores):")
    print(f"  {'gpu-mm serve':54s} {p99['gpu_mm']:6.1f} ms   ({answers:.0f} answers)")
    print(f"  {'a server doing no work, paced to the same rate':54s} {p99['floor']:6.1f} ms")
    if "floor_work" in p99:
        label = f"the same, gpu-mm's pixel work beside it ({hostile['slot_processes']} processes)"
        ratio = p99["gpu_mm"] / p99["floor_work"]
        print(f"  {label:54s} {p99['floor_work']:6.1f} ms   (gpu-mm serve: {ratio:.2f}x)")


def cmd_serve(args: argparse.Namespace) -> int:
    from .serve import run

    run(Settings.from_args(args))
    return 0


def cmd_preprocess_dataset(args: argparse.Namespace) -> int:
    import os

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a local cluster on this machine needs no token
    try:
        from .integrations import ray as gray
    except ImportError as exc:
        print(f"error: the ray extra is not installed ({exc}); pip install 'gpu-mm[ray]'", file=sys.stderr)
        return 2
    from .options import RequestOptions

    try:
        options = RequestOptions.parse({k: getattr(args, k) for k in _OPTIONS if getattr(args, k) is not None})
    except GpuMMError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    paths = gray.list_inputs(args.input, audio=gray.takes_audio(args.model))
    _progress(f"{len(paths)} media files under {args.input}; output {args.output}; cluster {args.address}")
    gray.connect(args.address)
    summary = gray.preprocess_dataset(
        args.input, args.output, model=args.model, device=args.device, workers=args.workers,
        gpus_per_worker=args.gpus_per_worker, cpus_per_worker=args.cpus_per_worker, batch_size=args.batch_size,
        options=options.as_dict())
    done = summary.written
    print(f"{summary.inputs} files: {summary.skipped} already done, {done} written ({summary.failed} failed) in "
          f"{summary.seconds:.1f} s ({done / max(summary.seconds, 1e-9):.1f} items/s); manifest {summary.manifest}")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="gpu-mm", description="VLM multimodal preprocessing on CUDA or CPU.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("preprocess", help="turn images/videos into a model's features and report them")
    p.add_argument("sources", nargs="+", help="files, URLs (with --allow-urls), or - for stdin")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--video", action="store_true", help="treat every source as a video")
    p.add_argument("--audio", action="store_true",
                   help="treat every source as audio (the Omni families; else by suffix: .wav .flac .mp3 ...)")
    p.add_argument("--model", default="qwen2_vl", help=_MODEL_HELP)
    p.add_argument("--fast-jpeg", action="store_true", help=_FAST_JPEG_HELP)
    p.add_argument("--image-decoder", default="auto", help=_IMAGE_DECODER_HELP)
    p.add_argument("--sampling", default=None,
                   help="the family's frame rule: qwen2_vl: qwen_vl_utils (default) | sglang | hf; "
                        "qwen3_vl: transformers (default) | sglang")
    for name, kind in (("fps", float), ("nframes", int), ("video_start", float), ("video_end", float),
                       ("min_pixels", int), ("max_pixels", int), ("total_pixels", int)):
        p.add_argument(f"--{name.replace('_', '-')}", dest=name, type=kind, default=None,
                       help="a per-request option (gpu_mm.RequestOptions)")
    p.add_argument("--use-audio-in-video", dest="use_audio_in_video", action="store_const", const=True,
                   default=None, help="Omni families: a video's own audio track becomes an audio item too")
    p.add_argument("--do-pan-and-scan", dest="do_pan_and_scan", action="store_const", const=True, default=None,
                   help="Gemma 3: crops beside the whole image for images of a marked aspect ratio")
    p.add_argument("--allow-urls", action="store_true")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(fn=cmd_preprocess)
    b = sub.add_parser("bench", help="benchmark gpu-mm against transformers and qwen-vl-utils on generated media")
    b.add_argument("--quick", action="store_true", help="about three minutes on 2 cores")
    b.add_argument("--device", default="auto")
    b.add_argument("--concurrency", type=int, default=64)
    b.add_argument("--out", default="bench-out", help="folder for the JSON result")
    b.add_argument("--no-http", action="store_true", help="skip the HTTP server scenario")
    b.set_defaults(fn=cmd_bench)
    ds = sub.add_parser("preprocess-dataset", help="preprocess a folder or glob of media into Parquet on Ray")
    ds.add_argument("input", help="a directory (searched recursively) or a glob of media files")
    ds.add_argument("output", help="a directory for the Parquet files and manifest.json (a rerun resumes)")
    ds.add_argument("--address", default="local", help="local (start Ray here) | auto | ray://host:port")
    ds.add_argument("--model", default="qwen2_vl", help=_MODEL_HELP)
    ds.add_argument("--device", default="auto", help="auto | cpu | cuda")
    ds.add_argument("--workers", type=int, default=1, help="gpu-mm actors (default 1)")
    ds.add_argument("--gpus-per-worker", type=float, default=0.0, help="e.g. 0.25: four actors per GPU")
    ds.add_argument("--cpus-per-worker", type=float, default=1.0)
    ds.add_argument("--batch-size", type=int, default=16, help="files per actor call (default 16)")
    for name, kind in (("fps", float), ("nframes", int), ("min_pixels", int), ("max_pixels", int),
                       ("total_pixels", int)):
        ds.add_argument(f"--{name.replace('_', '-')}", dest=name, type=kind, default=None)
    for name in ("video_start", "video_end", "do_pan_and_scan", "use_audio_in_video"):
        ds.set_defaults(**{name: None})
    ds.set_defaults(fn=cmd_preprocess_dataset)

    sv = sub.add_parser("serve", help="HTTP front end: POST /v1/preprocess, GET /health, GET /metrics",
                        description="Every setting, with its variable for the engine plug-ins: docs/configuration.md")
    Settings.add_arguments(sv)
    sv.set_defaults(fn=cmd_serve)
    args = ap.parse_args(argv)
    try:
        return int(args.fn(args))
    except GpuMMError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
