"""Describe the machine a benchmark ran on (CPU model, cores, GPU, library versions)."""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import os
import pathlib
import platform
from typing import Any

from ..concurrency import usable_cores


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
        "cores": usable_cores(),
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


def write_result(out: str | os.PathLike[str], stem: str, info: dict[str, Any], results: dict[str, Any], *,
                 merge: bool = False) -> pathlib.Path:
    """Write ``{"machine": info, "results": results}`` to ``out/<stem>_<date>.json`` and return the path.
    With ``merge``, sections already in that file that ``results`` lacks are kept (a partial rerun)."""
    folder = pathlib.Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{stem}_{info['date'][:10]}.json"
    if merge and path.exists():
        results = {**json.loads(path.read_text())["results"], **results}
    path.write_text(json.dumps({"machine": info, "results": results}, indent=2, default=str))
    return path


def health_summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Interleaved runs of one arm, each with ``p99_ms`` and ``max_ms`` of its /health probes: the values sorted,
    their medians, and how many runs had a p99 under 5 ms."""
    import statistics

    return {"p99_ms": sorted(round(r["p99_ms"], 2) for r in rows),
            "max_ms": sorted(round(r["max_ms"], 2) for r in rows),
            "median_p99_ms": round(statistics.median(r["p99_ms"] for r in rows), 2),
            "median_max_ms": round(statistics.median(r["max_ms"] for r in rows), 2),
            "runs_p99_under_5ms": sum(r["p99_ms"] < 5 for r in rows)}


def write_runs(out: str | os.PathLike[str], name: str, summary: dict[str, Any],
               runs: list[dict[str, Any]]) -> pathlib.Path:
    """Write ``{"machine": ..., "summary": summary, "runs": runs}`` to ``out/name`` (the folder made if missing)
    and return the path."""
    path = pathlib.Path(out) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"machine": machine_info(), "summary": summary, "runs": runs}, indent=1, default=str))
    return path


def report(result: dict[str, Any], out: str | os.PathLike[str] | None, *, quiet: tuple[str, ...] = ()) -> None:
    """A benchmark script's ending: ``result`` printed as JSON without the ``machine`` and ``quiet`` keys, and all
    of it written to ``out`` when given."""
    print(json.dumps({k: v for k, v in result.items() if k not in ("machine", *quiet)}, indent=1))
    if out is not None:
        pathlib.Path(out).write_text(json.dumps(result, indent=1) + "\n")
