"""gpu-mm's Qwen2-VL / Qwen2.5-VL processor for SGLang (imported by SGLang's processor registry)."""

from __future__ import annotations

import copy
from typing import Any

from sglang.srt.models.qwen2_5_vl import Qwen2_5_VLForConditionalGeneration
from sglang.srt.models.qwen2_vl import Qwen2VLForConditionalGeneration
from sglang.srt.multimodal.processors.qwen_vl import QwenVLImageProcessor

from gpu_mm.integrations.hf import GpuMMQwen2VLImageProcessor, GpuMMQwen2VLVideoProcessor


def _adopt(obj: Any, cls: type) -> Any:
    """A copy of transformers processor ``obj`` (same configuration) whose methods are ``cls``'s."""
    if isinstance(obj, cls):
        return obj
    new = copy.copy(obj)
    new.__class__ = cls
    return new


class GpuMMQwenVLProcessor(QwenVLImageProcessor):
    """SGLang's Qwen-VL processor with features computed by gpu-mm (token expansion and M-RoPE: SGLang's)."""

    models = [Qwen2VLForConditionalGeneration, Qwen2_5_VLForConditionalGeneration]

    def __init__(self, hf_config: Any, server_args: Any, _processor: Any, *args: Any, **kwargs: Any) -> None:
        if getattr(_processor, "image_processor", None) is not None:
            _processor.image_processor = _adopt(_processor.image_processor, GpuMMQwen2VLImageProcessor)
        if getattr(_processor, "video_processor", None) is not None:
            _processor.video_processor = _adopt(_processor.video_processor, GpuMMQwen2VLVideoProcessor)
        super().__init__(hf_config, server_args, _processor, *args, **kwargs)
