"""PNG plots of a ``gpu-mm bench`` result (matplotlib, headless)."""

from __future__ import annotations

import pathlib
from typing import Any


def write_plots(result: dict[str, Any], out_dir: str | pathlib.Path) -> list[pathlib.Path]:
    """Write the plots this result has data for; return their paths (none without matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    label = _label(result)
    paths = []

    def bars(ax: Any, names: list[str], series: dict[str, list[float]], ylabel: str) -> None:
        width = 0.8 / len(series)
        for k, (sname, values) in enumerate(series.items()):
            ax.bar([i + k * width for i in range(len(names))], values, width, label=sname)
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(names))], names, rotation=20, ha="right")
        ax.set_yscale("log")
        ax.set_ylabel(ylabel)
        ax.legend()
        ax.grid(axis="y", alpha=0.3)

    def quantile_bars(figures: dict[str, Any], key: str, ylabel: str, title: str, name: str) -> None:
        """p50 / p99 / max of ``figures[scenario][key]`` as grouped bars on a log scale."""
        fig, ax = plt.subplots(figsize=(8, 4.5))
        figures = {n: f for n, f in figures.items() if key in f}  # not skipped
        names = list(figures)
        bars(ax, names, {q: [max(figures[n][key][f"{q}_ms"], 1e-3) for n in names] for q in ("p50", "p99", "max")},
             ylabel)
        ax.set_title(f"{title}, {next(iter(figures.values()))['requests']} concurrent requests\n{label}", fontsize=10)
        fig.tight_layout()
        paths.append(out / name)
        fig.savefig(paths[-1], dpi=110)
        plt.close(fig)

    if result.get("loop_lag"):
        quantile_bars(result["loop_lag"], "loop_lag", "event-loop lag (ms, log)", "Event-loop lag under image load",
                      "loop_lag.png")
    if result.get("http"):
        quantile_bars(result["http"], "health", "GET /health latency (ms, log)", "/health while serving videos",
                      "http_health.png")

    sweep = result.get("concurrency_sweep")
    if sweep:
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4.2))
        for name, points in sweep.items():
            cs = [p["concurrency"] for p in points]
            a1.plot(cs, [p["throughput_rps"] for p in points], marker="o", label=name)
            a2.plot(cs, [max(p["loop_lag"]["p99_ms"], 1e-3) for p in points], marker="o", label=name)
        for ax in (a1, a2):
            ax.set_xscale("log", base=2)
            ax.set_xlabel("concurrent requests")
            ax.grid(alpha=0.3)
            ax.legend()
        a1.set_ylabel("images / s")
        a2.set_ylabel("loop lag p99 (ms, log)")
        a2.set_yscale("log")
        fig.suptitle(f"Throughput and loop lag vs concurrency\n{label}", fontsize=10)
        fig.tight_layout()
        paths.append(out / "concurrency.png")
        fig.savefig(paths[-1], dpi=110)
        plt.close(fig)

    vids = result.get("video")
    if vids:
        fig, ax = plt.subplots(figsize=(8, 4.5))
        names = list(vids)
        ours = [vids[n]["gpu_mm"]["p50_ms"] for n in names]
        theirs = [vids[n].get("qwen_vl_utils", {}).get("p50_ms", 0.0) for n in names]
        x = range(len(names))
        ax.bar([i - 0.2 for i in x], ours, 0.4, label="gpu-mm")
        ax.bar([i + 0.2 for i in x], theirs, 0.4, label="qwen-vl-utils fetch_video + transformers")
        ax.set_xticks(list(x), [f"H.264 {n}" for n in names])
        ax.set_ylabel("bytes -> features, p50 (ms)")
        ax.set_title(f"Video preprocessing (60 frames sampled at 2 fps from 30 s clips)\n{label}", fontsize=10)
        ax.legend()
        ax.grid(axis="y", alpha=0.3)
        fig.tight_layout()
        paths.append(out / "video.png")
        fig.savefig(paths[-1], dpi=110)
        plt.close(fig)
    return paths


def _label(result: dict[str, Any]) -> str:
    from .machine import machine_label

    return f"{machine_label(result['machine'])}, device {result.get('device', '?')}, {result['machine']['date'][:10]}"
