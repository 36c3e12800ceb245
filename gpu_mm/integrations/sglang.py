"""SGLang plug-in: compute Qwen2-VL / Qwen2.5-VL features with gpu-mm inside SGLang's own processor.

``GpuMMQwenVLProcessor`` (in :mod:`gpu_mm.integrations.sglang_processors.qwen_vl`) subclasses SGLang's
``QwenVLImageProcessor`` and swaps the HF processor's image and video processors for gpu-mm's
transformers drop-ins, so SGLang's own token expansion, ``mm_items`` and M-RoPE code run unchanged on
features gpu-mm computed. Enable it at server start with SGLang's external-processor hook::

    SGLANG_EXTERNAL_MM_PROCESSOR_PACKAGE=gpu_mm.integrations.sglang_processors \\
        python -m sglang.launch_server --model-path Qwen/Qwen2.5-VL-7B-Instruct ...

or, in a process that builds SGLang itself, call :func:`install` before the engine starts.
"""

from __future__ import annotations

import os

PACKAGE = "gpu_mm.integrations.sglang_processors"

__all__ = ["PACKAGE", "install"]


def install() -> type:
    """Register gpu-mm's processor for SGLang's Qwen2-VL / Qwen2.5-VL architectures; return its class.

    Sets ``SGLANG_EXTERNAL_MM_PROCESSOR_PACKAGE`` (for a TokenizerManager started later in this
    process or its children) and registers into ``PROCESSOR_MAPPING`` now, over SGLang's own entry.
    """
    from sglang.srt.managers.multimodal_processor import PROCESSOR_MAPPING, import_processors

    os.environ.setdefault("SGLANG_EXTERNAL_MM_PROCESSOR_PACKAGE", PACKAGE)
    import_processors("sglang.srt.multimodal.processors")
    import_processors(PACKAGE, overwrite=True)
    from .sglang_processors.qwen_vl import GpuMMQwenVLProcessor

    assert any(cls is GpuMMQwenVLProcessor for cls in PROCESSOR_MAPPING.values())
    return GpuMMQwenVLProcessor
