"""The fused normalize+patchify Triton kernel against its torch reference: under TRITON_INTERPRET=1 on
the CPU (small shapes), and compiled on CUDA under the ``cuda`` marker."""

from __future__ import annotations

import pytest
import torch

from gpu_mm import ops

pytest.importorskip("triton")
from gpu_mm.kernels import fused_normalize_patchify, triton_available  # noqa: E402

pytestmark = pytest.mark.skipif(not triton_available(), reason="Triton cannot run here")

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]


def _on(device: str) -> str:
    if device == "cpu" and torch.cuda.is_available():
        pytest.skip("the interpreter path is exercised on machines without a GPU")
    return device


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("t,h,w", [(1, 28, 28), (2, 56, 84), (3, 28, 56), (5, 56, 28)])
def test_matches_reference_exactly_in_float32(device, t, h, w):
    device = _on(device)
    x = torch.randint(0, 256, (t, 3, h, w), dtype=torch.uint8, device=device)
    ref, grid = ops.normalize_patchify(x)
    out, grid2 = fused_normalize_patchify(x)
    assert grid == grid2
    # Same float32 subtraction and division of the same constants: bit-identical.
    assert torch.equal(out, ref)


@pytest.mark.parametrize("device", DEVICES)
def test_bfloat16_output_equals_rounded_reference(device):
    device = _on(device)
    x = torch.randint(0, 256, (2, 3, 28, 56), dtype=torch.uint8, device=device)
    out, _ = fused_normalize_patchify(x, dtype=torch.bfloat16)
    ref, _ = ops.normalize_patchify(x, dtype=torch.bfloat16)
    assert out.dtype == torch.bfloat16
    if device == "cuda":
        assert torch.equal(out, ref)  # compiled casts round to nearest even, as torch does
    else:
        # Triton's interpreter casts float32 -> bfloat16 by truncation while torch rounds to nearest:
        # at most one bfloat16 ulp apart (relative 2**-7).
        torch.testing.assert_close(out.float(), ref.float(), rtol=2**-7, atol=0)


@pytest.mark.parametrize("device", DEVICES)
def test_custom_patch_geometry_and_mean_std(device):
    device = _on(device)
    x = torch.randint(0, 256, (3, 3, 32, 48), dtype=torch.uint8, device=device)
    kw = dict(patch_size=8, temporal_patch_size=3, merge_size=2)
    ref, grid = ops.normalize_patchify(x, (0.5, 0.5, 0.5), (0.25, 0.5, 1.0), **kw)
    out, grid2 = fused_normalize_patchify(x, (0.5, 0.5, 0.5), (0.25, 0.5, 1.0), **kw)
    assert grid == grid2 == (1, 4, 6) and torch.equal(out, ref)


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
