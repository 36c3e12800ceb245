"""Dataset preprocessing on Ray vs a plain loop, side by side on this machine.

    python benchmarks/ray_dataset.py [--images 32] [--videos 8] [--out benchmarks/results]

Generates media (720p JPEGs, 5 s 360p H.264 clips) into a temporary folder, then measures items/s of: a
plain single-process loop calling gpu-mm on each file (read bytes -> features -> the same Parquet row), and
``preprocess_dataset`` on a local Ray cluster with 1 and 2 CPU workers. The Ray overhead per item is the
difference of per-item wall times against the loop at one worker.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

os.environ.setdefault("RAY_AUTH_MODE", "disabled")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=32)
    ap.add_argument("--videos", type=int, default=8)
    ap.add_argument("--out", default=None)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="actor counts to run")
    args = ap.parse_args()

    import ray

    from gpu_mm.bench.machine import machine_info, machine_label, write_result
    from gpu_mm.integrations import ray as gray
    from gpu_mm.media.synth import make_image, make_video

    with tempfile.TemporaryDirectory() as tmp:
        media = os.path.join(tmp, "media")
        os.makedirs(media)
        for i in range(args.images):
            with open(os.path.join(media, f"img{i:03d}.jpg"), "wb") as f:
                f.write(make_image(720, 1280, "JPEG", seed=i))
        for i in range(args.videos):
            with open(os.path.join(media, f"vid{i:03d}.mp4"), "wb") as f:
                f.write(make_video(150, 360, 640, fps=30, gop=60, bframes=2, bit_rate=550_000))
        n = args.images + args.videos
        result: dict = {"machine": machine_info(), "items": n, "images": args.images, "videos": args.videos}

        import pyarrow as pa
        import pyarrow.parquet as pq

        worker = gray.GpuMMWorker(device="cpu")
        t0 = time.perf_counter()
        paths = gray.list_inputs(media)
        os.makedirs(os.path.join(tmp, "loop"))
        for start in range(0, len(paths), 8):  # the same rows, written to Parquet the same way, 8 at a time
            rows = []
            for path in paths[start : start + 8]:
                with open(path, "rb") as f:
                    rows.append(worker.row(f.read(), path))
            table = pa.Table.from_pylist(rows, schema=gray.schema())
            pq.write_table(table, os.path.join(tmp, "loop", f"{start:05d}.parquet"))
        loop_s = time.perf_counter() - t0
        result["plain_loop"] = {"seconds": loop_s, "items_per_s": n / loop_s}
        print(f"plain loop: {n / loop_s:.1f} items/s", file=sys.stderr)

        t0 = time.perf_counter()
        # One logical CPU more than the cores: Ray Data reserves resources per operator, and with every core
        # held by an actor the read tasks feeding them waited forever (2 actors on 2 cores stalled here).
        cores = os.cpu_count() or 2
        gray.connect("local", num_cpus=cores + 1, object_store_memory=2 * 2**30, _node_ip_address="127.0.0.1")
        result["ray_init_s"] = time.perf_counter() - t0
        for workers in args.workers:
            out = os.path.join(tmp, f"out{workers}")
            summary = gray.preprocess_dataset(media, out, device="cpu", workers=workers, batch_size=8)
            assert summary.written == n and summary.failed == 0
            result[f"ray_{workers}_workers"] = {"seconds": summary.seconds, "items_per_s": n / summary.seconds}
            print(f"ray, {workers} workers: {n / summary.seconds:.1f} items/s", file=sys.stderr)
        ray.shutdown()
    one = result["ray_1_workers"]["seconds"]
    result["ray_overhead_per_item_ms"] = (one - loop_s) / n * 1e3
    for workers in args.workers:
        result[f"ratio_{workers}_workers_vs_loop"] = (result[f"ray_{workers}_workers"]["items_per_s"]
                                                      / result["plain_loop"]["items_per_s"])
    print(json.dumps({k: v for k, v in result.items() if k != "machine"}, indent=2))
    print("note: each Ray run includes starting its actors (importing torch and gpu-mm in each)", file=sys.stderr)
    print(f"machine: {machine_label(result['machine'])}", file=sys.stderr)
    if args.out:
        info = result.pop("machine")
        print(f"wrote {write_result(args.out, 'ray_dataset_cpu', info, result)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
