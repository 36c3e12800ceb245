"""SGLang's own Qwen-VL processor vs gpu-mm's SGLang plug-in, side by side in one run (needs sglang).

    python benchmarks/sglang_plugin.py [--reps 3] [--concurrency 8] [--seconds 30] [--out DIR]

Media are generated in memory: a ~2 MB 1280x720 H.264 clip (the seed's example size) and a 1920x1080 JPEG.
"""

from __future__ import annotations

import argparse
import sys

from gpu_mm.bench.machine import machine_info, machine_label, write_result
from gpu_mm.bench.sglang import main_sync, print_comparison
from gpu_mm.media.synth import make_image, make_video


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--seconds", type=int, default=30)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    info = machine_info()
    print(f"machine: {machine_label(info)}")
    video = make_video(args.seconds * 30, 720, 1280, fps=30, gop=60, bframes=2, bit_rate=550_000)
    image = make_image(1080, 1920, "JPEG")
    print(f"media: {len(video) / 1e6:.1f} MB {args.seconds} s 720p H.264, {len(image) / 1e6:.2f} MB 1080p JPEG")
    res = main_sync(video, image, reps=args.reps, concurrency=args.concurrency)
    print(f"\nbytes -> SGLang MultimodalProcessorOutput, p50 (gpu-mm on {res['gpu_mm_device']}):")
    print_comparison(res, "sglang", "SGLang", {"video_latency": "720p video", "image_latency": "1080p JPEG"},
                     args.concurrency)
    print(f"  max loop lag {res['concurrent_video']['loop_lag_max_ratio']:.0f}x lower with gpu-mm")
    if args.out:
        kind = "cuda" if res["gpu_mm_device"] and res["gpu_mm_device"].startswith("cuda") else "cpu"
        print(f"wrote {write_result(args.out, f'sglang_plugin_{kind}', info, res)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
