"""Fused rescale + normalize + Qwen2-VL patchify: read resized uint8 frames once, write features once.

Reference: ``gpu_mm.ops.normalize_patchify`` (normalize then patchify in torch). Output rows are in
Qwen2-VL order (t-pair, h-block, w-block, h-in-merge, w-in-merge); each row is (C, tp, p, p); an odd
last frame is repeated, as transformers does.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch
import triton
import triton.language as tl

from gpu_mm.ops import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, _mean_std, _mean_std_on


@triton.jit
def _normalized(src_ptr, mean_ptr, std_ptr, lut_ptr, T, H, W, gt, y0, x0, cols, mask, cmask,
                C: tl.constexpr, TP: tl.constexpr, P: tl.constexpr, LUT: tl.constexpr):
    """The normalized values of output columns ``cols`` (c, temporal, patch row, patch column) of the rows whose
    patch starts at frame row ``y0``, column ``x0`` of temporal group ``gt``; ``cmask``: the columns that exist.
    ``LUT``: look each value up in ``lut_ptr`` (float32 ``[C, 256]``, the same arithmetic done once per level)
    instead of dividing per element."""
    c = cols // (TP * P * P)
    r = cols % (TP * P * P)
    tt = r // (P * P)
    ph = (r // P) % P
    pw = r % P
    t = tl.minimum(gt * TP + tt, T - 1)  # odd frame count: repeat the last frame
    v = tl.load(src_ptr + ((t * C + c) * H + y0 + ph) * W + x0 + pw, mask=mask, other=0)
    if LUT:
        return tl.load(lut_ptr + c * 256 + v.to(tl.int32), mask=mask, other=0.0)
    x = v.to(tl.float32)
    m = tl.load(mean_ptr + c, mask=cmask, other=0.0)
    s = tl.load(std_ptr + c, mask=cmask, other=1.0)
    # div_rn: IEEE round-to-nearest, as torch divides; ``/`` compiles to div.full.f32 (up to 2 ulp off).
    return tl.math.div_rn(x - m, s)


@triton.jit
def _write_rows(src_ptr, out_ptr, mean_ptr, std_ptr, lut_ptr, T, H, W, gt, y0, x0, starts, cols, rmask,
                C: tl.constexpr, TP: tl.constexpr, P: tl.constexpr, ROW: tl.constexpr, LUT: tl.constexpr,
                ONE: tl.constexpr):
    """Output rows whose patch starts at frame row ``y0``, column ``x0`` of temporal group ``gt``, each beginning at
    element ``starts`` of ``out_ptr`` (``rmask``: the rows that exist). ``ONE``: the item is one frame, so its values
    are computed once per (channel, patch pixel), ``cols`` ranging over those, and stored in each of the TP
    temporal slots; otherwise ``cols`` range over the whole row."""
    if ONE:
        cmask = cols < C * P * P
        mask = rmask & cmask
        y = _normalized(src_ptr, mean_ptr, std_ptr, lut_ptr, 1, H, W, 0, y0, x0, cols, mask, cmask, C, 1, P, LUT)
        dst = starts + (cols // (P * P)) * (TP * P * P) + cols % (P * P)
        for tt in tl.static_range(TP):
            tl.store(out_ptr + dst + tt * (P * P), y.to(out_ptr.dtype.element_ty), mask=mask)
    else:
        cmask = cols < ROW
        mask = rmask & cmask
        y = _normalized(src_ptr, mean_ptr, std_ptr, lut_ptr, T, H, W, gt, y0, x0, cols, mask, cmask, C, TP, P, LUT)
        tl.store(out_ptr + starts + cols, y.to(out_ptr.dtype.element_ty), mask=mask)


# The sizes are runtime values: without do_not_specialize Triton compiles a variant per size class (== 1,
# divisible by 16), and a new variant compiles inside a slot job, against its deadline.
@triton.jit(do_not_specialize=["T", "H", "W", "GH", "GW", "ITEM_PIXELS", "ITEM_ROWS"])
def _normalize_patchify_kernel(
    src_ptr,  # uint8 [B, T, C, H, W], contiguous
    out_ptr,  # [B * rows, C * TP * P * P]
    mean_ptr,  # float32 [C], already * 255
    std_ptr,  # float32 [C], already * 255
    lut_ptr,  # float32 [C, 256]: (level - mean) / std
    T, H, W, GH, GW,
    ITEM_PIXELS, ITEM_ROWS,  # one item's source elements (T*C*H*W) and output rows; program axis 1 is the item
    C: tl.constexpr, TP: tl.constexpr, P: tl.constexpr, M: tl.constexpr,
    ROW: tl.constexpr, BLOCK: tl.constexpr, LUT: tl.constexpr, ONE: tl.constexpr,
):
    item = tl.program_id(1).to(tl.int64)
    src_ptr += item * ITEM_PIXELS
    out_ptr += item * ITEM_ROWS * ROW
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    # row -> (gt, bh, bw, mh, mw)
    per_t = GH * GW
    gt = row // per_t
    rem = row % per_t
    mw = rem % M
    mh = (rem // M) % M
    blk = rem // (M * M)
    bw = blk % (GW // M)
    bh = blk // (GW // M)
    _write_rows(src_ptr, out_ptr, mean_ptr, std_ptr, lut_ptr, T, H, W, gt, (bh * M + mh) * P, (bw * M + mw) * P,
                row * ROW, cols, cols >= 0, C, TP, P, ROW, LUT, ONE)


@triton.jit
def _merge_block(blk, GH, GW, M: tl.constexpr):
    """Merge block ``blk`` of an item as (temporal group, block row, block column): blocks in Qwen2-VL row order."""
    per_t = (GH // M) * (GW // M)
    rem = blk % per_t
    return blk // per_t, rem // (GW // M), rem % (GW // M)


# One program per merge block (M*M consecutive output rows, which share their frame rows: runs of M*P bytes
# instead of P); with LUT, the default (see VARIANTS for the H200's timings of both kernels).
@triton.jit(do_not_specialize=["T", "H", "W", "GH", "GW", "ITEM_PIXELS", "ITEM_ROWS"])
def _normalize_patchify_block_kernel(
    src_ptr, out_ptr, mean_ptr, std_ptr, lut_ptr,
    T, H, W, GH, GW, ITEM_PIXELS, ITEM_ROWS,
    C: tl.constexpr, TP: tl.constexpr, P: tl.constexpr, M: tl.constexpr,
    ROW: tl.constexpr, BLOCK: tl.constexpr, LUT: tl.constexpr, ONE: tl.constexpr, RB: tl.constexpr,
):
    item = tl.program_id(1).to(tl.int64)
    src_ptr += item * ITEM_PIXELS
    out_ptr += item * ITEM_ROWS * ROW
    blk = tl.program_id(0).to(tl.int64)
    gt, bh, bw = _merge_block(blk, GH, GW, M)
    r = tl.arange(0, RB)[:, None]  # the block's rows (M*M of them, padded to a power of two)
    cols = tl.arange(0, BLOCK)[None, :]
    _write_rows(src_ptr, out_ptr, mean_ptr, std_ptr, lut_ptr, T, H, W, gt, (bh * M + r // M) * P,
                (bw * M + r % M) * P, (blk * (M * M) + r) * ROW, cols, r < M * M, C, TP, P, ROW, LUT, ONE)


@triton.jit
def _level_values(v, mean_ptr, std_ptr, lut_ptr, c, LUT: tl.constexpr):
    """The normalized values of uint8 levels ``v``, all of channel ``c``: looked up, or divided (as in _normalized)."""
    if LUT:
        return tl.load(lut_ptr + c * 256 + v.to(tl.int32))
    return tl.math.div_rn(v.to(tl.float32) - tl.load(mean_ptr + c), tl.load(std_ptr + c))


# One program per merge block, like the block kernel, but its lanes are the block's M*M rows by one patch's P*P
# pixels, and the channels and temporal slots are a loop unrolled at compile time: where a lane reads in the frame and
# writes in its row is worked out once per program and each (channel, slot) adds a scalar to it, instead of the block
# kernel's per-element division of a column index into (channel, slot, patch row, patch column). A lane of P*P pads
# to a power of two (196 -> 256 lanes at P=14, none at P=16) where the block kernel pads a whole row (1176 -> 2048).
@triton.jit(do_not_specialize=["T", "H", "W", "GH", "GW", "ITEM_PIXELS", "ITEM_ROWS"])
def _normalize_patchify_tile_kernel(
    src_ptr, out_ptr, mean_ptr, std_ptr, lut_ptr,
    T, H, W, GH, GW, ITEM_PIXELS, ITEM_ROWS,
    C: tl.constexpr, TP: tl.constexpr, P: tl.constexpr, M: tl.constexpr,
    ROW: tl.constexpr, BLOCK: tl.constexpr, LUT: tl.constexpr, ONE: tl.constexpr, RB: tl.constexpr,
):
    item = tl.program_id(1).to(tl.int64)
    blk = tl.program_id(0).to(tl.int64)
    gt, bh, bw = _merge_block(blk, GH, GW, M)
    frame = H.to(tl.int64) * W
    src_ptr += item * ITEM_PIXELS + (bh * (M * P)) * W + bw * (M * P)  # the block's top-left pixel in frame 0
    out_ptr += (item * ITEM_ROWS + blk * (M * M)) * ROW  # the block's first row
    r = tl.arange(0, RB)[:, None]  # the block's rows (M*M, padded to a power of two)
    k = tl.arange(0, BLOCK)[None, :]  # one patch's pixels (P*P, padded)
    mask = (r < M * M) & (k < P * P)
    at = ((r // M) * P + k // P) * W + (r % M) * P + k % P  # where each lane reads, from the top-left pixel
    to = r * ROW + k  # where each lane writes, from the block's first row, for channel 0 and slot 0
    for c in tl.static_range(C):
        if ONE:  # one frame: each value computed once, stored in every temporal slot
            y = _level_values(tl.load(src_ptr + c * frame + at, mask=mask, other=0), mean_ptr, std_ptr, lut_ptr, c,
                              LUT)
            for tt in tl.static_range(TP):
                tl.store(out_ptr + (c * TP + tt) * (P * P) + to, y.to(out_ptr.dtype.element_ty), mask=mask)
        else:
            for tt in tl.static_range(TP):
                t = tl.minimum(gt * TP + tt, T - 1)  # odd frame count: repeat the last frame
                v = tl.load(src_ptr + (t * C + c) * frame + at, mask=mask, other=0)
                y = _level_values(v, mean_ptr, std_ptr, lut_ptr, c, LUT)
                tl.store(out_ptr + (c * TP + tt) * (P * P) + to, y.to(out_ptr.dtype.element_ty), mask=mask)


VARIANTS = ("row", "block", "row-lut", "block-lut", "tile", "tile-lut")
"""One program per output row or per merge block; ``-lut``: each uint8 level looked up in a table of its
normalized value instead of a division per element. The same bits, all four (tested on an H200 and under the
interpreter). On an H200 (2026-11-28, 60x3x560x1008 -> float32, 508 MB moved, three interleaved rounds) the
dividing row kernel was compute-bound (Nsight Compute: 79% SM vs 22% memory throughput) at 0.553 ms; block 0.536,
row-lut 0.403, block-lut 0.378 ms (1.46x the row kernel; a device copy of the same bytes: 0.140 ms), so
``block-lut`` is the default. Items of one frame (images, whose temporal slots all hold the same pixels) compute
each value once and store it in every slot (``one_frame``): half the loads, lookups and index arithmetic of the
image path, the same bits (tested under the interpreter and compiled for sm_90; its speed waits for a card,
``gpu_bench.py``'s ``images_16x1092x1932``). ``tile``: one program per merge block whose lanes are patch pixels, the
same bits; compiled for sm_90 it asks for far fewer instructions and registers than ``block-lut``
(``benchmarks/kernel_sass.py``, figures in docs/benchmarks.md); whether that makes it faster waits for a card
(``gpu_bench.py``'s ``kernel`` section times every variant)."""


@functools.lru_cache(maxsize=64)
def _levels(device: str, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """float32 ``[C, 256]``: ``(level - mean) / std`` for every uint8 level, the kernel's own float32 arithmetic
    (an exact subtraction and an IEEE round-to-nearest division, as torch divides), once per device and constants.
    Read-only."""
    m, s = _mean_std_on(device, mean, std)
    levels = torch.arange(256, dtype=torch.float32, device=device)
    return ((levels[None, :] - m[:, None]) / s[:, None]).contiguous()


def fused_normalize_patchify(
    frames: torch.Tensor,
    mean: Sequence[float] = OPENAI_CLIP_MEAN,
    std: Sequence[float] = OPENAI_CLIP_STD,
    *,
    patch_size: int = 14,
    temporal_patch_size: int = 2,
    merge_size: int = 2,
    dtype: torch.dtype = torch.float32,
    out: torch.Tensor | None = None,
    variant: str = "block-lut",
    one_frame: bool | None = None,
) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """Normalize uint8 ``[T, C, H, W]`` frames and lay them out as Qwen2-VL ``pixel_values`` rows; or
    ``[B, T, C, H, W]``: B items of one size in one launch, each item's rows after the previous item's, the same
    bits as one call per item.

    Args:
        out: optional preallocated ``[rows, C*tp*p*p]`` output (e.g. from a reused pool), all items' rows.
        variant: one of :data:`VARIANTS` (``"block-lut"`` the default, measured fastest; all are timed side by
            side by ``benchmarks/gpu_bench.py``); the same bits every way.
        one_frame: for items of one frame (images), compute each value once and store it in every temporal slot
            (``None``: whenever ``T == 1`` and ``temporal_patch_size > 1``; ``False``: compute it per slot, as for
            video, kept for the benchmark's side-by-side). The same bits either way.

    Returns:
        (pixel_values, (grid_t, grid_h, grid_w)): the grid of one item.
    """
    if frames.dtype != torch.uint8 or frames.ndim not in (4, 5):
        raise ValueError(f"frames must be uint8 [T, C, H, W] or [B, T, C, H, W], got {frames.dtype} "
                         f"{tuple(frames.shape)}")
    items = frames.shape[0] if frames.ndim == 5 else 1
    t, c, h, w = frames.shape[-4:]
    factor = patch_size * merge_size
    if h % factor or w % factor:
        raise ValueError(f"frame size {h}x{w} is not a multiple of {factor}")
    frames = frames.contiguous()
    gt = -(-t // temporal_patch_size)
    gh, gw = h // patch_size, w // patch_size
    item_rows, row = gt * gh * gw, c * temporal_patch_size * patch_size * patch_size
    rows = items * item_rows
    if out is None:
        out = torch.empty((rows, row), dtype=dtype, device=frames.device)
    elif out.shape != (rows, row) or out.dtype != dtype or out.device != frames.device or not out.is_contiguous():
        raise ValueError(f"out must be a contiguous {dtype} {(rows, row)} tensor on {frames.device}, got {out.dtype} "
                         f"{tuple(out.shape)}")
    m, s = _mean_std(frames, mean, std)  # the reference's float32 constants, so results are bit-identical
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    lut = variant.endswith("-lut")
    table = _levels(str(frames.device), tuple(float(v) for v in mean), tuple(float(v) for v in std)) if lut else m
    one = (t == 1 and temporal_patch_size > 1) if one_frame is None else (one_frame and t == 1)
    block = triton.next_power_of_2(c * patch_size * patch_size if one else row)
    geometry = dict(C=c, TP=temporal_patch_size, P=patch_size, M=merge_size, ROW=row, BLOCK=block, LUT=lut, ONE=one)
    sizes = (t, h, w, gh, gw, t * c * h * w, item_rows)
    if rows and variant.startswith("row"):
        _normalize_patchify_kernel[(item_rows, items)](frames, out, m, s, table, *sizes, **geometry)
    elif rows and variant.startswith("tile"):
        geometry["BLOCK"] = triton.next_power_of_2(patch_size * patch_size)
        _normalize_patchify_tile_kernel[(item_rows // (merge_size * merge_size), items)](
            frames, out, m, s, table, *sizes, **geometry, RB=triton.next_power_of_2(merge_size * merge_size))
    elif rows:
        rb = triton.next_power_of_2(merge_size * merge_size)
        _normalize_patchify_block_kernel[(item_rows // (merge_size * merge_size), items)](
            frames, out, m, s, table, *sizes, **geometry, RB=rb, num_warps=8)
    return out, (gt, gh, gw)
