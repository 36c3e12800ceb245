"""Shared test configuration: the ``cuda`` marker skips without a GPU; helpers for async tests."""

from __future__ import annotations

import asyncio
import inspect

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


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    """Run ``async def`` tests on a fresh event loop (no plugin needed)."""
    if inspect.iscoroutinefunction(pyfuncitem.obj):
        funcargs = pyfuncitem.funcargs
        names = pyfuncitem._fixtureinfo.argnames
        kwargs = {name: funcargs[name] for name in names}
        asyncio.run(pyfuncitem.obj(**kwargs))
        return True
    return None


def pytest_configure(config: pytest.Config) -> None:
    # Triton kernels run under the interpreter on machines without a GPU (must be set before import).
    import os

    if not _cuda_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")
