"""What planning an image costs the host, per image, before any pixel work: 64 JPEGs of one call planned (read,
header probed, sizes and working memory worked out) with gpu-mm's JPEG header reader and with Pillow's, interleaved
in one run. Planning is serial within a call, so at the issue-34 goal (64 1080p JPEGs at 3000 images/s, 21 ms)
each microsecond here is 64 microseconds of the batch.

    python benchmarks/plan_cost.py [--out FILE.json]
"""

from __future__ import annotations

import argparse
import pathlib
import statistics
import sys
import time
from typing import Any
from unittest import mock

from gpu_mm.bench.machine import machine_info, report
from gpu_mm.media import image
from gpu_mm.media.synth import make_image
from gpu_mm.pipeline.families import Qwen2VLPreprocessor


def measure(rounds: int = 5, jpegs: list[bytes] | None = None) -> dict[str, Any]:
    """Planning time per image (median of each round's median) of ``jpegs`` (64 1080p JPEGs made here when None),
    both header readers interleaved."""
    pre = Qwen2VLPreprocessor("cpu", cache_bytes=0, workers="threads")
    jpegs = jpegs or [make_image(1080, 1920, "JPEG", seed=s) for s in range(64)]
    pillow = mock.patch.object(image, "read_jpeg_header", lambda data: None)

    def per_image_us(reps: int = 20) -> float:
        times = []
        for _ in range(reps):
            t = time.perf_counter()
            pre._planner.plan_all(jpegs, None, {})
            times.append(time.perf_counter() - t)
        return statistics.median(times) / len(jpegs) * 1e6

    per_image_us(3)  # warm
    runs: dict[str, list[float]] = {"header_reader": [], "pillow": []}
    for _ in range(rounds):
        runs["header_reader"].append(per_image_us())
        with pillow:
            runs["pillow"].append(per_image_us())
    pre.close()
    p50 = {k: statistics.median(v) for k, v in runs.items()}
    return {"images": len(jpegs), "size": "1920x1080 JPEG", "plan_us_per_image": p50,
            "pillow_over_reader": p50["pillow"] / p50["header_reader"], "rounds": runs}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=pathlib.Path)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    result = {"machine": machine_info(), **measure(args.rounds)}
    report(result, args.out, quiet=("rounds",))
    return 0


if __name__ == "__main__":
    sys.exit(main())
