"""SGLang's own Qwen-VL processor vs gpu-mm's plug-in, side by side in one process (needs ``sglang``).

Both are built the way SGLang builds them (``hf_config``, server args, an HF processor), with a
word-level tokenizer made in code (no hub), and called the way SGLang's TokenizerManager calls them.
Measured: bytes -> ``MultimodalProcessorOutput`` latency per request (interleaved repetitions), and,
with N requests in flight at once, the wall time and how late the caller's event loop runs (the loop
is SGLang's TokenizerManager loop: every millisecond it is blocked delays every other request).

Without CUDA, SGLang's own video path calls ``pin_memory()``, which needs a driver; :func:`allow_cpu_video`
then flips SGLang's two "CPU engine" predicates so that it skips pinning. Nothing else of SGLang is changed.
"""

from __future__ import annotations

import asyncio
import functools
from typing import Any

from .plugins import compare
from .throughput import QWEN3_VL_IMAGE

SPECIAL = ["<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>"]
VOCAB = {"<unk>": 0, **{t: i + 1 for i, t in enumerate(SPECIAL)}, "describe": 5, "this": 6, "and": 7, "<pad>": 8,
         # Qwen3-VL prompts say each temporal step's time, "<12.5 seconds>": one id per time, so equal ids
         # mean equal timestamps.
         "seconds>": 9, **{f"<{k / 10:.1f}": 10 + k for k in range(10_000)}}
IMAGE_TOKEN = "<|vision_start|><|image_pad|><|vision_end|>"
VIDEO_TOKEN = "<|vision_start|><|video_pad|><|vision_end|>"
ARCHITECTURES = {"qwen2_vl": "Qwen2VLForConditionalGeneration", "qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration",
                 "qwen3_vl": "Qwen3VLForConditionalGeneration"}


def toy_processor(model_type: str) -> Any:
    """A transformers Qwen2-VL / Qwen2.5-VL processor with default image/video processors (Qwen3-VL: the
    published models' processor settings) and a tiny word-level tokenizer that knows the vision special
    tokens (ids 1-4)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import (
        PreTrainedTokenizerFast,
        Qwen2_5_VLProcessor,
        Qwen2VLImageProcessor,
        Qwen2VLProcessor,
        Qwen2VLVideoProcessor,
    )

    tok = Tokenizer(models.WordLevel(VOCAB, unk_token="<unk>"))
    # Words split at "<" as real tokenizers split words from punctuation: a prompt decoded to text and encoded
    # again ("...describe<0.3 seconds>...", as SGLang re-tokenizes a prompt given as ids) keeps its timestamps.
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(),
                                                 pre_tokenizers.Split("<", "merged_with_next")])
    tok.decoder = decoders.Fuse()  # ids -> text -> ids round-trips for prompts without spaces
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>",
                                   additional_special_tokens=SPECIAL)
    if model_type == "qwen3_vl":
        from transformers import Qwen3VLProcessor, Qwen3VLVideoProcessor

        image = Qwen2VLImageProcessor(size={"shortest_edge": 65536, "longest_edge": 16777216}, **QWEN3_VL_IMAGE)
        video = Qwen3VLVideoProcessor(size={"shortest_edge": 4096, "longest_edge": 25165824}, fps=2, min_frames=4,
                                      max_frames=768, cap_pixels_per_frame=False, **QWEN3_VL_IMAGE)
        return Qwen3VLProcessor(image_processor=image, tokenizer=fast, video_processor=video)
    cls = Qwen2_5_VLProcessor if model_type == "qwen2_5_vl" else Qwen2VLProcessor
    return cls(image_processor=Qwen2VLImageProcessor(), tokenizer=fast, video_processor=Qwen2VLVideoProcessor())


def toy_config(model_type: str) -> Any:
    """A Qwen2-VL (or Qwen3-VL) config whose token ids match :func:`toy_processor` (``tokens_per_second`` 2 as
    Qwen2.5-VL)."""
    from transformers import Qwen2VLConfig, Qwen3VLConfig

    ids: dict[str, Any] = {"vision_start_token_id": 3, "vision_end_token_id": 4, "image_token_id": 1,
                           "video_token_id": 2}
    if model_type == "qwen3_vl":
        cfg: Any = Qwen3VLConfig(**ids)
        cfg.architectures = [ARCHITECTURES[model_type]]
        return cfg
    cfg = Qwen2VLConfig(**ids)
    cfg.model_type = model_type
    cfg.architectures = [ARCHITECTURES[model_type]]
    cfg.vision_config.tokens_per_second = 2
    return cfg


def allow_cpu_video() -> bool:
    """Without CUDA, let SGLang's video path skip ``pin_memory()``; return whether anything was patched."""
    import torch

    if torch.cuda.is_available():
        return False
    import sglang.srt.multimodal.processors.qwen_vl as sglang_qwen_vl
    import sglang.srt.utils.video_decoder as sglang_video_decoder

    sglang_qwen_vl.is_cpu = lambda: True
    sglang_video_decoder._is_cpu_engine = lambda: True
    return True


def build(model_type: str, server_args: Any, **settings: Any) -> tuple[Any, Any]:
    """(SGLang's own processor, gpu-mm's plug-in), both for ``model_type``."""
    from sglang.srt.multimodal.processors.qwen_vl import QwenVLImageProcessor

    from ..integrations.sglang import install

    settings.setdefault("cache_bytes", 0)  # both sides compute every request: the comparison is of the work
    plugin = install(**settings)
    theirs = QwenVLImageProcessor(toy_config(model_type), server_args, toy_processor(model_type), "default")
    ours = plugin(toy_config(model_type), server_args, toy_processor(model_type), "default")
    return theirs, ours


async def call(processor: Any, text: str | None, images: list[Any] | None = None, videos: list[Any] | None = None,
               prompt: list[int] | None = None, audios: list[Any] | None = None) -> Any:
    """One request, as SGLang's TokenizerManager sends it (``prompt``: the prompt as token ids instead)."""
    from sglang.srt.managers.io_struct import GenerateReqInput

    req = GenerateReqInput(text=text, image_data=images, video_data=videos, audio_data=audios, rid="bench")
    return await processor.process_mm_data_async(image_data=req.image_data, audio_data=req.audio_data,
                                                 input_text=text if prompt is None else prompt, request_obj=req,
                                                 max_req_input_len=1 << 20)


async def run(video: bytes, image: bytes, *, reps: int = 3, concurrency: int = 8,
              model_type: str = "qwen2_5_vl", progress: Any = print) -> dict[str, Any]:
    """The whole comparison; returns JSON-ready figures."""
    from sglang.srt.runtime_context import get_context

    patched = allow_cpu_video()
    result: dict[str, Any] = {"model_type": model_type, "sglang_pin_memory_skipped": patched,
                              "video_bytes": len(video), "image_bytes": len(image)}
    with get_context().override_server_args(mm_process_config={}) as server_args:
        theirs, ours = build(model_type, server_args)
        procs = {"sglang": theirs, "gpu_mm": ours}
        video_req = {"text": f"{VIDEO_TOKEN} describe this", "videos": [video]}
        image_req = {"text": f"{IMAGE_TOKEN} describe this", "images": [image]}
        sides = {name: functools.partial(call, proc) for name, proc in procs.items()}
        result.update(await compare(sides, "sglang", video_req, image_req, reps=reps, concurrency=concurrency,
                                    progress=progress))
        c = result["concurrent_video"]
        result["concurrent_video"]["loop_lag_max_ratio"] = (c["sglang"]["loop_lag"]["max_ms"]
                                                           / max(c["gpu_mm"]["loop_lag"]["max_ms"], 1e-3))
        result["gpu_mm_device"] = ours._gpu_mm_preprocessor.device if ours._gpu_mm_preprocessor else None
        theirs.shutdown()
        ours.shutdown()
    return result


def main_sync(video: bytes, image: bytes, **kw: Any) -> dict[str, Any]:
    return asyncio.run(run(video, image, **kw))
