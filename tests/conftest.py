"""Shared test configuration: the ``cuda`` marker skips without a GPU. ``async def`` tests run under pytest-asyncio
(``asyncio_mode = "auto"`` in pyproject.toml), each on a fresh event loop."""

from __future__ import annotations

import pytest


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if _cuda_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


def pytest_configure(config: pytest.Config) -> None:
    # Triton kernels run under the interpreter on machines without a GPU (must be set before import).
    import os

    if not _cuda_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")
