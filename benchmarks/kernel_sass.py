"""What each variant of the normalize+patchify kernel compiles to for a Hopper GPU (sm_90), here, without a GPU:
registers per thread, SASS instructions, and warp instructions issued per output element (the kernels have no
loops, so each warp runs every instruction once: instructions x warps per program / elements per program). A
static count, not a speed: it says how much work each variant asks of the SMs, which Nsight Compute found to be
the limit (benchmarks/results/nvidia-h200_2026-11-28/run7_ncu.txt); ``gpu_bench.py`` measures speed on a card.

    python benchmarks/kernel_sass.py [--out FILE]
"""

from __future__ import annotations

import argparse
import collections
import os
import pathlib
import re
import subprocess
import sys
import tempfile

os.environ.pop("TRITON_INTERPRET", None)  # compile for the GPU, not the interpreter

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from gpu_mm.kernels import normalize_patchify as K  # noqa: E402

BIN = pathlib.Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
INTEGER = {"IMAD", "IADD3", "LEA", "SHF", "IABS", "ISETP", "LOP3", "SEL", "IMNMX", "VIMNMX", "IMUL", "I2F", "F2I"}


def compiled(variant: str, patch: int, one: bool) -> dict[str, float]:
    """Compile ``variant`` for Qwen-VL's geometry (3 channels, temporal patch 2, merge 2) with float32 output."""
    c, tp, m = 3, 2, 2
    row = c * tp * patch * patch
    if variant.startswith("row"):
        kernel, extra, warps, rows = K._normalize_patchify_kernel, {}, 4, 1
        block = triton.next_power_of_2(c * patch * patch if one else row)
    elif variant.startswith("tile"):
        kernel, extra, warps, rows = K._normalize_patchify_tile_kernel, {"RB": 4}, 4, m * m
        block = triton.next_power_of_2(patch * patch)
    else:
        kernel, extra, warps, rows = K._normalize_patchify_block_kernel, {"RB": 4}, 8, m * m
        block = triton.next_power_of_2(c * patch * patch if one else row)
    sig = {"src_ptr": "*u8", "out_ptr": "*fp32", "mean_ptr": "*fp32", "std_ptr": "*fp32", "lut_ptr": "*fp32",
           **{n: "i32" for n in ("T", "H", "W", "GH", "GW", "ITEM_PIXELS", "ITEM_ROWS")},
           **{n: "constexpr" for n in ("C", "TP", "P", "M", "ROW", "BLOCK", "LUT", "ONE", *extra)}}
    consts = {"C": c, "TP": tp, "P": patch, "M": m, "ROW": row, "BLOCK": block, "LUT": variant.endswith("-lut"),
              "ONE": one, **extra}
    binary = triton.compile(ASTSource(fn=kernel, signature=sig, constexprs=consts), target=GPUTarget("cuda", 90, 32),
                            options={"num_warps": warps}).asm["cubin"]
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(binary)
        f.flush()
        sass = subprocess.run([BIN / "cuobjdump", "-sass", f.name], capture_output=True, text=True, check=True).stdout
        usage = subprocess.run([BIN / "cuobjdump", "-res-usage", f.name], capture_output=True, text=True,
                               check=True).stdout
    ops = [line.split("*/", 1)[1].split()[0] for line in sass.splitlines() if re.match(r"\s+/\*[0-9a-f]{4}\*/", line)]
    ops = [op for op in ops if op != "NOP"]
    kinds = collections.Counter(op.split(".")[0] for op in ops)
    regs = re.search(r"REG:(\d+)", usage)
    return {"registers": int(regs.group(1)) if regs else -1, "sass": len(ops),
            "warp_instructions_per_element": len(ops) * warps / (rows * row),
            "integer": sum(n for k, n in kinds.items() if k in INTEGER), "loads": kinds["LDG"], "stores": kinds["STG"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=pathlib.Path)
    args = parser.parse_args()
    lines = [f"triton {triton.__version__}, sm_90, float32 output, 3 channels, temporal patch 2, merge 2",
             f"{'variant':10} {'patch':>5} {'input':6} {'regs':>4} {'sass':>5} {'warp instr/elem':>15} "
             f"{'integer':>7} {'LDG':>4} {'STG':>4}"]
    for patch in (14, 16):
        for one in (False, True):
            for variant in K.VARIANTS:
                r = compiled(variant, patch, one)
                lines.append(f"{variant:10} {patch:5} {'image' if one else 'clip':6} {r['registers']:4} {r['sass']:5} "
                             f"{r['warp_instructions_per_element']:15.3f} {r['integer']:7} {r['loads']:4} "
                             f"{r['stores']:4}")
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
