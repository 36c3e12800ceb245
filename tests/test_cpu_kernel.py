"""gpu-mm's C kernel (``gpu_mm._cpu_patch``, the CPU path of ``ops.normalize_patchify`` / ``ops.patch_rows``)
against the plain torch formulation transformers uses (normalize whole float32 frames, lay out the patches,
then ``.to(dtype)``): identical bits for any shape, layout, dtype, patch, temporal patch and merge size, with
one thread or several; and the torch path it replaces gives the same bits too.

Without a C compiler at install the kernel is absent and these tests skip, saying so; CI sets
``GPU_MM_REQUIRE_CPU_KERNEL=1`` so that a build that silently lost the kernel fails instead.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gpu_mm import ops

REQUIRED = os.environ.get("GPU_MM_REQUIRE_CPU_KERNEL") == "1"
needs_kernel = pytest.mark.skipif(
    ops._cpu_patch is None and not REQUIRED, reason="gpu_mm._cpu_patch was not built (no C compiler at install)"
)
DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.uint8]


def test_the_kernel_is_built_where_ci_requires_it():
    if not REQUIRED:
        pytest.skip("GPU_MM_REQUIRE_CPU_KERNEL is not set (CI sets it)")
    assert ops._cpu_patch is not None and ops.cpu_kernel_available()


def plain(x: torch.Tensor, mean, std, p: int, tp: int, m: int, dtype: torch.dtype) -> torch.Tensor:
    """transformers' order of work: whole float32 frames normalized, then the patches laid out."""
    src = x.float() if dtype == torch.uint8 else ops.normalize(x, mean, std)
    rows, _ = ops.patchify(src, p, tp, m)
    return rows.to(dtype)


def frames_in(layout: str, t: int, c: int, h: int, w: int, g: torch.Generator) -> torch.Tensor:
    if layout == "contiguous":
        return torch.randint(0, 256, (t, c, h, w), dtype=torch.uint8, generator=g)
    if layout == "channels_last":  # as decoders and the resize hand frames over
        return torch.randint(0, 256, (t, h, w, c), dtype=torch.uint8, generator=g).permute(0, 3, 1, 2)
    if layout == "crop":  # a view into larger frames: every stride differs from the shape's
        big = torch.randint(0, 256, (t + 1, c + 1, h + 5, w + 7), dtype=torch.uint8, generator=g)
        return big[1:, 1:, 3 : 3 + h, 2 : 2 + w]
    if layout == "broadcast":  # one frame seen T times (stride 0)
        return torch.randint(0, 256, (1, c, h, w), dtype=torch.uint8, generator=g).expand(t, -1, -1, -1)
    raise AssertionError(layout)


def stream_widths() -> list[int]:
    """0 (ordinary stores) and the streaming-store variants this machine runs (256: AVX2, 512: AVX-512)."""
    try:
        from gpu_mm import _cpu_patch
    except ImportError:
        return [0]
    before, width = _cpu_patch.streaming()
    out = [0]
    for w in (256, 512):
        try:
            _cpu_patch.streaming(-1, w)
            out.append(w)
        except ValueError:
            pass
    _cpu_patch.streaming(before, width)
    return out


@contextlib.contextmanager
def streamed(width: int):
    """float32 outputs of any size written by the streaming variant of ``width``, or (0) never streamed."""
    from gpu_mm import _cpu_patch

    before, was = _cpu_patch.streaming()
    _cpu_patch.streaming(2**62, 0) if width == 0 else _cpu_patch.streaming(0, width)
    try:
        yield
    finally:
        _cpu_patch.streaming(before, was)


@needs_kernel
@settings(max_examples=150, deadline=None)
@given(
    t=st.integers(1, 5),
    c=st.integers(1, 4),
    p=st.sampled_from([1, 2, 3, 7, 14, 16]),
    tp=st.integers(1, 3),
    m=st.integers(1, 3),
    gh=st.integers(1, 3),
    gw=st.integers(1, 3),
    layout=st.sampled_from(["contiguous", "channels_last", "crop", "broadcast"]),
    dtype=st.sampled_from(DTYPES),
    threads=st.sampled_from([1, 2, 3, 64]),
    seed=st.integers(0, 2**16),
    stream=st.sampled_from(stream_widths()),
)
def test_kernel_is_bit_identical_to_the_plain_formulation(t, c, p, tp, m, gh, gw, layout, dtype, threads, seed,
                                                         stream):
    g = torch.Generator().manual_seed(seed)
    x = frames_in(layout, t, c, gh * m * p, gw * m * p, g)
    mean = tuple(torch.rand(c, generator=g).tolist())
    std = tuple((torch.rand(c, generator=g) * 0.5 + 0.05).tolist())
    expected = plain(x, mean, std, p, tp, m, dtype)
    out = torch.full(expected.shape, 7, dtype=dtype)  # every element must be written
    with streamed(stream):
        got, grid = ops._kernel_rows(x, p, tp, m, dtype, mean, std, out, threads=threads)
    assert got is out and grid == (-(-t // tp), gh * m, gw * m)
    assert torch.equal(got, expected)


@needs_kernel
@pytest.mark.parametrize("stream", stream_widths(), ids=lambda w: f"stream{w}" if w else "cached")
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_a_1080p_image_and_a_clip_through_the_public_ops(layout, dtype, stream):
    """The sizes the pipeline runs (one 728x1316 image: its two temporal slots; five 364x644 frames: odd, the
    last repeated), through ``normalize_patchify`` with the defaults, split over torch's threads; float32 with
    and without streaming stores."""
    g = torch.Generator().manual_seed(1)
    for t, h, w in [(1, 728, 1316), (5, 364, 644)]:
        x = frames_in(layout, t, 3, h, w, g)
        with streamed(stream):
            got, _ = ops.normalize_patchify(x, dtype=dtype)
        assert torch.equal(got, plain(x, ops.OPENAI_CLIP_MEAN, ops.OPENAI_CLIP_STD, 14, 2, 2, dtype))


@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "crop", "broadcast"])
@pytest.mark.parametrize("t", [1, 2, 3])
def test_the_torch_path_gives_the_same_bits(layout, t, monkeypatch):
    """What runs without the kernel (and on CUDA): ``GPU_MM_CPU_KERNEL=0`` or no compiler at install."""
    monkeypatch.setattr(ops, "_cpu_patch", None)
    monkeypatch.setattr(ops, "_CACHE_BLOCK_BYTES", 4 * 3 * 2 * 14 * 14 * 5)  # blocks of 5 rows, one ragged
    assert not ops.cpu_kernel_available()
    x = frames_in(layout, t, 3, 4 * 14, 6 * 14, torch.Generator().manual_seed(t))
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    for dtype in DTYPES:
        got, _ = ops.normalize_patchify(x, mean, std, dtype=dtype)
        assert torch.equal(got, plain(x, mean, std, 14, 2, 2, dtype)), dtype


@needs_kernel
def test_wrong_calls_are_refused_before_any_memory_is_touched():
    x = torch.zeros(2, 3, 28, 28, dtype=torch.uint8)
    out = torch.empty(4, 3 * 2 * 14 * 14)
    with pytest.raises(ValueError, match="mean and std need 3 values"):
        ops._kernel_rows(x, 14, 2, 2, torch.float32, (0.5, 0.5), (0.5, 0.5), None)
    with pytest.raises(ValueError, match="out must be"):
        ops._kernel_rows(x, 14, 2, 2, torch.float32, ops.OPENAI_CLIP_MEAN, ops.OPENAI_CLIP_STD, out[:3])
    with pytest.raises(ValueError, match="not a multiple"):
        ops._kernel_rows(x[..., :27], 14, 2, 2, torch.float32, ops.OPENAI_CLIP_MEAN, ops.OPENAI_CLIP_STD, None)
    # The extension's own checks, for a caller that skipped the wrapper's.
    k = ops._cpu_patch
    args = (x.data_ptr(), (2, 3, 28, 28), x.stride(), 0, 0, 0, 1, out.data_ptr())
    with pytest.raises(ValueError, match="bad frames"):
        k.patch_rows(*args, 14, 2, 3, 1)  # 28 is not a multiple of 14 * 3
    with pytest.raises(ValueError, match="bad frames"):
        k.patch_rows(0, *args[1:], 14, 2, 2, 1)
    with pytest.raises(ValueError, match="elem"):
        k.patch_rows(*args[:6], 4, out.data_ptr(), 14, 2, 2, 1)  # 4-byte elements need a table or mean/std


@needs_kernel
def test_no_rows_to_write_is_not_a_crash():
    x = torch.zeros(1, 3, 0, 28, dtype=torch.uint8)
    assert ops.normalize_patchify(x)[0].shape == (0, 1176)
    # The extension itself, given frames with no rows of patches (an address is still needed).
    y = torch.zeros(1, 3, 28, 28, dtype=torch.uint8)
    out = torch.empty(1, dtype=torch.uint8)
    ops._cpu_patch.patch_rows(y.data_ptr(), (1, 3, 0, 28), y.stride(), 0, 0, 0, 1, out.data_ptr(), 14, 2, 2, 2)


def test_the_kernel_can_be_turned_off_by_the_environment():
    code = "from gpu_mm import ops; print(ops.cpu_kernel_available())"
    env = {**os.environ, "GPU_MM_CPU_KERNEL": "0"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
