"""One benchmark line per model family beyond Qwen: gpu-mm against the family's own transformers processor on
the same media, side by side in one run (the JPEG; the clip for the families that take video).

The transformers side is what a serving stack without gpu-mm does: Pillow decodes the image, PyAV decodes every
frame of the clip (transformers' processors take frames) and the processor samples, resizes and normalizes them.
Each family runs with its published checkpoints' settings; gpu-mm's cache is off (the work is measured).
InternVL's original checkpoints (``internvl_chat``) have no transformers processor: their line is against vLLM's
``InternVLChatImageProcessor`` (the engine's own path for them), where vLLM is installed."""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

from .throughput import _sync, speedup, time_side_by_side

VIDEO_FRAMES = 16
"""InternVL's frames per clip on both sides (its processor takes every frame otherwise; the engines sample)."""


def _all_frames(clip: bytes) -> tuple[Any, float]:
    """Every frame of ``clip`` as uint8 ``[T, H, W, 3]`` (PyAV), and its frame rate."""
    import av
    import numpy as np
    import torch

    with av.open(io.BytesIO(clip), mode="r") as container:
        stream = container.streams.video[0]
        fps = float(stream.average_rate or 30)
        frames = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(stream)])
    return torch.from_numpy(frames), fps


def _references() -> dict[str, dict[str, Callable[[], Any]]]:
    """Per family: the transformers image and video processors (published checkpoints' settings) and the
    request options that make gpu-mm compute the same."""
    from transformers import (
        Gemma3ImageProcessor,
        Glm4vImageProcessor,
        Glm4vVideoProcessor,
        GotOcr2ImageProcessor,
        InternVLVideoProcessor,
    )

    imagenet: dict[str, Any] = {"image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225]}
    refs: dict[str, dict[str, Callable[[], Any]]] = {
        "glm4v": {"image": lambda: Glm4vImageProcessor(), "video": lambda: Glm4vVideoProcessor()},
        "internvl": {
            "image": lambda: GotOcr2ImageProcessor(size={"height": 448, "width": 448}, crop_to_patches=True,
                                                   **imagenet),
            "video": lambda: InternVLVideoProcessor(size={"height": 448, "width": 448}, **imagenet),
        },
        "gemma3": {"image": lambda: Gemma3ImageProcessor(size={"height": 896, "width": 896}, image_mean=[0.5] * 3,
                                                         image_std=[0.5] * 3, do_pan_and_scan=True,
                                                         pan_and_scan_min_crop_size=256, pan_and_scan_max_num_crops=4,
                                                         pan_and_scan_min_ratio_to_activate=1.2)},
    }
    try:
        from vllm.transformers_utils.processors.internvl import InternVLChatImageProcessor
    except ImportError:
        return refs
    refs["internvl_chat"] = {"image": lambda: InternVLChatImageProcessor(
        image_size=448, min_dynamic_patch=1, max_dynamic_patch=12, dynamic_image_size=True, use_thumbnail=True)}
    return refs


REFERENCE = {"internvl_chat": "vllm"}
"""Who a family's line compares against, where it is not transformers."""


OPTIONS: dict[str, dict[str, dict[str, Any]]] = {
    "gemma3": {"image": {"do_pan_and_scan": True}},
    "internvl": {"video": {"nframes": VIDEO_FRAMES}},
}
THEIR_VIDEO_KWARGS: dict[str, dict[str, Any]] = {"internvl": {"num_frames": VIDEO_FRAMES}}


def families_bench(jpeg: bytes, clip: bytes, device: str, reps: int) -> dict[str, Any]:
    """Per family: the JPEG (and the clip, where the family takes video), gpu-mm vs transformers."""
    from ..pipeline.families import preprocessor_class

    try:
        refs = _references()
        from PIL import Image
        from transformers.video_utils import VideoMetadata
    except ImportError as exc:
        return {"skipped": f"transformers not installed: {exc}"}
    out: dict[str, Any] = {}
    for family, procs in refs.items():
        pre = preprocessor_class(family)(device, cache_bytes=0)
        result: dict[str, Any] = {}
        image_proc = procs["image"]()
        image_opts = OPTIONS.get(family, {}).get("image", {})
        last: dict[str, Any] = {}

        def ours_image(pre: Any = pre, opts: dict[str, Any] = image_opts) -> Any:
            feats = pre(images=[jpeg], **opts)
            _sync(device)
            last["image"] = feats.items[0]
            return feats

        def theirs_image(proc: Any = image_proc) -> Any:
            return proc(images=[Image.open(io.BytesIO(jpeg)).convert("RGB")], return_tensors="pt")

        ref = REFERENCE.get(family, "transformers")
        result["image"] = speedup(time_side_by_side({"gpu_mm": ours_image, ref: theirs_image}, reps), ref)
        result["image"]["reference"] = ref
        result["image"]["outputs"] = list(last["image"].grid_thw)
        if "video" in procs:
            video_proc = procs["video"]()
            video_opts = OPTIONS.get(family, {}).get("video", {})
            their_kw = THEIR_VIDEO_KWARGS.get(family, {})

            def ours_video(pre: Any = pre, opts: dict[str, Any] = video_opts) -> Any:
                feats = pre(videos=[clip], **opts)
                _sync(device)
                last["video"] = feats.items[0]
                return feats

            def theirs_video(proc: Any = video_proc, kw: dict[str, Any] = their_kw) -> Any:
                frames, fps = _all_frames(clip)
                n = frames.shape[0]
                meta = VideoMetadata(total_num_frames=n, fps=fps, duration=n / fps)
                return proc(videos=[frames], video_metadata=[meta], do_sample_frames=True, return_tensors="pt", **kw)

            result["video"] = speedup(time_side_by_side({"gpu_mm": ours_video, "transformers": theirs_video},
                                                        max(3, reps // 3)), "transformers")
            result["video"]["reference"] = "transformers"
            result["video"]["frames"] = len(last["video"].frame_indices or [])
            result["video"]["outputs"] = list(last["video"].grid_thw)
        pre.close()
        out[family] = result
    return out
