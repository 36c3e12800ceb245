"""vLLM's own Qwen-VL media path vs gpu-mm's vLLM plug-in, built and called the way vLLM's API server does
(needs ``vllm``; no weights, no GPU, no hub).

A model folder holds a Qwen-VL ``config.json`` and a processor with a word-level tokenizer made in code
(:func:`gpu_mm.bench.sglang.toy_processor`). vLLM's ``ModelConfig`` and ``MULTIMODAL_REGISTRY`` build the
multimodal processor from it; media go through vLLM's ``MediaConnector`` (data URIs, the loader vLLM picks
for the model's video processor class) on vLLM's media thread pool, then through the processor on one worker
thread, as vLLM's renderer runs it (``_mm_executor``, one thread).
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import functools
import pathlib
from collections.abc import Sequence
from typing import Any

from .plugins import compare
from .sglang import ARCHITECTURES, IMAGE_TOKEN, VIDEO_TOKEN, toy_processor
from .throughput import speedup, time_side_by_side

__all__ = ["ARCHITECTURES", "IMAGE_TOKEN", "VIDEO_TOKEN", "Engine", "data_uri", "model_folder", "run"]


def data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode()


def model_folder(model_type: str, folder: str | pathlib.Path) -> pathlib.Path:
    """Write a weightless ``model_type`` model (config + processor + tokenizer) into ``folder``."""
    import transformers

    folder = pathlib.Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config_cls = {"qwen2_vl": transformers.Qwen2VLConfig, "qwen2_5_vl": transformers.Qwen2_5_VLConfig,
                  "qwen3_vl": transformers.Qwen3VLConfig}[model_type]
    cfg = config_cls(vision_start_token_id=3, vision_end_token_id=4, image_token_id=1, video_token_id=2)
    cfg.architectures = [ARCHITECTURES[model_type]]
    cfg.save_pretrained(folder)
    toy_processor(model_type).save_pretrained(folder)
    return folder


class Engine:
    """The multimodal front of a vLLM server for one model folder: its ``MediaConnector`` and processor, and
    one worker thread for the processor (vLLM's renderer has exactly one)."""

    def __init__(self, folder: str | pathlib.Path, *, normalize_on_device: bool = True,
                 media_io_kwargs: dict[str, Any] | None = None, trust_remote_code: bool = False) -> None:
        from vllm.config import ModelConfig
        from vllm.multimodal import MULTIMODAL_REGISTRY
        from vllm.multimodal.media import MediaConnector
        from vllm.transformers_utils.processor import get_video_processor_cls_name

        self.model_config = ModelConfig(str(folder), tokenizer=str(folder), mm_processor_cache_gb=0,
                                        trust_remote_code=trust_remote_code,
                                        limit_mm_per_prompt={"image": 8, "video": 4},
                                        mm_device_do_normalize=normalize_on_device,
                                        media_io_kwargs=media_io_kwargs or {})
        self.processor = MULTIMODAL_REGISTRY.create_processor(self.model_config)
        mm_config = self.model_config.multimodal_config
        assert mm_config is not None
        self.connector = MediaConnector(media_io_kwargs=mm_config.media_io_kwargs)
        self.video_processor = get_video_processor_cls_name(self.model_config)
        self._mm_thread = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="mm-processor")

    async def load(self, images: Sequence[str] = (), videos: Sequence[str] = ()) -> dict[str, list[Any]]:
        """Media URLs as vLLM's chat parser fetches them (concurrently, on vLLM's media thread pool)."""
        img = [self.connector.fetch_image_async(u) for u in images]
        vid = [self.connector.fetch_video_async(u, video_processor=self.video_processor) for u in videos]
        got: list[Any] = list(await asyncio.gather(*img, *vid))
        out: dict[str, list[Any]] = {}
        if images:
            out["image"] = list(got[: len(images)])
        if videos:
            out["video"] = [v.media for v in got[len(images):]]
        return out

    def process(self, prompt: str, mm_data: dict[str, list[Any]]) -> Any:
        return self.processor(prompt, mm_items=self.processor.info.parse_mm_data(mm_data), hf_processor_mm_kwargs={})

    async def request(self, prompt: str, images: Sequence[str] = (), videos: Sequence[str] = ()) -> Any:
        """One request: media fetched and decoded, then the processor on the one processor thread."""
        mm_data = await self.load(images, videos)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._mm_thread, self.process, prompt, mm_data)

    def close(self) -> None:
        self._mm_thread.shutdown(wait=False)


def _loader_latency(video: bytes, own_loader: str, reps: int) -> dict[str, Any]:
    """The video loaders alone (bytes -> sampled frames, as ``VideoMediaIO.load_bytes``), interleaved."""
    from vllm.multimodal.media.image import ImageMediaIO
    from vllm.multimodal.media.video import VideoMediaIO

    loaders = {"vllm": VideoMediaIO(ImageMediaIO(), video_backend=own_loader),
               "gpu_mm": VideoMediaIO(ImageMediaIO(), video_backend=f"gpu_mm_{own_loader}")}
    return speedup(time_side_by_side({name: functools.partial(io.load_bytes, video)
                                      for name, io in loaders.items()}, reps), "vllm")


async def run(video: bytes, image: bytes, *, folder: str | pathlib.Path, reps: int = 3, concurrency: int = 8,
              model_type: str = "qwen2_5_vl", normalize_on_device: bool = True,
              progress: Any = print) -> dict[str, Any]:
    """vLLM's own path and the plug-in's, side by side in one process (the plug-in's registrations are made
    here, so vLLM's own engine is built first). Returns JSON-ready figures."""
    from ..integrations import vllm as plugin

    folder = model_folder(model_type, folder)
    result: dict[str, Any] = {"model_type": model_type, "mm_device_do_normalize": normalize_on_device,
                              "video_bytes": len(video), "image_bytes": len(image)}
    theirs = Engine(folder, normalize_on_device=normalize_on_device)
    # vLLM caches the transformers processor per model: a second folder keeps the two engines' apart.
    ours_folder = model_folder(model_type, pathlib.Path(folder).with_name(pathlib.Path(folder).name + "-gpu-mm"))
    result["registered"] = plugin.register(("loader", "processors"))
    ours = Engine(ours_folder, normalize_on_device=normalize_on_device)
    engines = {"vllm": theirs, "gpu_mm": ours}
    # The loader vLLM picks for the video processor class is global: each engine names its own.
    own_loader = "qwen3_vl" if model_type == "qwen3_vl" else "qwen2_vl"
    theirs.connector.media_io_kwargs = {"video": {"video_backend": own_loader}}
    video_req = {"prompt": f"{VIDEO_TOKEN} describe this", "videos": [data_uri(video, "video/mp4")]}
    image_req = {"prompt": f"{IMAGE_TOKEN} describe this", "images": [data_uri(image, "image/jpeg")]}
    progress(f"video loaders alone ({reps} interleaved repetitions) ...")
    result["video_loader_latency"] = _loader_latency(video, own_loader, reps)
    result.update(await compare({name: engine.request for name, engine in engines.items()}, "vllm", video_req,
                                image_req, reps=reps, concurrency=concurrency, progress=progress))
    for engine in engines.values():
        engine.close()
    return result
