"""Baselines gpu-mm is measured against, reimplemented or wrapped as they are used in serving stacks."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any


class SeedAsyncMMDataProcessor:
    """SGLang PR #12066's wrapper as merged (and later reverted): semaphore + ``asyncio.wait_for`` +
    a thread pool for sync processors. Kept faithful, defects included, as the baseline:
    a blocking ``async def`` processor runs on the loop, a timeout releases the semaphore while the
    thread keeps running, and one processor instance is shared by every pool thread."""

    def __init__(self, mm_processor: Any, *, max_concurrent_calls: int | None = None,
                 timeout_s: float | None = None) -> None:
        self.mm_processor = mm_processor
        self.timeout_s = timeout_s
        self.semaphore = asyncio.Semaphore(max_concurrent_calls) if max_concurrent_calls else None
        self._proc_async: Any = getattr(mm_processor, "process_mm_data_async", None)
        self.is_async = asyncio.iscoroutinefunction(self._proc_async)
        self._proc_sync: Any = getattr(mm_processor, "process_mm_data", None)
        self.fallback_exec = None
        if not self.is_async and callable(self._proc_sync):
            self.fallback_exec = ThreadPoolExecutor(max_workers=max_concurrent_calls or 32)

    async def process(self, *, image_data=None, audio_data=None, input_text_or_ids=None, request_obj=None,
                      **kwargs: Any) -> Any:
        async def _invoke() -> Any:
            if self.is_async:
                return await self._proc_async(image_data=image_data, audio_data=audio_data,
                                              input_text=input_text_or_ids, request_obj=request_obj, **kwargs)
            if not self.fallback_exec:
                raise RuntimeError("process_mm_data is not available")
            loop = asyncio.get_running_loop()
            fn = partial(self._proc_sync, image_data=image_data, audio_data=audio_data,
                         input_text=input_text_or_ids, request_obj=request_obj, **kwargs)
            return await loop.run_in_executor(self.fallback_exec, fn)

        if self.semaphore is not None:
            async with self.semaphore:
                if self.timeout_s is not None:
                    return await asyncio.wait_for(_invoke(), timeout=self.timeout_s)
                return await _invoke()
        if self.timeout_s is not None:
            return await asyncio.wait_for(_invoke(), timeout=self.timeout_s)
        return await _invoke()

    def shutdown(self) -> None:
        if self.fallback_exec:
            self.fallback_exec.shutdown(wait=False)


class HFImageProcessor:
    """transformers' ``Qwen2VLImageProcessor`` (torchvision backend) on encoded bytes, with both the
    sync (``process_mm_data``) and the "fake async" (``process_mm_data_async``) entry points."""

    def __init__(self, backend: str = "torchvision") -> None:
        from transformers import Qwen2VLImageProcessor, Qwen2VLImageProcessorPil

        self.backend = backend
        self.proc = Qwen2VLImageProcessor() if backend == "torchvision" else Qwen2VLImageProcessorPil()

    def process_mm_data(self, image_data=None, **_: Any) -> dict[str, Any]:
        from PIL import Image

        images = [Image.open(io.BytesIO(b)) for b in image_data]
        for im in images:
            im.load()
        return dict(self.proc(images=images, return_tensors="pt"))  # type: ignore[arg-type]  # PIL images


class FakeAsyncHF(HFImageProcessor):
    """The same work inside ``async def`` with no await: it blocks the caller's loop."""

    async def process_mm_data_async(self, image_data=None, **kw: Any) -> dict[str, Any]:
        return self.process_mm_data(image_data=image_data, **kw)


def qwen_vl_utils_video(path: str, video_processor: Any, *, qwen3: bool = False) -> tuple[Any, dict[str, float]]:
    """qwen-vl-utils' ``fetch_video`` (decord reader) then transformers' video processor, timed. With ``qwen3``,
    as Qwen3-VL's model card preprocesses video: patch 16, frames resized by qwen-vl-utils, then
    ``Qwen3VLVideoProcessor`` with their metadata and ``do_resize=False``."""
    import time

    import qwen_vl_utils.vision_process as qvu
    import torch

    qvu.FORCE_QWENVL_VIDEO_READER = "decord"
    fetch = {"image_patch_size": 16, "return_video_metadata": True} if qwen3 else {"return_video_sample_fps": True}
    t0 = time.perf_counter()
    video, extra = qvu.fetch_video({"video": path}, **fetch)
    t1 = time.perf_counter()
    call = {"video_metadata": [extra], "do_resize": False} if qwen3 else {"cap_pixels_per_frame": False}
    out = video_processor(videos=[video.round().to(torch.uint8)], return_tensors="pt", do_sample_frames=False, **call)
    t2 = time.perf_counter()
    return out, {"fetch_video": t1 - t0, "hf_video_processor": t2 - t1, "total": t2 - t0}


class SyncPreprocessor:
    """A preprocessor as a plain synchronous processor (what the seed's wrapper and the inline baseline run)."""

    def __init__(self, pre: Any) -> None:
        self.pre = pre

    def process_mm_data(self, image_data: Any = None, audio_data: Any = None, input_text: Any = None,
                        request_obj: Any = None, **kw: Any) -> dict[str, Any]:
        feats = self.pre(images=image_data, videos=kw.pop("video_data", None), **kw)
        return feats.processor_output(input_text)


class Inline:
    """The inline baseline: every request processed on the event loop itself, as a server without a wrapper does."""

    def __init__(self, pre: Any, settings: Any = None) -> None:
        self.sync = SyncPreprocessor(pre)

    async def process(self, **kwargs: Any) -> dict[str, Any]:
        return self.sync.process_mm_data(**kwargs)


def seed_front(pre: Any, settings: Any) -> SeedAsyncMMDataProcessor:
    """The seed's wrapper (SGLang PR #12066) in front of ``pre``, with the server's bound and deadline."""
    return SeedAsyncMMDataProcessor(SyncPreprocessor(pre), max_concurrent_calls=settings.max_concurrent_calls or 32,
                                    timeout_s=settings.timeout_s)


FRONTS: dict[str, Callable[[Any, Any], Any]] = {"inline": Inline, "seed": seed_front}
"""The baselines ``python -m gpu_mm.bench.baselines serve --mode NAME`` puts in front of gpu-mm's preprocessor."""


def main(argv: list[str] | None = None) -> int:
    """``gpu-mm serve`` with a baseline in front of its preprocessor: ``serve --mode inline|seed|gpu_mm`` and every
    flag of ``gpu-mm serve`` (benchmarks only; the product server has no modes)."""
    import argparse

    from ..serve import run
    from ..settings import Settings

    parser = argparse.ArgumentParser(prog="python -m gpu_mm.bench.baselines")
    parser.add_argument("command", choices=["serve"])
    parser.add_argument("--mode", default="gpu_mm", choices=["gpu_mm", *FRONTS])
    Settings.add_arguments(parser)
    args = parser.parse_args(argv)
    run(Settings.from_args(args), front=FRONTS.get(args.mode))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
