"""vLLM's own Qwen-VL media path vs gpu-mm's vLLM plug-in, side by side in one run (needs vllm).

    python benchmarks/vllm_plugin.py [--reps 3] [--concurrency 8] [--seconds 30] [--model-type qwen2_5_vl]
                                     [--cpu-normalize] [--out DIR]

Both are built from weightless model folders by vLLM's ModelConfig and called as vLLM's API server calls them:
media through vLLM's MediaConnector (data URIs, on its media thread pool; video by the loader vLLM picks for
the model: OpenCV for vLLM, gpu-mm's for the plug-in), then the multimodal processor on one worker thread
(vLLM's renderer has one). Default mode: mm_device_do_normalize on (uint8 patches); --cpu-normalize: off
(float patches, normalized on the CPU). Media are generated in
memory: a ~2 MB 1280x720 H.264 clip and a 1920x1080 JPEG.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile

from gpu_mm.bench.machine import machine_info, machine_label, write_result
from gpu_mm.bench.plugins import media, parser, print_comparison
from gpu_mm.bench.vllm import run


def main() -> int:
    ap = parser(__doc__)
    ap.add_argument("--model-type", default="qwen2_5_vl", choices=["qwen2_vl", "qwen2_5_vl"])
    ap.add_argument("--cpu-normalize", action="store_true", help="mm_device_do_normalize off: float patches")
    args = ap.parse_args()
    info = machine_info()
    print(f"machine: {machine_label(info)}")
    video, image = media(args.seconds)
    with tempfile.TemporaryDirectory() as folder:
        res = asyncio.run(run(video, image, folder=f"{folder}/model", reps=args.reps, concurrency=args.concurrency,
                              model_type=args.model_type, normalize_on_device=not args.cpu_normalize))
    patches = "float patches" if args.cpu_normalize else "uint8 patches"
    print(f"\nbytes -> vLLM processor output ({args.model_type}, {patches}), p50:")
    print_comparison(res, "vllm", "vLLM", {"video_loader_latency": "loader only", "video_latency": "720p video",
                                           "image_latency": "1080p JPEG"}, args.concurrency)
    if args.out:
        name = "vllm_plugin_cpu_normalize_cpu" if args.cpu_normalize else "vllm_plugin_cpu"
        print(f"wrote {write_result(args.out, name, info, res)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
