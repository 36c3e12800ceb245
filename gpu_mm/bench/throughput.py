"""Bytes -> features latency of gpu-mm against transformers' processors and qwen-vl-utils, side by side."""

from __future__ import annotations

import io
import os
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

QWEN3_VL_IMAGE: dict[str, Any] = {"patch_size": 16, "temporal_patch_size": 2, "merge_size": 2, "image_mean": [0.5] * 3,
                  "image_std": [0.5] * 3}
"""The published Qwen3-VL processor configs' values (the transformers classes' own defaults differ)."""


def time_side_by_side(fns: Mapping[str, Callable[[], Any]], reps: int) -> dict[str, dict[str, Any]]:
    """Time each callable ``reps`` times, interleaved round-robin so drift hits all of them alike."""
    for fn in fns.values():
        fn()  # warm-up: imports, allocator, first-call caches
    xs: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            xs[name].append(time.perf_counter() - t0)
    return _summaries(xs)


async def time_side_by_side_async(fns: Mapping[str, Callable[[], Awaitable[Any]]],
                                  reps: int) -> dict[str, dict[str, Any]]:
    """:func:`time_side_by_side` for coroutine functions, awaited one at a time."""
    for fn in fns.values():
        await fn()
    xs: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            await fn()
            xs[name].append(time.perf_counter() - t0)
    return _summaries(xs)


def _summaries(xs: dict[str, list[float]]) -> dict[str, dict[str, Any]]:
    return {name: {"p50_ms": statistics.median(v) * 1e3, "mean_ms": statistics.fmean(v) * 1e3,
                   "min_ms": min(v) * 1e3, "reps": len(v), "samples_ms": [x * 1e3 for x in v]}
            for name, v in xs.items()}


def speedup(times: dict[str, dict[str, Any]], baseline: str) -> dict[str, Any]:
    """``times`` with ``speedup_p50``: the baseline's p50 over gpu-mm's."""
    return {**times, "speedup_p50": times[baseline]["p50_ms"] / times["gpu_mm"]["p50_ms"]}


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def image_bench(jpeg: bytes, device: str, reps: int) -> dict[str, Any]:
    """One JPEG, bytes -> pixel_values, on ``device`` vs transformers (torchvision and PIL backends)."""
    from PIL import Image

    from ..pipeline.families import Qwen2VLPreprocessor

    pre = Qwen2VLPreprocessor(device, cache_bytes=0)  # measure the work, not the cache

    def ours() -> Any:
        out = pre(images=[jpeg])
        _sync(device)
        return out

    fns: dict[str, Callable[[], Any]] = {"gpu_mm": ours}
    try:
        from transformers import Qwen2VLImageProcessor, Qwen2VLImageProcessorPil
    except ImportError:
        return time_side_by_side(fns, reps)
    tv = Qwen2VLImageProcessor()
    pil = Qwen2VLImageProcessorPil()

    def hf(proc: Any, **kw: Any) -> Callable[[], Any]:
        def run() -> Any:
            img = Image.open(io.BytesIO(jpeg))
            out = proc(images=[img], return_tensors="pt", **kw)
            _sync(device)
            return out

        return run

    fns["hf_torchvision"] = hf(tv, **({"device": device} if device != "cpu" else {}))
    fns["hf_pil"] = hf(pil)
    return time_side_by_side(fns, reps)


def video_bench(clip: bytes, device: str, reps: int) -> dict[str, Any]:
    """One clip, bytes -> pixel_values_videos with qwen-vl-utils sampling, vs qwen-vl-utils' own
    ``fetch_video`` (decord reader) + transformers' video processor."""
    from ..pipeline.families import Qwen2VLPreprocessor

    def processor() -> Any:
        from transformers import Qwen2VLVideoProcessor

        return Qwen2VLVideoProcessor()

    return _video_vs_qwen_vl_utils(Qwen2VLPreprocessor(device, cache_bytes=0), clip, device, reps, processor,
                                   qwen3=False)


def _video_vs_qwen_vl_utils(pre: Any, clip: bytes, device: str, reps: int, processor: Any, *,
                            qwen3: bool) -> dict[str, Any]:
    """``pre`` on ``clip`` against qwen-vl-utils + the transformers video processor ``processor()`` makes,
    side by side, with gpu-mm's per-stage times and the baseline's (``pre`` has its cache off: the work is
    measured, not the cache)."""
    last: dict[str, Any] = {}

    def ours() -> Any:
        out = pre(videos=[clip])
        _sync(device)
        last["items"] = out.items
        return out

    def finish(res: dict[str, Any]) -> dict[str, Any]:
        item = last["items"][0]
        res["gpu_mm"]["stages_ms"] = {k: v * 1e3 for k, v in item.timings.items()}
        res["gpu_mm"]["keyframe_runs"] = item.decoded.threads  # decoded at once (threads lent: decode_threads)
        res["grid_thw"] = list(item.grid_thw)
        res["frames"] = len(item.frame_indices or [])
        return res

    try:
        import decord  # noqa: F401
        import qwen_vl_utils  # noqa: F401

        vp = processor()
        from .baselines import qwen_vl_utils_video
    except ImportError as exc:
        res = finish(time_side_by_side({"gpu_mm": ours}, reps))
        res["qwen_vl_utils"] = {"skipped": f"not installed: {exc}"}
        return res
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "clip.mp4")
        with open(path, "wb") as f:
            f.write(clip)
        stages: dict[str, float] = {}

        def theirs() -> Any:
            out, st = qwen_vl_utils_video(path, vp, qwen3=qwen3)
            stages.update(st)
            return out

        res = finish(time_side_by_side({"gpu_mm": ours, "qwen_vl_utils": theirs}, reps))
        res["qwen_vl_utils"]["stages_ms"] = {k: v * 1e3 for k, v in stages.items()}
    return res


def qwen3_bench(jpeg: bytes, clip: bytes, device: str, reps: int) -> dict[str, Any]:
    """Qwen3-VL (the published models' processor settings): the JPEG vs transformers' image processor so
    configured, and the clip vs qwen-vl-utils (patch 16) + transformers' ``Qwen3VLVideoProcessor``."""
    from PIL import Image

    from ..pipeline.families import Qwen3VLPreprocessor

    pre = Qwen3VLPreprocessor(device, cache_bytes=0)

    def ours_image() -> Any:
        out = pre(images=[jpeg])
        _sync(device)
        return out

    def processor() -> Any:
        from transformers import Qwen3VLVideoProcessor


        return Qwen3VLVideoProcessor(size={"shortest_edge": 4096, "longest_edge": 25165824}, fps=2,
                                     cap_pixels_per_frame=False, **QWEN3_VL_IMAGE)

    result: dict[str, Any] = {"video": _video_vs_qwen_vl_utils(pre, clip, device, max(3, reps // 3), processor,
                                                               qwen3=True)}
    try:
        from transformers import Qwen2VLImageProcessor

    except ImportError as exc:
        result["image"] = time_side_by_side({"gpu_mm": ours_image}, reps)
        result["skipped"] = f"transformers not installed: {exc}"
        return result
    ip = Qwen2VLImageProcessor(size={"shortest_edge": 65536, "longest_edge": 16777216}, **QWEN3_VL_IMAGE)

    def hf_image() -> Any:
        out = ip(images=[Image.open(io.BytesIO(jpeg))], return_tensors="pt")  # type: ignore[arg-type]
        _sync(device)
        return out

    result["image"] = time_side_by_side({"gpu_mm": ours_image, "hf_torchvision": hf_image}, reps)
    return result


def patchify_bench(reps: int) -> dict[str, Any]:
    """normalize + patchify of a 2-frame 728x1316 group (what a 1080p image or clip step becomes), channels-last
    as the resize hands it over, against a plain copy of the same output bytes, side by side: into fresh memory
    (as the pipeline writes each item's rows) and into memory already touched (the copy's bandwidth floor);
    and the torch-ops path the C kernel replaces (what runs without a compiler at install), on the same frames."""
    import torch

    from .. import ops

    g = torch.Generator().manual_seed(0)
    frames = torch.randint(0, 256, (2, 728, 1316, 3), dtype=torch.uint8, generator=g).permute(0, 3, 1, 2)
    ref, _ = ops.normalize_patchify(frames)
    warm = torch.empty_like(ref)

    def torch_path() -> Any:
        return ops._normalize_patchify_torch(frames, ops.OPENAI_CLIP_MEAN, ops.OPENAI_CLIP_STD, 14, 2, 2, warm)

    runs = {
        "np_fresh": lambda: ops.normalize_patchify(frames, out=torch.empty_like(ref)),
        "copy_fresh": lambda: torch.empty_like(ref).copy_(ref),
        "np_warm": lambda: ops.normalize_patchify(frames, out=warm),
        "copy_warm": lambda: warm.copy_(ref),
        "torch_ops_warm": torch_path,
    }
    med = {name: t["p50_ms"] for name, t in time_side_by_side(runs, reps).items()}
    return {"output_bytes": ref.numel() * 4, "layout": "channels_last",
            "path": "C kernel" if ops.cpu_kernel_available() else "torch ops",
            **{f"{k}_ms": v for k, v in med.items()},
            "ratio_fresh": med["np_fresh"] / med["copy_fresh"], "ratio_warm": med["np_warm"] / med["copy_warm"],
            "speedup_vs_torch_ops": med["torch_ops_warm"] / med["np_warm"]}
