"""Device-agnostic tensor ops for Qwen-VL preprocessing: sizes, frame sampling, resize, normalize, patchify.

Everything here is pure: no requests, no I/O. Tensor ops create their constants on the input's device
and dtype and work on CPU and CUDA alike.
"""

from __future__ import annotations

import functools
import importlib
import math
import os
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as tvF

__all__ = [
    "OPENAI_CLIP_MEAN",
    "OPENAI_CLIP_STD",
    "frame_range",
    "normalize",
    "normalize_patchify",
    "cpu_kernel_available",
    "nframes_hf",
    "nframes_qwen_vl_utils",
    "patch_rows",
    "patchify",
    "resize",
    "sample_indices_hf",
    "sample_indices_qwen_vl_utils",
    "sample_indices_sglang",
    "smart_resize",
    "smart_resize_clip",
    "video_max_pixels_qwen_vl_utils",
]

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
MAX_RATIO = 200


def smart_resize(
    height: int,
    width: int,
    factor: int = 28,
    min_pixels: int = 56 * 56,
    max_pixels: int = 28 * 28 * 1280,
) -> tuple[int, int]:
    """Target (height, width): multiples of ``factor``, area within [min, max] pixels, aspect kept.

    Same arithmetic as transformers 5.x ``smart_resize``.

    Raises:
        ValueError: a side is < 1 or the aspect ratio is over 200.
    """
    if height < 1 or width < 1:
        raise ValueError(f"height and width must be >= 1, got {height}x{width}")
    if max(height, width) / min(height, width) > MAX_RATIO:
        raise ValueError(
            f"absolute aspect ratio must be smaller than {MAX_RATIO}, got {max(height, width) / min(height, width)}"
        )
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def smart_resize_clip(num_frames: int, height: int, width: int, *, temporal_factor: int = 2, factor: int = 32,
                       min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """Target (height, width) of a clip whose frames x height x width must lie within [min, max] pixels:
    transformers' GLM-4V and Qwen3-VL video ``smart_resize`` (frames smaller than ``factor`` are first scaled up).
    GLM's image processor uses it too, with ``num_frames`` = the temporal patch.

    Raises:
        ValueError: fewer frames than ``temporal_factor``, a side < 1, or an aspect ratio over 200.
    """
    if num_frames < temporal_factor:
        raise ValueError(f"t:{num_frames} must be larger than temporal_factor:{temporal_factor}")
    if height < 1 or width < 1:
        raise ValueError(f"height and width must be >= 1, got {height}x{width}")
    if height < factor or width < factor:
        scale = max(factor / height, factor / width)
        height = int(height * scale)
        width = int(width * scale)
    if max(height, width) / min(height, width) > MAX_RATIO:
        raise ValueError(
            f"absolute aspect ratio must be smaller than {MAX_RATIO}, got {max(height, width) / min(height, width)}"
        )
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    t_bar = round(num_frames / temporal_factor) * temporal_factor
    if t_bar * h_bar * w_bar > max_pixels:
        beta = math.sqrt((num_frames * height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif t_bar * h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (num_frames * height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


# ---------------------------------------------------------------- frame sampling (planned once)


def nframes_qwen_vl_utils(
    total_frames: int,
    video_fps: float,
    *,
    fps: float | None = 2.0,
    nframes: int | None = None,
    min_frames: int = 4,
    max_frames: int = 768,
    frame_factor: int = 2,
) -> int:
    """Number of frames qwen-vl-utils 0.0.14 samples (``smart_nframes``).

    Raises:
        ValueError: the result is outside ``[frame_factor, total_frames]`` (too short a video).
    """
    n: float
    if nframes is not None:
        n = round(nframes / frame_factor) * frame_factor
    else:
        fps = 2.0 if fps is None else fps
        lo = math.ceil(min_frames / frame_factor) * frame_factor
        hi = math.floor(min(max_frames, total_frames) / frame_factor) * frame_factor
        n = total_frames / video_fps * fps
        n = min(min(max(n, lo), hi), total_frames)
        n = math.floor(n / frame_factor) * frame_factor
    if not (frame_factor <= n <= total_frames):
        raise ValueError(f"nframes should be in [{frame_factor}, {total_frames}], got {n}")
    return int(n)


def sample_indices_qwen_vl_utils(start: int, end: int, n: int) -> list[int]:
    """qwen-vl-utils' indices: ``torch.linspace(start, end, n).round()`` (float32, half to even)."""
    return torch.linspace(start, end, n).round().long().tolist()


def sample_indices_sglang(start: int, end: int, n: int) -> list[int]:
    """SGLang's Qwen-VL indices: ``np.linspace(start, end, n, dtype=int64)``, i.e. truncated, not rounded
    (same count as qwen-vl-utils; frames differ where the linspace has a fraction >= .5)."""
    import numpy as np

    return np.unique(np.linspace(start, end, num=n, dtype=np.int64)).tolist()


def video_max_pixels_qwen_vl_utils(
    nframes: int,
    *,
    min_pixels: int = 128 * 28 * 28,
    frame_max_pixels: int = 768 * 28 * 28,
    total_pixels: float = 128000 * 28 * 28 * 0.9,
    max_pixels: float | None = None,
    frame_factor: int = 2,
) -> float:
    """qwen-vl-utils' per-frame pixel cap: an even share of the total budget, within the frame bounds."""
    cap = max(min(frame_max_pixels, total_pixels / nframes * frame_factor), int(min_pixels * 1.05))
    return cap if max_pixels is None else min(max_pixels, cap)


def nframes_hf(
    total_frames: int,
    video_fps: float | None,
    *,
    fps: float | None = None,
    num_frames: int | None = None,
    min_frames: int = 4,
    max_frames: int = 768,
    temporal_patch_size: int = 2,
) -> int | None:
    """Number of frames transformers' ``Qwen2VLVideoProcessor.sample_frames`` keeps (None: all)."""
    if fps is not None and num_frames is not None:
        raise ValueError("num_frames and fps are mutually exclusive")
    if num_frames is not None:
        n: float = round(num_frames / temporal_patch_size) * temporal_patch_size
    elif fps is not None:
        if not video_fps:
            raise ValueError("sampling by fps needs the video's fps")
        hi = math.floor(min(max_frames, total_frames) / temporal_patch_size) * temporal_patch_size
        n = total_frames / video_fps * fps
        n = min(max(n, min_frames), hi, total_frames)
        n = math.floor(n / temporal_patch_size) * temporal_patch_size
    else:
        return None
    if n > total_frames:
        raise ValueError(f"cannot sample {n} frames from {total_frames}")
    return int(n)


def sample_indices_hf(total_frames: int, n: int | None) -> list[int]:
    """transformers' indices: ``arange(0, total, total / n).int()`` (all frames when n is None)."""
    if n is None:
        return list(range(total_frames))
    if n <= 0:
        raise ValueError(f"cannot sample {n} frames")
    return torch.arange(0, total_frames, total_frames / n).int().tolist()


def frame_range(total: int, fps: float, start_s: float | None, end_s: float | None) -> tuple[int, int]:
    """qwen-vl-utils' ``calculate_video_frame_range``: [start, end] frame indices for a time window.

    Raises:
        ValueError: the window selects no frames.
    """
    if start_s is None and end_s is None:
        return 0, total - 1
    max_duration = total / fps
    start = math.ceil(max(0.0, min(start_s, max_duration)) * fps) if start_s is not None else 0
    end = min(math.floor(max(0.0, min(end_s, max_duration)) * fps), total - 1) if end_s is not None else total - 1
    if start >= end:
        raise ValueError(f"time window [{start_s}, {end_s}] s selects no frames of a {max_duration:.2f} s video")
    return start, end


# ---------------------------------------------------------------- tensor ops


_INTERPOLATION = {"bicubic": InterpolationMode.BICUBIC, "bilinear": InterpolationMode.BILINEAR}
RESAMPLES = (*_INTERPOLATION, "pil-bicubic")
"""Resize rules a family may name: torch's antialiased kernels, or Pillow's own bicubic filter."""


def resize(frames: torch.Tensor, size: tuple[int, int], interpolation: str = "bicubic") -> torch.Tensor:
    """Antialiased resize of ``[..., C, H, W]`` (uint8 stays uint8, as in transformers).

    ``interpolation``: ``"bicubic"`` (transformers, qwen-vl-utils) or ``"bilinear"`` (SGLang's own
    Qwen-VL video path), torch's kernels; ``"pil-bicubic"``: Pillow's ``Image.resize`` bicubic filter, what code
    that resizes PIL images computes (InternVL's original checkpoints, as vLLM runs them), uint8 RGB only: Pillow
    itself, on the CPU whatever the frames' device (a GPU's frames are copied there and back; Pillow's passes and
    rounding are its own and change between its versions, so nothing else reproduces them). torch's antialiased
    bicubic is another filter: up to ~50 levels of 255 apart from Pillow's on noise. Returns the input itself when
    it already has that size.
    """
    if tuple(frames.shape[-2:]) == tuple(size):
        if interpolation not in RESAMPLES:
            raise ValueError(f"interpolation must be one of {RESAMPLES}, got {interpolation!r}")
        return frames
    if interpolation == "pil-bicubic":  # Pillow runs on the CPU: frames on a GPU go there and back
        return _pil_resize(frames.cpu(), size).to(frames.device)
    mode = _INTERPOLATION.get(interpolation)
    if mode is None:
        raise ValueError(f"interpolation must be one of {RESAMPLES}, got {interpolation!r}")
    # Decoders hand frames over channels-last in memory (their H x W x 3 buffers seen as [..., 3, H, W]):
    # torch's uint8 antialiased kernels run 2.2x faster on that layout than on a contiguous copy, and give
    # the same bytes. The result keeps the input's layout: laying patches out reads it directly (20-25%
    # faster here than making it contiguous first).
    return tvF.resize(frames, list(size), interpolation=mode, antialias=True)


def _pil_resize(frames: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Pillow's bicubic resize of uint8 ``[..., 3, H, W]`` on the CPU, frame by frame (Pillow releases the GIL
    while it resamples); the result is channels-last in memory, as decoders hand frames over."""
    from PIL import Image

    if frames.dtype != torch.uint8 or frames.shape[-3] != 3:
        raise ValueError(f"pil-bicubic resizes uint8 RGB frames, got {tuple(frames.shape)} {frames.dtype}")
    lead, (h, w) = frames.shape[:-3], size
    flat = frames.reshape(-1, *frames.shape[-3:])
    out = torch.empty((flat.shape[0], h, w, 3), dtype=torch.uint8)
    rows = out.numpy()
    for i, frame in enumerate(flat):
        hwc = frame.permute(1, 2, 0).contiguous().numpy()  # no copy for a decoder's channels-last buffer
        rows[i] = np.asarray(Image.fromarray(hwc).resize((w, h), Image.Resampling.BICUBIC))
    return out.permute(0, 3, 1, 2).reshape(*lead, 3, h, w)


def _mean_std(
    like: torch.Tensor, mean: Sequence[float], std: Sequence[float]
) -> tuple[torch.Tensor, torch.Tensor]:
    """The normalization constants on ``like``'s device, made once per device and values: building them
    per call on CUDA is a pageable host-to-device copy that synchronizes the slot's stream. Read-only."""
    return _mean_std_on(str(like.device), tuple(float(v) for v in mean), tuple(float(v) for v in std))


@functools.lru_cache(maxsize=64)
def _mean_std_on(
    device: str, mean: tuple[float, ...], std: tuple[float, ...]
) -> tuple[torch.Tensor, torch.Tensor]:
    # The same float32 arithmetic as transformers' fused rescale+normalize: mean / (1/255), std / (1/255).
    m = torch.tensor(mean, device=device) * (1.0 / (1 / 255))
    s = torch.tensor(std, device=device) * (1.0 / (1 / 255))
    return m, s


def normalize(
    frames: torch.Tensor,
    mean: Sequence[float] = OPENAI_CLIP_MEAN,
    std: Sequence[float] = OPENAI_CLIP_STD,
) -> torch.Tensor:
    """Fused rescale + normalize of uint8 ``[..., C, H, W]``: ``(x - 255 mean) / (255 std)`` in float32."""
    m, s = _mean_std(frames, mean, std)
    x = frames.to(torch.float32)
    if x is frames:  # already float32: do not modify the caller's tensor
        return (x - m[:, None, None]) / s[:, None, None]
    return x.sub_(m[:, None, None]).div_(s[:, None, None])  # in place on the fresh copy, as transformers


def patchify(
    frames: torch.Tensor,
    patch_size: int = 14,
    temporal_patch_size: int = 2,
    merge_size: int = 2,
    *,
    out: torch.Tensor | None = None,
) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """Flatten ``[T, C, H, W]`` into ``[grid_t*grid_h*grid_w, C*tp*p*p]`` rows in Qwen2-VL order.

    An odd last frame is repeated (one image becomes a pair of itself), exactly as transformers does.
    Rows follow (t, h-block, w-block, h-in-merge, w-in-merge); each row is (C, tp, p, p).
    ``out``: a contiguous destination of that shape (any dtype) written in place, e.g. a shared block.
    """
    x, (gt, gh, gw) = _patch_view(frames, patch_size, temporal_patch_size, merge_size)
    c, p, tp = frames.shape[1], patch_size, temporal_patch_size
    rows, row = gt * gh * gw, c * tp * p * p
    if out is None:
        return x.reshape(rows, row), (gt, gh, gw)
    if tuple(out.shape) != (rows, row) or not out.is_contiguous():
        raise ValueError(f"out must be a contiguous {(rows, row)} tensor, got {tuple(out.shape)}")
    out.view(x.shape).copy_(x)
    return out, (gt, gh, gw)


def normalize_patchify(
    frames: torch.Tensor,
    mean: Sequence[float] = OPENAI_CLIP_MEAN,
    std: Sequence[float] = OPENAI_CLIP_STD,
    *,
    patch_size: int = 14,
    temporal_patch_size: int = 2,
    merge_size: int = 2,
    dtype: torch.dtype = torch.float32,
    out: torch.Tensor | None = None,
) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """Normalize uint8 ``[T, C, H, W]`` and lay it out as patch rows (:func:`patchify`'s order), as ``dtype``;
    ``[B, T, C, H, W]``: B items of one size, each item's rows after the previous item's (the grid is one item's).

    The result is bit-identical to transformers' (normalize the frames in float32, ``(x - 255 mean) /
    (255 std)``, then lay out the patches, then ``.to(dtype)``), computed with fewer passes over memory. On
    the CPU, gpu-mm's C kernel (:func:`cpu_kernel_available`) reads the frames once, in place (contiguous or
    channels-last), and writes each output element once: float32 by the same IEEE operations in the same
    order, bfloat16/float16 looked up in a table of what each uint8 value becomes. Elsewhere (CUDA, or no
    kernel) torch ops lay the patches out while still uint8, then convert, shift and scale blocks of rows.
    ``out`` (of ``dtype``) receives the rows in place.
    """
    if out is not None and out.dtype != dtype:
        raise ValueError(f"out must be {dtype}, got {out.dtype}")
    if frames.ndim == 5:
        return _item_by_item(frames, out, dtype, patch_size, temporal_patch_size, merge_size, mean=mean, std=std)
    if dtype == torch.uint8:
        return patch_rows(frames, patch_size, temporal_patch_size, merge_size, out=out)
    if _kernel_takes(frames, dtype):
        return _kernel_rows(frames, patch_size, temporal_patch_size, merge_size, dtype, mean, std, out)
    if frames.dtype != torch.uint8 or dtype != torch.float32 or frames.ndim != 4:
        pv, grid = patchify(normalize(frames, mean, std), patch_size, temporal_patch_size, merge_size, out=out)
        return pv.to(dtype), grid
    return _normalize_patchify_torch(frames, mean, std, patch_size, temporal_patch_size, merge_size, out)


def _item_by_item(frames: torch.Tensor, out: torch.Tensor | None, dtype: torch.dtype, p: int, tp: int, m: int,
                  **kw: Any) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """:func:`normalize_patchify` of ``[B, T, C, H, W]`` items, one at a time, each into its slice of one output."""
    b, t, c, h, w = frames.shape
    gh, gw = _grid_hw(h, w, p, m)
    grid = (-(-t // tp), gh, gw)
    per = grid[0] * gh * gw
    out = _rows_out(out, b * per, c * tp * p * p, dtype, frames.device)
    for k in range(b):
        normalize_patchify(frames[k], patch_size=p, temporal_patch_size=tp, merge_size=m, dtype=dtype,
                           out=out[k * per : (k + 1) * per], **kw)
    return out, grid


def _normalize_patchify_torch(frames: torch.Tensor, mean: Sequence[float], std: Sequence[float], patch_size: int,
                              temporal_patch_size: int, merge_size: int,
                              out: torch.Tensor | None) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """:func:`normalize_patchify` of uint8 frames to float32 with torch ops (CUDA, or the CPU without the C
    kernel): the patches are laid out while still uint8 (a quarter of the bytes, moved in runs of a whole patch
    row), then each block of rows is converted, shifted and scaled in float32 while it is in cache."""
    # One image fills every temporal slot of its patches with the same pixels: normalize them once, copy them.
    reps = temporal_patch_size if frames.shape[0] == 1 else 1
    rows_u8, grid = _patch_rows_uint8(frames, patch_size, temporal_patch_size // reps, merge_size)
    rows, c, k1 = rows_u8.shape
    k = k1 * reps
    out = _rows_out(out, rows, c * k, torch.float32, frames.device)
    m, s = _mean_std(frames, mean, std)
    m, s = m[None, :, None], s[None, :, None]
    dst = out.view(rows, c, reps, k1)
    # On the CPU, blocks of rows small enough to stay in cache across the passes; on a GPU, one launch.
    block = rows if frames.device.type != "cpu" else max(1, _CACHE_BLOCK_BYTES // (4 * c * k))
    for r in range(0, rows, block):
        part = dst[r : r + block, :, 0]
        part.copy_(rows_u8[r : r + block])  # uint8 -> float32, exact
        part.sub_(m).div_(s)  # the same float32 operations, in the same order, as transformers
        if reps > 1:
            dst[r : r + block, :, 1:].copy_(part.unsqueeze(2).expand(-1, -1, reps - 1, -1))
    return out, grid


def _rows_out(out: torch.Tensor | None, rows: int, row: int, dtype: torch.dtype,
              device: torch.device) -> torch.Tensor:
    if out is None:
        return torch.empty((rows, row), dtype=dtype, device=device)
    if out.dtype != dtype or tuple(out.shape) != (rows, row) or not out.is_contiguous() or out.device != device:
        raise ValueError(f"out must be a contiguous {dtype} {(rows, row)} tensor on {device}, got {out.dtype} "
                         f"{tuple(out.shape)} on {out.device}")
    return out


# ---------------------------------------------------------------- the C kernel (CPU)

_cpu_patch: Any
try:  # built at install when a C compiler is there (setup.py); the torch ops above compute the same bits
    _cpu_patch = importlib.import_module("gpu_mm._cpu_patch")
except ImportError:  # pragma: no cover - depends on the install
    _cpu_patch = None

_KERNEL_OFF = os.environ.get("GPU_MM_CPU_KERNEL", "").strip().lower() in ("0", "false", "no", "off")
_KERNEL_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.uint8)
_KERNEL_ONE_THREAD_ELEMENTS = 2**18  # below this (a 1 MiB float32 output) a second thread costs more than it saves


def cpu_kernel_available() -> bool:
    """Whether :func:`normalize_patchify` and :func:`patch_rows` use gpu-mm's C kernel on the CPU (built at
    install when a C compiler was there, and not turned off by ``GPU_MM_CPU_KERNEL=0``); otherwise they run
    torch ops that compute the same bits, 2-2.5x slower."""
    return _cpu_patch is not None and not _KERNEL_OFF


def _kernel_takes(frames: torch.Tensor, dtype: torch.dtype) -> bool:
    return (cpu_kernel_available() and frames.device.type == "cpu" and frames.dtype == torch.uint8
            and frames.ndim == 4 and frames.numel() > 0 and dtype in _KERNEL_DTYPES)


@functools.lru_cache(maxsize=64)
def _lookup_table(mean: tuple[float, ...], std: tuple[float, ...], dtype: torch.dtype) -> torch.Tensor:
    """``[C, 256]``: what each uint8 value of each channel becomes, by the very ops of :func:`normalize` then
    ``.to(dtype)``, so a lookup gives the same bits as computing."""
    m, s = _mean_std_on("cpu", mean, std)
    v = torch.arange(256, dtype=torch.float32).expand(len(mean), 256).clone()
    return v.sub_(m[:, None]).div_(s[:, None]).to(dtype).contiguous()


def _kernel_rows(frames: torch.Tensor, p: int, tp: int, m: int, dtype: torch.dtype, mean: Sequence[float] | None,
                 std: Sequence[float] | None, out: torch.Tensor | None,
                 threads: int | None = None) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """Patch rows of uint8 CPU frames by the C kernel in one pass: float32 computed as transformers computes it,
    bfloat16/float16 looked up in :func:`_lookup_table`, uint8 the pixels themselves (``mean`` None).
    ``threads``: default torch's intra-op thread count (one for small outputs)."""
    assert _cpu_patch is not None
    t, c, h, w = frames.shape
    gh, gw = _grid_hw(h, w, p, m)
    grid = (-(-t // tp), gh, gw)
    rows, row = grid[0] * gh * gw, c * tp * p * p
    out = _rows_out(out, rows, row, dtype, frames.device)
    mean_ptr = std_ptr = table_ptr = 0
    keep: tuple[torch.Tensor, ...] = ()
    if dtype != torch.uint8:
        assert mean is not None and std is not None
        if len(mean) != c or len(std) != c:
            raise ValueError(f"mean and std need {c} values (one per channel), got {len(mean)} and {len(std)}")
        if dtype == torch.float32:
            keep = _mean_std(frames, mean, std)
            mean_ptr, std_ptr = keep[0].data_ptr(), keep[1].data_ptr()
        else:
            keep = (_lookup_table(tuple(map(float, mean)), tuple(map(float, std)), dtype),)
            table_ptr = keep[0].data_ptr()
    if threads is None:
        threads = 1 if rows * row < _KERNEL_ONE_THREAD_ELEMENTS else torch.get_num_threads()
    _cpu_patch.patch_rows(frames.data_ptr(), (t, c, h, w), tuple(frames.stride()), mean_ptr, std_ptr, table_ptr,
                          out.element_size(), out.data_ptr(), p, tp, m, threads)
    return out, grid


_CACHE_BLOCK_BYTES = 4 * 2**20


def patch_rows(frames: torch.Tensor, patch_size: int = 14, temporal_patch_size: int = 2, merge_size: int = 2, *,
               out: torch.Tensor | None = None) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """uint8 ``[T, C, H, W]`` laid out as uint8 patch rows (:func:`patchify`'s order), neither rescaled nor
    normalized: transformers' output with ``do_rescale=False, do_normalize=False``. ``out`` (uint8) receives
    the rows in place."""
    if frames.dtype != torch.uint8 or frames.ndim != 4:
        raise ValueError(f"frames must be uint8 [T, C, H, W], got {frames.dtype} {tuple(frames.shape)}")
    if _kernel_takes(frames, torch.uint8):
        return _kernel_rows(frames, patch_size, temporal_patch_size, merge_size, torch.uint8, None, None, out)
    rows_u8, grid = _patch_rows_uint8(frames, patch_size, temporal_patch_size, merge_size, out=out)
    rows, c, k = rows_u8.shape
    return (rows_u8.view(rows, c * k) if out is None else out), grid


def _patch_rows_uint8(frames: torch.Tensor, patch_size: int, temporal_patch_size: int,
                      merge_size: int, out: torch.Tensor | None = None) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """uint8 ``[T, C, H, W]`` as contiguous ``[rows, C, tp*p*p]`` patch rows, in :func:`patchify`'s order
    (written into ``out``, a contiguous uint8 ``[rows, C*tp*p*p]``, when given).

    A patch row's ``p`` pixels are contiguous in a contiguous frame, so they move as one unit: the frames are
    viewed as the widest integer type dividing ``p`` bytes (int16 for patch 14, int64 for patch 16), which
    makes the permuting copy move 2-8 bytes per element instead of one.
    """
    _, c, h, w = frames.shape
    p, tp = patch_size, temporal_patch_size
    _grid_hw(h, w, p, merge_size)  # before the integer view, which needs whole patch rows
    # Contiguous frames: whole patch rows move as one wide element. Others (channels-last, as resized from a
    # decoder's buffers): one byte at a time from where they lie, cheaper than making them contiguous first.
    unit = next(u for u in (8, 4, 2, 1) if p % u == 0) if frames.is_contiguous() else 1
    wide = {8: torch.int64, 4: torch.int32, 2: torch.int16, 1: torch.uint8}[unit]
    x = frames.view(wide) if unit > 1 else frames
    v, (gt, gh, gw) = _patch_view(x, p, tp, merge_size, unit)
    rows, k = gt * gh * gw, tp * p * p
    if out is None:
        packed = v.reshape(rows, c * k // unit)  # the one permuting copy
    else:
        if out.dtype != torch.uint8 or tuple(out.shape) != (rows, c * k) or not out.is_contiguous():
            raise ValueError(f"out must be a contiguous uint8 {(rows, c * k)} tensor, got {out.dtype} "
                             f"{tuple(out.shape)}")
        packed = out.view(wide)
        packed.view(v.shape).copy_(v)  # the one permuting copy, straight into out
    return packed.view(torch.uint8).view(rows, c, k), (gt, gh, gw)


def _grid_hw(h: int, w: int, patch_size: int, merge_size: int) -> tuple[int, int]:
    if h % (patch_size * merge_size) or w % (patch_size * merge_size):
        raise ValueError(f"frame size {h}x{w} is not a multiple of {patch_size * merge_size}")
    return h // patch_size, w // patch_size


def _patch_view(frames: torch.Tensor, p: int, tp: int, m: int,
                unit: int = 1) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """``[T, C, H, W]`` (each element ``unit`` pixels of a row) as a view of its patch rows in
    :func:`patchify`'s order, and the grid. An odd last frame is repeated; one image is broadcast over the
    temporal patch instead of copied first (as transformers repeats it)."""
    t, c, h, w = frames.shape
    gh, gw = _grid_hw(h, w * unit, p, m)
    pu = p // unit
    if t == 1:
        v = frames.reshape(c, gh // m, m, p, gw // m, m, pu).permute(1, 4, 2, 5, 0, 3, 6)
        return v.unsqueeze(5).expand(-1, -1, -1, -1, -1, tp, -1, -1), (1, gh, gw)
    if pad := -t % tp:
        frames = torch.cat([frames, frames[-1:].expand(pad, -1, -1, -1)], dim=0)
        t += pad
    gt = t // tp
    v = frames.reshape(gt, tp, c, gh // m, m, p, gw // m, m, pu).permute(0, 3, 6, 4, 7, 2, 1, 5, 8)
    return v, (gt, gh, gw)


SamplingRule = Literal["qwen_vl_utils", "sglang", "hf"]
