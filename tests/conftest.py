"""Shared test configuration: the ``cuda`` marker skips without a GPU. ``async def`` tests run under pytest-asyncio
(``asyncio_mode = "auto"`` in pyproject.toml), each on a fresh event loop.

A preprocessor's defaults on the CPU are slot processes (3-4 s to start each) on ``SCHED_IDLE``: tests get slot
threads on the normal policy for them, unless marked ``default_workers`` (tests of the defaults themselves) or
passing ``workers=`` / ``idle_workers=`` (the slot-process and scheduling tests)."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _threads_for_auto_workers(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    if "default_workers" in request.keywords:
        return
    from gpu_mm.pipeline import preprocessor

    real = preprocessor.worker_defaults

    def threads_by_default(workers: str, idle_workers: bool | None, device: str) -> tuple[str, bool]:
        return real("threads" if workers == "auto" else workers, bool(idle_workers), device)

    monkeypatch.setattr(preprocessor, "worker_defaults", threads_by_default)


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
