"""SGLang plug-in: Qwen2-VL / Qwen2.5-VL media loaded, decoded and turned into features by gpu-mm.

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

import dataclasses
import os
from typing import Any

PACKAGE = "gpu_mm.integrations.sglang_processors"

__all__ = ["PACKAGE", "PluginSettings", "install", "settings"]


@dataclasses.dataclass(frozen=True)
class PluginSettings:
    """How the SGLang plug-in runs gpu-mm. Each field has a ``GPU_MM_<FIELD>`` environment variable
    (upper case; ``GPU_MM_MEMORY_BUDGET_MB`` and ``GPU_MM_CACHE_MB`` in MiB)."""

    device: str = "auto"
    """``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:N``."""
    video_decoder: str = "auto"
    """``auto`` (DALI/NVDEC on CUDA when installed, else PyAV), ``pyav``, ``dali``, ``decord``, ``torchcodec``."""
    max_concurrent_calls: int | None = None
    """Requests in flight in gpu-mm at once, abandoned ones included (``None``: 32)."""
    max_queued: int | None = None
    """Requests allowed to wait beyond those; more fail at once with ``gpu_mm.Overloaded``."""
    timeout_s: float | None = None
    """Per-request deadline counted from arrival; past it ``gpu_mm.ProcessingTimeout`` (a TimeoutError)."""
    num_slots: int | None = None
    """Device slots (worker thread + CUDA stream each); ``None``: 1."""
    memory_budget_bytes: int | None = None
    """Device bytes in flight (decoded frames + outputs) before further items queue."""
    cache_bytes: int | None = None
    """Feature cache by content (``GPU_MM_CACHE_MB``); ``None``: gpu-mm's default (1 GiB); 0: off. SGLang's own
    ``mm_preprocess_cache_size_mb`` is separate."""

    @classmethod
    def from_env(cls, environ: Any = None) -> PluginSettings:
        """Read ``GPU_MM_*`` variables; an unparsable value raises ``ValueError`` naming the variable."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for field in dataclasses.fields(cls):
            name = {"memory_budget_bytes": "GPU_MM_MEMORY_BUDGET_MB", "cache_bytes": "GPU_MM_CACHE_MB"}.get(
                field.name, f"GPU_MM_{field.name.upper()}")
            raw = env.get(name)
            if raw is None or raw == "":
                continue
            try:
                if field.name in ("device", "video_decoder"):
                    values[field.name] = raw
                elif field.name == "timeout_s":
                    values[field.name] = float(raw)
                elif field.name in ("memory_budget_bytes", "cache_bytes"):
                    values[field.name] = int(float(raw) * 2**20)
                else:
                    values[field.name] = int(raw)
            except ValueError:
                raise ValueError(f"{name}={raw!r} is not a valid value for {field.name}") from None
        return cls(**values)


_installed: PluginSettings | None = None


def settings() -> PluginSettings:
    """The settings a processor built now uses: those given to :func:`install`, else the environment's."""
    return _installed if _installed is not None else PluginSettings.from_env()


def install(**options: Any) -> type:
    """Register gpu-mm's processor for SGLang's Qwen2-VL / Qwen2.5-VL architectures; return its class.

    ``options`` are :class:`PluginSettings` fields (unknown names raise ``TypeError``); fields not given
    come from the environment. Sets ``SGLANG_EXTERNAL_MM_PROCESSOR_PACKAGE`` (for a TokenizerManager
    started later in this process or its children) and registers into ``PROCESSOR_MAPPING`` now, over
    SGLang's own entry.
    """
    global _installed
    _installed = dataclasses.replace(PluginSettings.from_env(), **options)
    from sglang.srt.managers.multimodal_processor import PROCESSOR_MAPPING, import_processors

    os.environ.setdefault("SGLANG_EXTERNAL_MM_PROCESSOR_PACKAGE", PACKAGE)
    import_processors("sglang.srt.multimodal.processors")
    import_processors(PACKAGE, overwrite=True)
    from .sglang_processors.qwen_vl import GpuMMQwenVLProcessor

    assert any(cls is GpuMMQwenVLProcessor for cls in PROCESSOR_MAPPING.values())
    return GpuMMQwenVLProcessor
