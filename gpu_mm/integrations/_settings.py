"""The engine plug-ins' settings (``GPU_MM_*``), shared by the SGLang and vLLM plug-ins and kept apart from
them so that a plug-in's processor module and its installer both import them without importing each
other."""

from __future__ import annotations

import dataclasses
import os
from typing import Any

__all__ = ["PluginSettings", "install_settings", "settings"]


@dataclasses.dataclass(frozen=True)
class PluginSettings:
    """How an engine plug-in runs gpu-mm. Each field has a ``GPU_MM_<FIELD>`` environment variable
    (upper case; ``GPU_MM_MEMORY_BUDGET_MB`` and ``GPU_MM_CACHE_MB`` in MiB). The vLLM plug-in's video loader
    reads ``device``, ``video_decoder``, ``max_concurrent_calls``, ``max_queued``, ``timeout_s`` and
    ``memory_budget_bytes``."""

    device: str = "auto"
    """``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:N``."""
    video_decoder: str = "auto"
    """``auto`` (DALI/NVDEC on CUDA when installed, else PyAV), ``pyav``, ``dali``, ``decord``, ``torchcodec``."""
    image_decoder: str = "auto"
    """JPEGs: ``auto`` (nvJPEG on CUDA), ``nvjpeg``, ``cpu`` (libjpeg-turbo: transformers' decode; see
    :class:`gpu_mm.Preprocessor`)."""
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
    workers: str = "threads"
    """Where each slot's pixel work runs: ``threads`` (the slots' threads), ``processes`` (CPU only: a child process
    per slot, so the engine's event loop shares its interpreter lock with none of it; see
    :class:`gpu_mm.Preprocessor`; on CUDA it fails at start-up) or ``auto`` (processes on the CPU, threads on
    CUDA)."""

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
                if field.name in ("device", "video_decoder", "image_decoder", "workers"):
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
    """The settings a processor built now uses: those given to ``install``, else the environment's."""
    return _installed if _installed is not None else PluginSettings.from_env()


def install_settings(options: dict[str, Any]) -> PluginSettings:
    """Fix the settings processors built from now on use: ``options`` over the environment's."""
    global _installed
    _installed = dataclasses.replace(PluginSettings.from_env(), **options)
    return _installed
