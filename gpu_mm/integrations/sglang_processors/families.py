"""gpu-mm's processors for SGLang's GLM-4.1V / 4.5V, Gemma 3 and Qwen3-Omni (imported by SGLang's processor
registry).

SGLang's own processors for these families load and decode the media, sample and pre-resize GLM's video frames
(its ``glm4v`` module), build the prompt and the items, and call the model's transformers processor for the pixel
(and, for Qwen3-Omni, audio) work. gpu-mm's processors are SGLang's own with that transformers processor's image and
video processors and feature extractor replaced by gpu-mm's drop-ins (:func:`gpu_mm.integrations.hf.adopt_drop_ins`):
the same call, the same features (transformers' own test mixins pass with the drop-ins), computed by gpu-mm; a call
the drop-ins do not implement runs transformers' own code. Loading, decoding, sampling and the prompt stay SGLang's,
in SGLang's threads: unlike the Qwen-VL processor (:mod:`.qwen_vl`), these do not move decoding onto gpu-mm's
slots, so gpu-mm's admission bound and deadline do not apply to them.

InternVL is not here: SGLang's ``InternVLProcessor`` (``InternVLChatModel``, ``InternS1ForConditionalGeneration``)
calls no transformers processor. It normalizes first, then resizes the float image with torch's bicubic
interpolation (no antialiasing) and casts tiles to bfloat16, and breaks aspect-ratio ties toward more tiles; the
checkpoints' own preprocessing (and vLLM's, and gpu-mm's ``internvl_chat``) resizes the uint8 image with Pillow's
antialiased bicubic filter, normalizes after, and breaks ties by area (for a 1920x1080 JPEG, 8 tiles and the
thumbnail, SGLang 0.5.23's tiles differ from vLLM's by up to 0.98 and on average 0.018 in normalized units). gpu-mm
does not reproduce SGLang's rule, and replacing SGLang's computation with the checkpoints' would change what its
users get, so SGLang's stays.
"""

from __future__ import annotations

from typing import Any

from sglang.srt.multimodal.processors.gemma3 import Gemma3SGLangImageProcessor
from sglang.srt.multimodal.processors.glm4v import Glm4vImageProcessor
from sglang.srt.multimodal.processors.qwen_vl import QwenVLImageProcessor

from gpu_mm.integrations._settings import settings
from gpu_mm.integrations.hf import adopt_drop_ins
from gpu_mm.integrations.service import use_plugin_service

__all__ = ["GpuMMGemma3Processor", "GpuMMGlm4vProcessor", "GpuMMQwenOmniProcessor"]


class GpuMMGlm4vProcessor(Glm4vImageProcessor):
    """SGLang's GLM-4.1V / 4.5V processor with gpu-mm's pixel work (image and video drop-ins)."""

    models = list(Glm4vImageProcessor.models)

    def __init__(self, hf_config: Any, server_args: Any, _processor: Any, *args: Any, **kwargs: Any) -> None:
        adopt_drop_ins(_processor)
        use_plugin_service(settings().service)  # GPU_MM_SERVICE: the drop-ins' calls go to the node's service
        super().__init__(hf_config, server_args, _processor, *args, **kwargs)


class GpuMMGemma3Processor(Gemma3SGLangImageProcessor):
    """SGLang's Gemma 3 processor with gpu-mm's pixel work (the image drop-in, pan-and-scan included)."""

    models = list(Gemma3SGLangImageProcessor.models)

    def __init__(self, hf_config: Any, server_args: Any, _processor: Any, *args: Any, **kwargs: Any) -> None:
        adopt_drop_ins(_processor)
        use_plugin_service(settings().service)  # GPU_MM_SERVICE: the drop-ins' calls go to the node's service
        super().__init__(hf_config, server_args, _processor, *args, **kwargs)


def _omni_models() -> list[Any]:
    """SGLang's Omni architectures its Qwen-VL processor serves (Qwen3-Omni in SGLang 0.5)."""
    return [m for m in QwenVLImageProcessor.models if "Omni" in m.__name__]


class GpuMMQwenOmniProcessor(QwenVLImageProcessor):
    """SGLang's Qwen-VL processor for Qwen3-Omni with gpu-mm's image, video and audio work (the Qwen2-VL image and
    video drop-ins, and the Whisper feature extractor drop-in for the log-mel)."""

    models = _omni_models()

    def __init__(self, hf_config: Any, server_args: Any, _processor: Any, *args: Any, **kwargs: Any) -> None:
        adopt_drop_ins(_processor)
        use_plugin_service(settings().service)  # GPU_MM_SERVICE: the drop-ins' calls go to the node's service
        super().__init__(hf_config, server_args, _processor, *args, **kwargs)
