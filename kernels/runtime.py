"""Whether gpu-mm's Triton kernels can run here (importable without Triton).

The kernels in this folder ship as ``gpu_mm.kernels`` (``gpu_mm/kernels`` is a link to this folder). This folder
has no ``__init__.py`` on purpose: a top-level package named ``kernels`` in a checkout would shadow Hugging
Face's ``kernels`` distribution, which transformers imports.
"""

from __future__ import annotations

import os

__all__ = ["triton_available"]


def triton_available() -> bool:
    """True when Triton imports and can run here (a CUDA device, or the interpreter on the CPU)."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    if os.environ.get("TRITON_INTERPRET") == "1":
        return True
    import torch

    return torch.cuda.is_available()
