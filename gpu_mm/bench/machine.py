"""Describe the machine a benchmark ran on (CPU model, cores, GPU, library versions)."""

from __future__ import annotations

import datetime
import importlib.metadata
import os
import platform
from typing import Any


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def machine_info() -> dict[str, Any]:
    """A JSON-ready description of this machine and the relevant package versions."""
    cpu = platform.processor() or "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    info: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "cpu": cpu,
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "gpu": None,
        "versions": {d: _version(d) for d in ("gpu-mm", "torch", "torchvision", "transformers", "av", "triton",
                                               "nvidia-dali-cuda130", "decord2", "qwen-vl-utils", "pillow")},
    }
    try:
        import torch

        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
            info["cuda"] = torch.version.cuda
    except ImportError:
        pass
    return info


def machine_label(info: dict[str, Any]) -> str:
    """One line naming the machine, e.g. ``NVIDIA H100 / 16 cores`` or ``CPU: Xeon ... (2 cores)``."""
    if info.get("gpu"):
        return f"{info['gpu']}, {info['cores']} cores"
    return f"CPU only: {info['cpu']} ({info['cores']} cores)"
