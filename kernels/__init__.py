"""Triton kernels for gpu-mm, each beside its torch reference (importable as ``gpu_mm.kernels``).

Import-guarded: without Triton (or without a GPU and ``TRITON_INTERPRET=1``) ``triton_available()``
is False and callers use the torch reference in ``gpu_mm.ops``.
"""

from __future__ import annotations

import os

__all__ = ["fused_normalize_patchify", "triton_available"]


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


def fused_normalize_patchify(*args, **kwargs):  # type: ignore[no-untyped-def]
    """See :func:`gpu_mm.kernels.normalize_patchify.fused_normalize_patchify`."""
    from .normalize_patchify import fused_normalize_patchify as impl

    return impl(*args, **kwargs)
