"""How far nvJPEG's decode (torchvision ``decode_jpeg(device="cuda")``) is from libjpeg-turbo's on the CPU,
and how far the CUDA path's features are from the CPU path's, for the JPEGs the ``cuda`` tests use: chroma
subsampled 4:2:0 (Pillow's default) and 4:4:4. Written to ``$OUT/jpeg_diff.json``; the tolerances in
``tests/test_cuda_path.py`` come from these figures.

    python benchmarks/gpu_jpeg_diff.py --out DIR
"""

from __future__ import annotations

import argparse
import json
import pathlib

import torch
from torchvision.io import decode_jpeg

from gpu_mm.media.synth import make_image
from gpu_mm.pipeline.families import Qwen2VLPreprocessor

LEVEL = 1 / (255 * 0.2613)  # one uint8 level after normalization, at the smallest CLIP std


def stats(d: torch.Tensor) -> dict[str, float]:
    d = d.abs().float().flatten()
    q = torch.quantile(d[:: max(1, d.numel() // 4_000_000)], torch.tensor([0.5, 0.99, 0.999]))
    return {"max": float(d.max()), "mean": float(d.mean()), "p50": float(q[0]), "p99": float(q[1]),
            "p999": float(q[2]), "frac_gt_3": float((d > 3).float().mean())}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="bench-out")
    args = ap.parse_args()
    res = {}
    for name, kw in (("420", {}), ("444", {"subsampling": 0})):
        data = make_image(1080, 1920, "JPEG", **kw)
        raw = torch.frombuffer(bytearray(data), dtype=torch.uint8)
        cpu, gpu = decode_jpeg(raw), decode_jpeg(raw, device="cuda").cpu()
        r = {"decode_levels": stats(gpu.int() - cpu.int())}
        for dtype in (torch.float32, torch.uint8):
            c = Qwen2VLPreprocessor("cpu", output_dtype=dtype)(images=[data]).pixel_values
            g = Qwen2VLPreprocessor("cuda", output_dtype=dtype)(images=[data]).pixel_values.cpu()
            scale = LEVEL if dtype == torch.float32 else 1.0
            r[f"features_{str(dtype).split('.')[-1]}_levels"] = stats((g.float() - c.float()) / scale)
        res[name] = r
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "jpeg_diff.json").write_text(json.dumps(res, indent=2))
    print(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
