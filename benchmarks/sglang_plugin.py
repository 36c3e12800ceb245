"""SGLang's own Qwen-VL processor vs gpu-mm's SGLang plug-in, side by side in one run (needs sglang).

    python benchmarks/sglang_plugin.py [--reps 3] [--concurrency 8] [--seconds 30] [--out DIR]

Media are generated in memory: a ~2 MB 1280x720 H.264 clip (the seed's example size) and a 1920x1080 JPEG.
"""

from __future__ import annotations

import sys

from gpu_mm.bench.machine import machine_info, machine_label, write_result
from gpu_mm.bench.plugins import media, parser, print_comparison
from gpu_mm.bench.sglang import main_sync


def main() -> int:
    ap = parser(__doc__)
    args = ap.parse_args()
    info = machine_info()
    print(f"machine: {machine_label(info)}")
    video, image = media(args.seconds)
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
