"""GPU benchmark, side by side on one card: bytes -> features for a ~2 MB 1280x720 H.264 clip and for
1920x1080 JPEG batches, against transformers' processors on CUDA given CPU-decoded inputs and against
raw DALI decode of the same frames; and the fused kernel's bandwidth against a device-to-device copy.

    python benchmarks/gpu_bench.py --out DIR
"""

from __future__ import annotations

import argparse
import asyncio
import faulthandler
import io
import json
import pathlib
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any

import torch

from gpu_mm import BackendUnavailable
from gpu_mm.bench.machine import machine_info
from gpu_mm.media.synth import make_image, make_video
from gpu_mm.media.video import get_video_decoder
from gpu_mm.pipeline.families import Qwen2VLPreprocessor


def cuda_times(fn, reps: int) -> dict[str, float]:
    t0 = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    print(f"[gpu_bench]   first call {time.perf_counter() - t0:.2f} s, then {reps} timed", file=sys.stderr, flush=True)
    xs = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        xs.append(time.perf_counter() - t0)
    return {"p50_ms": statistics.median(xs) * 1e3, "min_ms": min(xs) * 1e3, "reps": reps}


def interleaved(runs: dict[str, Callable[[], Any]], rounds: int = 3, reps: int = 20) -> dict[str, float]:
    """Each run's median p50 (ms) over ``rounds`` rounds in which every run is timed in turn."""
    times: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(rounds):
        for k, fn in runs.items():
            times[k].append(cuda_times(fn, reps)["p50_ms"])
    return {k: statistics.median(v) for k, v in times.items()}


def _variants_against_copy(x: torch.Tensor, patch_size: int) -> dict[str, Any]:
    """Every kernel variant on uint8 frames ``x`` against a device-to-device copy of the bytes they move,
    interleaved; each variant's output compared with the first kernel's (row)."""
    from gpu_mm.kernels.normalize_patchify import VARIANTS, fused_normalize_patchify

    ref = fused_normalize_patchify(x, variant="row", patch_size=patch_size)[0]  # the first kernel
    out = torch.empty_like(ref)
    moved = x.numel() + out.numel() * 4
    src = torch.empty(moved // 2, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    runs: dict[str, Callable[[], Any]] = {
        v: (lambda v=v: fused_normalize_patchify(x, out=out, variant=v, patch_size=patch_size)) for v in VARIANTS}
    runs["copy"] = lambda: dst.copy_(src)  # reads moved/2 + writes moved/2 bytes
    same = {v: torch.equal(fused_normalize_patchify(x, variant=v, patch_size=patch_size)[0], ref) for v in VARIANTS}
    p50 = interleaved(runs)
    return {"bytes_moved": moved, "ms": p50, "GBps": {k: moved / v / 1e6 for k, v in p50.items()},
            "of_copy": {k: p50["copy"] / v for k, v in p50.items()}, "equals_row": same}


def kernel_bandwidth() -> dict[str, Any]:
    """The fused kernel's variants (gpu_mm.kernels.normalize_patchify.VARIANTS: one program per output row, per
    merge block or per merge block with patch-pixel lanes, each dividing per element or looking levels up) against a
    device-to-device copy of the same bytes: a 60-frame clip with Qwen2-VL's 14-pixel patches and with Qwen3-VL's 16,
    and 16 images in one launch."""
    from gpu_mm.kernels.normalize_patchify import fused_normalize_patchify

    result = _variants_against_copy(torch.randint(0, 256, (60, 3, 560, 1008), dtype=torch.uint8, device="cuda"), 14)
    result["patch_16"] = _variants_against_copy(
        torch.randint(0, 256, (60, 3, 576, 1024), dtype=torch.uint8, device="cuda"), 16)
    # Images: 16 same-size 1080p-class frames of one frame each, in one launch ([B, 1, C, H, W]); each value
    # computed once and stored in both temporal slots (the default) against computed per slot, the tile kernel, and a
    # copy.
    imgs = torch.randint(0, 256, (16, 1, 3, 1092, 1932), dtype=torch.uint8, device="cuda")
    img_out = torch.empty(16 * 78 * 138, 1176, device="cuda")
    img_moved = imgs.numel() + img_out.numel() * 4
    img_src = torch.empty(img_moved // 2, dtype=torch.uint8, device="cuda")
    img_dst = torch.empty_like(img_src)
    img_runs: dict[str, Callable[[], Any]] = {
        "block-lut": lambda: fused_normalize_patchify(imgs, out=img_out),
        "block-lut-per-slot": lambda: fused_normalize_patchify(imgs, out=img_out, one_frame=False),
        "tile-lut": lambda: fused_normalize_patchify(imgs, out=img_out, variant="tile-lut"),
        "copy": lambda: img_dst.copy_(img_src)}
    img_ref = fused_normalize_patchify(imgs)[0]
    img_same = torch.equal(img_ref, fused_normalize_patchify(imgs, one_frame=False)[0])
    tile_same = torch.equal(img_ref, fused_normalize_patchify(imgs, variant="tile-lut")[0])
    img_p50 = interleaved(img_runs)
    result["images_16x1092x1932"] = {
        "bytes_moved": img_moved, "ms": img_p50, "of_copy": {k: img_p50["copy"] / v for k, v in img_p50.items()},
        "one_frame_equals_per_slot": img_same, "tile_lut_equals_block_lut": tile_same}
    return result


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="bench-out")
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--video-reps", type=int, default=5, help="repetitions of the clip through gpu-mm and raw DALI")
    ap.add_argument("--parts", default="all",
                    help="comma-separated: kernel, jpeg, video, video_concurrency (default: all)")
    ap.add_argument("--deadline-s", type=float, default=140.0,
                    help="dump every thread's stack to stderr if the run is still going then (a hang shows where)")
    args = ap.parse_args()
    assert torch.cuda.is_available(), "needs a GPU"
    faulthandler.dump_traceback_later(args.deadline_s, exit=False)
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    res: dict[str, Any] = {"machine": machine_info()}

    def section(name: str, fn: Callable[[], Any]) -> None:
        """One part of the benchmark: its failure is recorded with its traceback and the others still run; the
        JSON is rewritten after each part, so a run stopped by its timeout keeps what it measured."""
        t0 = time.perf_counter()
        try:
            res[name] = fn()
        except Exception as exc:  # noqa: BLE001 - report, do not hide
            res[name] = {"error": repr(exc), "traceback": traceback.format_exc()}
        print(f"[gpu_bench] {name}: {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
        (out / "gpu_bench.json").write_text(json.dumps(res, indent=2, default=str))

    clip = make_video(900, 720, 1280, fps=30, gop=60, bframes=2, bit_rate=550_000)  # ~2 MB, 30 s
    jpeg = make_image(1080, 1920, "JPEG")
    res["clip_bytes"] = len(clip)
    pre = Qwen2VLPreprocessor("cuda", cache_bytes=0)  # measure the work, not the cache
    res["video_decoder"] = pre.video_decoder
    plan: dict[str, Any] = {}

    def gpu_mm_video(p: Qwen2VLPreprocessor, data: bytes = clip) -> dict[str, Any]:
        r: dict[str, Any] = {"video_decoder": p.video_decoder,
                             "timing": cuda_times(lambda: p(videos=[data]), args.video_reps)}
        feats = p(videos=[data])
        if data is clip:
            plan["idx"] = feats.items[0].frame_indices
            plan["chunk"] = p.plan(videos=[clip])[0].chunk
        r["keyframe_runs_at_once"] = feats.items[0].decoded.threads
        r["grid"] = feats.video_grid_thw.tolist()
        r["device"] = str(feats.pixel_values_videos.device)
        r["decoder_ran"] = feats.items[0].decoder
        r["stages_ms"] = {k: v * 1e3 for k, v in feats.items[0].timings.items()}
        return r

    def raw_dali() -> dict[str, Any]:
        """DALI alone on the planned frames: one call for all of them, and one call per chunk (what gpu-mm did
        before the first GPU runs), each call timed on its own, interleaved."""
        import numpy as np
        import nvidia.dali.experimental.dynamic as ndd

        enc = ndd.as_tensor(np.frombuffer(clip, dtype=np.uint8))
        idx, chunk = plan["idx"], plan["chunk"]

        def call(frames: list[int]) -> float:
            t0 = time.perf_counter()
            torch.from_dlpack(ndd.decoders.video(enc, device="gpu", frames=frames))
            torch.cuda.synchronize()
            return (time.perf_counter() - t0) * 1e3

        r: dict[str, Any] = {"frames": len(idx), "chunk": chunk, "first_call_ms": call(idx[:chunk])}
        print(f"[gpu_bench]   DALI first call ({chunk} frames) {r['first_call_ms']:.0f} ms", file=sys.stderr,
              flush=True)
        whole, chunked, per_call = [], [], []
        for _ in range(args.video_reps):
            whole.append(call(idx))
            calls = [call(idx[k : k + chunk]) for k in range(0, len(idx), chunk)]
            per_call.append(calls)
            chunked.append(sum(calls))
            print(f"[gpu_bench]   DALI one call {whole[-1]:.0f} ms, per chunk {chunked[-1]:.0f} ms "
                  f"({', '.join(f'{c:.0f}' for c in calls)})", file=sys.stderr, flush=True)
        r.update(one_call_p50_ms=statistics.median(whole), chunked_p50_ms=statistics.median(chunked),
                 one_call_ms=whole, chunked_calls_ms=per_call)
        return r

    def hf_video() -> dict[str, Any]:
        from transformers import Qwen2VLVideoProcessor

        from gpu_mm.media.sources import load_source
        from gpu_mm.media.video import PyAVDecoder, probe_video

        src = load_source(clip, "v")
        frames = PyAVDecoder().get_frames_at(src, probe_video(src), plan["idx"]).permute(0, 3, 1, 2)
        vp = Qwen2VLVideoProcessor()
        return cuda_times(
            lambda: vp(videos=[frames], device="cuda", return_tensors="pt", do_sample_frames=False,
                       cap_pixels_per_frame=False), args.reps)

    batch = [jpeg] * 64

    def images(p: Qwen2VLPreprocessor = pre) -> dict[str, Any]:
        async def run() -> None:
            await p.preprocess(images=batch)

        t = cuda_times(lambda: asyncio.run(run()), 5)
        feats = p(images=batch[:1])
        return {**t, "images_per_s": 64 / t["p50_ms"] * 1e3, "device": str(feats.pixel_values.device),
                "stages_ms_one": {k: v * 1e3 for k, v in feats.items[0].timings.items()}}

    def images_one_by_one() -> dict[str, Any]:
        """The same batch with each decoded image resized and normalized on its own (the path before same-size
        images were finished together): what finishing them together gains, measured in the same run."""
        from unittest import mock

        singles = lambda group, images, figures: [[k] for k in range(len(group))]  # noqa: E731
        with mock.patch("gpu_mm.pipeline.execute.same_size_runs", singles):
            return images()

    def images_concurrent(slots: int) -> dict[str, Any]:
        """The 64 JPEGs as 8 calls of 8 at once through a preprocessor of ``slots`` stream slots: whether slots
        beyond the CUDA default's one cost images anything (video gains from them: runs 6-7 on the H200)."""
        p = Qwen2VLPreprocessor("cuda", cache_bytes=0, num_slots=slots)

        async def run() -> None:
            await asyncio.gather(*(p.preprocess(images=batch[k : k + 8]) for k in range(0, 64, 8)))

        t = cuda_times(lambda: asyncio.run(run()), 5)
        p.close()
        return {**t, "images_per_s": 64 / t["p50_ms"] * 1e3, "slots": slots}

    def hf_images() -> dict[str, Any]:
        from PIL import Image
        from transformers import Qwen2VLImageProcessor

        ip = Qwen2VLImageProcessor()

        def run() -> None:
            ims = [Image.open(io.BytesIO(b)) for b in batch]
            ip(images=ims, device="cuda", return_tensors="pt")

        t = cuda_times(run, 3)
        return {**t, "images_per_s": 64 / t["p50_ms"] * 1e3}

    def jpeg_decode_only() -> dict[str, Any]:
        """torchvision's batched nvJPEG decode of the same 64 JPEGs alone: the floor under gpu-mm's batch."""
        from torchvision.io import decode_jpeg

        data = [torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in batch]
        t = cuda_times(lambda: decode_jpeg(data, device="cuda"), 5)
        return {**t, "images_per_s": 64 / t["p50_ms"] * 1e3}

    def nvimgcodec_decode_only() -> dict[str, Any]:
        """nvImageCodec's batched decode of the same 64 JPEGs alone (its hardware JPEG engines where the chip has
        them), on one stream, the images handed to torch: the floor under ``image_decoder="nvimgcodec"``."""
        from gpu_mm.media.image import probe_image
        from gpu_mm.media.nvimgcodec import NvImageCodecDecoder
        from gpu_mm.media.sources import load_source

        dec = NvImageCodecDecoder("cuda")
        src = load_source(jpeg, "image")
        items = [(src, probe_image(src))] * 64
        t = cuda_times(lambda: dec.decode(items), 5)
        return {**t, "images_per_s": 64 / t["p50_ms"] * 1e3}

    def video_concurrency(decoder: str, slots: int | None = None, n: int = 8) -> dict[str, Any]:
        """``n`` requests of the clip at once through one preprocessor (``slots`` stream slots; None: its
        default): wall time, the CPU seconds the process spent (what a serving node's other work lost), and the
        caller's event loop meanwhile (``gpu_mm.bench.loop_lag.measure``: a 1 ms timer's lateness and a posted
        callback's wait). A decoder library that keeps the interpreter lock while it decodes stalls the loop for
        as long as each of its calls, whatever thread it runs on: the lag's maximum shows it."""
        from gpu_mm.bench.loop_lag import measure

        p = Qwen2VLPreprocessor("cuda", cache_bytes=0, video_decoder=decoder, num_slots=slots)

        async def run(k: int) -> dict[str, Any]:
            return await measure(lambda i: p.preprocess(videos=[clip]), k)

        asyncio.run(run(1))  # warm: the decoder of each slot is built on first use
        rounds = []
        for _ in range(2):
            t0, c0 = time.perf_counter(), time.process_time()
            probed = asyncio.run(run(n))
            torch.cuda.synchronize()
            rounds.append({"wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0,
                           "loop_lag_ms": probed["loop_lag"], "health_probe_ms": probed["health_probe"],
                           "errors": probed["errors"]})
            print(f"[gpu_bench]   {n} x clip via {decoder}: wall {rounds[-1]['wall_s']:.2f} s, "
                  f"cpu {rounds[-1]['cpu_s']:.2f} s, loop lag p99 {probed['loop_lag']['p99_ms']:.1f} ms, "
                  f"max {probed['loop_lag']['max_ms']:.1f} ms", file=sys.stderr, flush=True)
        stats = p.statistics()
        p.close()
        return {"requests": n, "rounds": rounds, "concurrency": str(stats.concurrency)}

    parts = set(args.parts.split(",")) if args.parts != "all" else {"kernel", "jpeg", "video", "video_concurrency"}
    # Parts known to finish first; DALI's video last (it stalled once: a stall there keeps the other figures).
    if "kernel" in parts:
        section("kernel", kernel_bandwidth)
    if "jpeg" in parts:
        section("jpeg_batch64_gpu_mm", images)
        section("jpeg_batch64_gpu_mm_finished_one_by_one", images_one_by_one)
        section("jpeg_batch64_decode_only", jpeg_decode_only)
        try:
            with_nvimgcodec = Qwen2VLPreprocessor("cuda", cache_bytes=0, image_decoder="nvimgcodec")
        except BackendUnavailable as exc:
            res["nvimgcodec"] = f"not measured: {exc}"
        else:
            section("jpeg_batch64_gpu_mm_nvimgcodec", lambda: images(with_nvimgcodec))
            section("jpeg_batch64_nvimgcodec_decode_only", nvimgcodec_decode_only)
        for slots in (1, 4):
            section(f"jpeg_8_calls_of_8_{slots}_slots", lambda slots=slots: images_concurrent(slots))
        # The host's planning per image on this machine's CPU (serial within a call), both header readers.
        sys.path.insert(0, str(pathlib.Path(__file__).parent))
        from plan_cost import measure

        section("jpeg_plan_us_per_image", lambda: measure(rounds=3, jpegs=batch))
        section("jpeg_batch64_hf_cuda", hf_images)
    try:  # installed and loadable here (the package needs the driver's NVDEC and NVENC libraries)
        get_video_decoder("pynvvideocodec")
        nvcodec = True
    except BackendUnavailable as exc:
        nvcodec = False
        res["pynvvideocodec"] = f"not measured: {exc}"
    if "video" in parts:
        section("video_gpu_mm_pyav",
                lambda: gpu_mm_video(Qwen2VLPreprocessor("cuda", cache_bytes=0, video_decoder="pyav")))
        # The same content with one slice per frame (most encoders' output: FFmpeg decodes it on one core), with one
        # decoder and with its keyframe runs on the idle cores (the default: those no call or running job uses).
        one_slice = make_video(900, 720, 1280, fps=30, gop=60, bframes=2, bit_rate=550_000, single_slice=True)
        for lend in (0, None):
            section(f"video_gpu_mm_pyav_one_slice_{'default' if lend is None else 'no'}_threads_lent",
                    lambda lend=lend: gpu_mm_video(Qwen2VLPreprocessor(
                        "cuda", cache_bytes=0, video_decoder="pyav", decode_threads=lend), one_slice))
        # The decoder alone on the card machine's cores: one thread, FFmpeg's frame threads, keyframe runs.
        sys.path.insert(0, str(pathlib.Path(__file__).parent))
        from split_decode import measure_decoder_alone

        section("pyav_one_slice_decoder_alone", lambda: measure_decoder_alone(3))
        if nvcodec:  # the second NVDEC backend, beside DALI and PyAV in the same run
            section("video_gpu_mm_pynvvideocodec", lambda: gpu_mm_video(
                Qwen2VLPreprocessor("cuda", cache_bytes=0, video_decoder="pynvvideocodec")))
        if "idx" in plan:
            section("video_hf_cuda_given_frames", hf_video)
        if pre.video_decoder == "dali" and "idx" in plan:
            section("video_raw_dali", raw_dali)
            section("video_gpu_mm", lambda: gpu_mm_video(pre))
    if "video_concurrency" in parts:
        for slots in (1, 4):
            section(f"video_8_concurrent_pyav_{slots}_slots", lambda slots=slots: video_concurrency("pyav", slots))
        if nvcodec:  # 7: an H100's or H200's NVDEC engines, one session per slot
            for slots in (1, 4, 7):
                section(f"video_8_concurrent_pynvvideocodec_{slots}_slots",
                        lambda slots=slots: video_concurrency("pynvvideocodec", slots))
        if pre.video_decoder == "dali":
            for slots in (1, 2, 4):
                section(f"video_8_concurrent_dali_{slots}_slots", lambda slots=slots: video_concurrency("dali", slots))
    faulthandler.cancel_dump_traceback_later()
    print(json.dumps(res, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
