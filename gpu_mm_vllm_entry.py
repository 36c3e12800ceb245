"""vLLM's ``vllm.general_plugins`` entry point for gpu-mm, kept outside the ``gpu_mm`` package on purpose.

vLLM calls every general plug-in in each of its processes (API server, engine core, every GPU worker). Importing
``gpu_mm`` costs about a second there even with torch already loaded, so this module decides from
``GPU_MM_VLLM`` alone whether anything is asked for, and imports :mod:`gpu_mm.integrations.vllm` only then.
"""

from __future__ import annotations

import os

OFF = ("", "0", "false", "off", "no")
"""Values of ``GPU_MM_VLLM`` (lower-cased, stripped) that ask for nothing, as ``gpu_mm.integrations.vllm.OFF``
(kept here too so that this module imports nothing of gpu_mm; a test keeps the two equal)."""


def register() -> None:
    """Register what ``GPU_MM_VLLM`` asks for (see :func:`gpu_mm.integrations.vllm.register`); without it,
    import nothing and do nothing."""
    if os.environ.get("GPU_MM_VLLM", "").strip().lower() in OFF:
        return
    from gpu_mm.integrations.vllm import register as register_parts

    register_parts()
