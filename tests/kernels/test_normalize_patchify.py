"""The fused normalize+patchify Triton kernel against its torch reference: under TRITON_INTERPRET=1 on
the CPU (small shapes), and compiled on CUDA under the ``cuda`` marker."""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys

import pytest
import torch

from gpu_mm import ops

pytest.importorskip("triton")
from gpu_mm.kernels.normalize_patchify import VARIANTS, fused_normalize_patchify  # noqa: E402
from gpu_mm.kernels.runtime import triton_available  # noqa: E402

pytestmark = pytest.mark.skipif(not triton_available(), reason="Triton cannot run here")

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]


def _on(device: str) -> str:
    if device == "cpu" and torch.cuda.is_available():
        pytest.skip("the interpreter path is exercised on machines without a GPU")
    return device


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("t,h,w", [(1, 28, 28), (2, 56, 84), (3, 28, 56), (5, 56, 28)])
def test_matches_reference_exactly_in_float32(device, t, h, w, variant):
    device = _on(device)
    x = torch.randint(0, 256, (t, 3, h, w), dtype=torch.uint8, device=device)
    ref, grid = ops.normalize_patchify(x)
    out, grid2 = fused_normalize_patchify(x, variant=variant)
    assert grid == grid2
    # Same float32 subtraction and division of the same constants: bit-identical.
    assert torch.equal(out, ref)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("device", DEVICES)
def test_bfloat16_output_equals_rounded_reference(device, variant):
    device = _on(device)
    x = torch.randint(0, 256, (2, 3, 28, 56), dtype=torch.uint8, device=device)
    out, _ = fused_normalize_patchify(x, dtype=torch.bfloat16, variant=variant)
    ref, _ = ops.normalize_patchify(x, dtype=torch.bfloat16)
    assert out.dtype == torch.bfloat16
    if device == "cuda":
        assert torch.equal(out, ref)  # compiled casts round to nearest even, as torch does
    else:
        # Triton's interpreter casts float32 -> bfloat16 by truncation while torch rounds to nearest:
        # at most one bfloat16 ulp apart (relative 2**-7).
        torch.testing.assert_close(out.float(), ref.float(), rtol=2**-7, atol=0)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("device", DEVICES)
def test_custom_patch_geometry_and_mean_std(device, variant):
    device = _on(device)
    x = torch.randint(0, 256, (3, 3, 32, 48), dtype=torch.uint8, device=device)
    kw = dict(patch_size=8, temporal_patch_size=3, merge_size=2)
    ref, grid = ops.normalize_patchify(x, (0.5, 0.5, 0.5), (0.25, 0.5, 1.0), **kw)
    out, grid2 = fused_normalize_patchify(x, (0.5, 0.5, 0.5), (0.25, 0.5, 1.0), variant=variant, **kw)
    assert grid == grid2 == (1, 4, 6) and torch.equal(out, ref)
    # A merge size whose block is not a power of two (3x3 rows, padded to 16 in the block kernel).
    y = torch.randint(0, 256, (2, 3, 48, 72), dtype=torch.uint8, device=device)
    kw3 = dict(patch_size=8, temporal_patch_size=2, merge_size=3)
    assert torch.equal(fused_normalize_patchify(y, variant=variant, **kw3)[0], ops.normalize_patchify(y, **kw3)[0])


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("b,t,h,w", [(3, 1, 28, 56), (2, 2, 56, 28), (4, 3, 28, 28)])
def test_items_of_one_size_in_one_launch_equal_one_launch_each(device, b, t, h, w, variant):
    """``[B, T, C, H, W]``: each item's rows after the previous item's, the bits of one call per item."""
    device = _on(device)
    x = torch.randint(0, 256, (b, t, 3, h, w), dtype=torch.uint8, device=device)
    out, grid = fused_normalize_patchify(x, variant=variant)
    each = [fused_normalize_patchify(x[k], variant=variant) for k in range(b)]
    assert grid == each[0][1]
    assert torch.equal(out, torch.cat([rows for rows, _ in each]))
    ref, ref_grid = ops.normalize_patchify(x)  # the torch/CPU path takes the same batch, item by item
    assert ref_grid == grid and torch.equal(out, ref)
    kw = dict(patch_size=8, temporal_patch_size=2, merge_size=3)  # a block that is not a power of two
    y = torch.randint(0, 256, (b, t, 3, 48, 72), dtype=torch.uint8, device=device)
    assert torch.equal(fused_normalize_patchify(y, variant=variant, **kw)[0], ops.normalize_patchify(y, **kw)[0])


def test_preallocated_output_and_argument_errors():
    _on("cpu")
    x = torch.randint(0, 256, (2, 3, 28, 28), dtype=torch.uint8)
    buf = torch.empty(4, 1176)
    out, _ = fused_normalize_patchify(x, out=buf)
    assert out is buf and torch.equal(out, ops.normalize_patchify(x)[0])
    with pytest.raises(ValueError, match="uint8"):
        fused_normalize_patchify(x.float())
    with pytest.raises(ValueError, match="multiple of 28"):
        fused_normalize_patchify(x[..., :27])
    with pytest.raises(ValueError, match="out must be"):
        fused_normalize_patchify(x, out=torch.empty(3, 1176))
    batch = torch.stack([x, x.flip(0)])
    buf = torch.empty(8, 1176)
    out, _ = fused_normalize_patchify(batch, out=buf)
    assert out is buf and torch.equal(out, ops.normalize_patchify(batch)[0])
    with pytest.raises(ValueError, match="out must be"):
        fused_normalize_patchify(batch, out=torch.empty(4, 1176))  # one item's rows, not two
    with pytest.raises(ValueError, match=r"\[B, T, C, H, W\]"):
        fused_normalize_patchify(batch[None])


_COMPILE = r"""
import json, re, sys
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from gpu_mm.kernels.normalize_patchify import _normalize_patchify_kernel, _normalize_patchify_tile_kernel

out = {}
kernels = ((_normalize_patchify_kernel, "", {}), (_normalize_patchify_tile_kernel, "tile_", {"RB": 4}))
for kernel, prefix, extra in kernels:
    out[prefix + "sizes"] = [p.name for p in kernel.params if not p.is_constexpr and not p.name.endswith("_ptr")]
    out[prefix + "not_specialized"] = [p.name for p in kernel.params if p.do_not_specialize]
    for name, dtype, lut, one in (("fp32", "*fp32", False, False), ("bf16", "*bf16", False, False),
                                  ("lut_fp32", "*fp32", True, False), ("one_fp32", "*fp32", False, True)):
        sig = {"src_ptr": "*u8", "out_ptr": dtype, "mean_ptr": "*fp32", "std_ptr": "*fp32", "lut_ptr": "*fp32",
               **{n: "i32" for n in ("T", "H", "W", "GH", "GW", "ITEM_PIXELS", "ITEM_ROWS")},
               **{n: "constexpr" for n in ("C", "TP", "P", "M", "ROW", "BLOCK", "LUT", "ONE", *extra)}}
        block = 256 if extra else 1024 if one else 2048
        consts = {"C": 3, "TP": 2, "P": 14, "M": 2, "ROW": 1176, "BLOCK": block, "LUT": lut, "ONE": one, **extra}
        try:
            ptx = triton.compile(ASTSource(fn=kernel, signature=sig, constexprs=consts),
                                 target=GPUTarget("cuda", 90, 32)).asm["ptx"]
        except Exception as exc:
            print(json.dumps({"skip": f"{type(exc).__name__}: {exc}"[:300]})); sys.exit(0)
        out[prefix + name] = sorted(set(re.findall(r"(?:div|cvt)\.[a-z0-9.]+", ptx)))
print(json.dumps(out))
"""


@functools.lru_cache(maxsize=None)
def _compiled() -> dict:
    """The kernel compiled for a Hopper GPU (sm_90) to PTX, here on the CPU (Triton's NVIDIA backend needs
    no device to compile), in a process without TRITON_INTERPRET: what the interpreter cannot show (it
    divides and casts in numpy), the PTX does."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-c", _COMPILE], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _ptx_ops(dtype: str) -> list[str]:
    result = _compiled()
    if "skip" in result:
        pytest.skip(f"Triton cannot compile for sm_90 here: {result['skip']}")
    return result[dtype]


KERNELS = ["", "tile_"]  # the row and block kernels' shared code (compiled as the row kernel), and the tile kernel


@pytest.mark.slow
@pytest.mark.parametrize("kernel", KERNELS)
def test_compiled_kernel_divides_with_ieee_rounding(kernel):
    """torch divides float32 with IEEE round-to-nearest; a plain ``/`` in Triton compiles to div.full.f32
    (up to 2 ulp off), so the GPU exactness claim rests on the kernel asking for div.rn."""
    ops_ = _ptx_ops(kernel + "fp32")
    assert "div.rn.f32" in ops_
    assert "div.full.f32" not in ops_ and "div.approx.f32" not in ops_


@pytest.mark.parametrize("kernel", KERNELS)
def test_compiled_lookup_variant_does_not_divide(kernel):
    """The ``-lut`` variants read each level's value from a table computed with torch's own division."""
    assert not [op for op in _ptx_ops(kernel + "lut_fp32") if op.startswith("div.") and op.endswith("f32")]
    assert "div.rn.f32" in _ptx_ops(kernel + "fp32")  # what the same check finds in the dividing variant


def test_level_table_is_the_division_it_replaces():
    """Every uint8 level of every channel, against the reference's elementwise arithmetic on the same level."""
    from gpu_mm.kernels.normalize_patchify import _levels

    levels = torch.arange(256, dtype=torch.uint8).repeat(3, 1).reshape(1, 3, 16, 16)
    ref = ops.normalize(levels)[0].reshape(3, 256)
    assert torch.equal(_levels("cpu", ops.OPENAI_CLIP_MEAN, ops.OPENAI_CLIP_STD), ref)


@pytest.mark.parametrize("kernel", KERNELS)
def test_compiled_one_frame_kernel_divides_with_ieee_rounding_too(kernel):
    """Images (one frame) compute each value once and store it per temporal slot: the same division."""
    ops_ = _ptx_ops(kernel + "one_fp32")
    assert "div.rn.f32" in ops_ and "div.full.f32" not in ops_


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("device", DEVICES)
def test_one_frame_stored_per_slot_equals_computed_per_slot(device, variant):
    """``one_frame`` (the default for images) against computing every temporal slot (as for video): the same bits,
    for one image, a batch of them, and a temporal patch of three."""
    device = _on(device)
    for shape, kw in (((1, 3, 56, 84), {}), ((4, 1, 3, 28, 56), {}),
                      ((1, 3, 32, 48), dict(patch_size=8, temporal_patch_size=3, merge_size=2))):
        x = torch.randint(0, 256, shape, dtype=torch.uint8, device=device)
        once, grid = fused_normalize_patchify(x, variant=variant, **kw)
        each, grid2 = fused_normalize_patchify(x, variant=variant, one_frame=False, **kw)
        assert grid == grid2 and torch.equal(once, each)
        assert torch.equal(once, ops.normalize_patchify(x, **kw)[0])


@pytest.mark.parametrize("kernel", KERNELS)
def test_compiled_bfloat16_cast_rounds_to_nearest_even(kernel):
    assert "cvt.rn.bf16.f32" in _ptx_ops(kernel + "bf16")


@pytest.mark.parametrize("kernel", KERNELS)
def test_sizes_do_not_make_new_kernel_variants(kernel):
    """Triton specializes int arguments (== 1, divisible by 16) unless told not to: each variant would
    compile inside a slot job. Every runtime size of the kernel is exempt."""
    result = _compiled()
    if "skip" in result:
        pytest.skip(result["skip"])
    assert result[kernel + "sizes"] == ["T", "H", "W", "GH", "GW", "ITEM_PIXELS", "ITEM_ROWS"]
    assert set(result[kernel + "sizes"]) <= set(result[kernel + "not_specialized"])


def test_pipeline_picks_the_kernel_for_float_output_on_cuda(monkeypatch):
    """The pipeline's choice, as a pure function of device and dtype: it imports ``gpu_mm.kernels`` as the
    package it ships in (a relative import that reached past ``gpu_mm`` failed on the first GPU run)."""
    from gpu_mm.kernels.normalize_patchify import fused_normalize_patchify as shipped
    from gpu_mm.pipeline.devices import _normalize_patchify_impl

    monkeypatch.setenv("TRITON_INTERPRET", "1")  # Triton can run here, as on a GPU machine
    assert _normalize_patchify_impl("cuda", torch.float32) is shipped
    assert _normalize_patchify_impl("cuda", torch.bfloat16) is shipped
    assert _normalize_patchify_impl("cuda", torch.uint8) is ops.normalize_patchify
    assert _normalize_patchify_impl("cpu", torch.float32) is ops.normalize_patchify
