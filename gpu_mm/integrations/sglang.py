"""SGLang plug-in: Qwen2-VL / Qwen2.5-VL / Qwen3-VL (MoE) / Qwen3.5 media loaded, decoded and turned into
features by gpu-mm; GLM-4.1V / 4.5V and Gemma 3 features computed by gpu-mm inside SGLang's own processors
(:mod:`gpu_mm.integrations.sglang_processors.families`, which also says why InternVL stays SGLang's).

``GpuMMQwenVLProcessor`` (in :mod:`gpu_mm.integrations.sglang_processors.qwen_vl`) subclasses SGLang's
``QwenVLImageProcessor``. For each request SGLang's TokenizerManager sends it, SGLang's own loader still
checks the prompt against the media, but hands the items on undecoded; gpu-mm then loads, decodes and
preprocesses them on its device slots behind a :class:`gpu_mm.AsyncMMDataProcessor` (admission bound,
deadline, slots held until abandoned work really ends), and SGLang's own token expansion
(``build_input_ids``), ``mm_items``, CUDA-IPC transport and M-RoPE code finish the request. Requests gpu-mm
does not take (audio, preprocessed inputs, image-only requests served by SGLang's preprocessing cache,
options it does not implement) go to SGLang's own path, with features still computed by gpu-mm's
transformers drop-ins.

Enable it at server start with SGLang's external-processor hook::

    SGLANG_EXTERNAL_MM_PROCESSOR_PACKAGE=gpu_mm.integrations.sglang_processors \\
        python -m sglang.launch_server --model-path Qwen/Qwen2.5-VL-7B-Instruct ...

or, in a process that builds SGLang itself, call :func:`install` before the engine starts. Settings come
from :func:`install`'s keywords, else from ``GPU_MM_*`` environment variables (see :class:`PluginSettings`).
"""

from __future__ import annotations

import os
from typing import Any

from ._settings import PluginSettings, install_settings, settings

PACKAGE = "gpu_mm.integrations.sglang_processors"

__all__ = ["PACKAGE", "PluginSettings", "install", "settings"]


def install(**options: Any) -> type:
    """Register gpu-mm's processors for SGLang's Qwen-VL architectures (Qwen2-VL, Qwen2.5-VL, Qwen3-VL,
    Qwen3-VL-MoE, Qwen3.5), GLM-4.1V / 4.5V, Gemma 3 and Qwen3-Omni; return the Qwen-VL one's class.

    ``options`` are :class:`PluginSettings` fields (unknown names raise ``TypeError``); fields not given
    come from the environment. Sets ``SGLANG_EXTERNAL_MM_PROCESSOR_PACKAGE`` (for a TokenizerManager
    started later in this process or its children) and registers into ``PROCESSOR_MAPPING`` now, over
    SGLang's own entry.
    """
    install_settings(options)
    from sglang.srt.managers.multimodal_processor import PROCESSOR_MAPPING, import_processors

    os.environ.setdefault("SGLANG_EXTERNAL_MM_PROCESSOR_PACKAGE", PACKAGE)
    import_processors("sglang.srt.multimodal.processors")
    import_processors(PACKAGE, overwrite=True)
    from .sglang_processors.qwen_vl import GpuMMQwenVLProcessor

    assert any(cls is GpuMMQwenVLProcessor for cls in PROCESSOR_MAPPING.values())
    return GpuMMQwenVLProcessor
