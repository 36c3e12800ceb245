"""What one item may hold at its peak, from its plan alone, and the default budgets: video chunking and decoder
call sizes, working-memory bounds, the memory and cache defaults. Pure arithmetic."""

from __future__ import annotations

import math
import os

import torch

from ..media.video.nvcodec import FRAMES_PER_BATCH
from ..models.base import ModelSpec

CHUNK_BYTES = 128 * 2**20
"""Working set a video chunk aims at: source-size frames decoded, then resized, a few at a time."""


MAX_CHUNK_FRAMES = 32


SLACK_BYTES = 64 * 2**20
"""Per item, for what no formula counts: allocator rounding and fragmentation, Python objects, codec state."""


def _video_frame_bytes(size: tuple[int, int], target: tuple[int, int]) -> int:
    src, tgt = size[0] * size[1], target[0] * target[1]
    # the chunk's uint8 RGB frame (3) + resize's channels-last copy and horizontal pass (3 + 4 * tgt/src)
    # + the resized frame (3) and its float32 normalized copy (12) per target pixel
    return 6 * src + 4 * size[0] * target[1] + 15 * tgt


def video_chunk_frames(size: tuple[int, int], target: tuple[int, int], temporal_patch_size: int,
                       frames: int) -> int:
    """Frames per chunk: as many as fit :data:`CHUNK_BYTES` (at most 32, at most the item's ``frames``
    rounded up), a multiple of the temporal patch."""
    n = CHUNK_BYTES // max(_video_frame_bytes(size, target), 1)
    n = min(n, MAX_CHUNK_FRAMES, frames + (-frames % temporal_patch_size))
    return max(n // temporal_patch_size * temporal_patch_size, temporal_patch_size)


DECODE_CALL_BYTES = 1 << 30
"""Decoded frames (uint8 RGB at the source size) one call of a :data:`PER_CALL_DECODERS` decoder may return."""


PER_CALL_DECODERS = frozenset({"dali", "pynvvideocodec"})
"""Decoders asked for as many frames per call as :data:`DECODE_CALL_BYTES` allows, not a chunk at a time: each
DALI/NVDEC call builds its own demuxer and decoder and decodes every frame from the start of the stream up to its
last wanted one (a 30 s 720p clip on an H200: ten 6-frame calls 5467 ms, one call 992 ms); PyNvVideoCodec reopens
the source and seeks again on each call. Their frames are on the GPU, whose budget holds them; the chunks are
resized and patchified from the call's frames as before."""


DECODER_HELD_FRAMES = {"pynvvideocodec": FRAMES_PER_BATCH}
"""Decoded RGB frames a decoder holds in buffers of its own while a call copies them out (PyNvVideoCodec: one
batch), beyond the frames the call returns."""


def decoder_held_bytes(decoder: str, size: tuple[int, int], frames: int) -> int:
    """What ``decoder`` holds of its own while decoding ``frames`` planned frames of ``size`` (0 for decoders whose
    frames are the call's own)."""
    return min(DECODER_HELD_FRAMES.get(decoder, 0), frames) * 3 * size[0] * size[1]


def video_call_frames(size: tuple[int, int], chunk: int, frames: int) -> int:
    """Frames per decoder call for :data:`PER_CALL_DECODERS`: every planned frame when their decoded bytes fit
    :data:`DECODE_CALL_BYTES`, else as many whole chunks as fit (at least one)."""
    fit = DECODE_CALL_BYTES // max(3 * size[0] * size[1], 1)
    whole = frames + (-frames % chunk)
    return whole if whole <= fit else max(fit // chunk, 1) * chunk


DECODER_STATE_PER_PIXEL = 33
"""Bytes per source pixel a software decoder holds of its own: FFmpeg's reference and threading buffers, up to ~20
YUV 4:2:0 frames, plus one RGB conversion."""


SPLIT_MAX_DECODERS = 4
"""Decoders a video's plan reserves memory for at most, when it may decode its keyframe runs at once
(:mod:`gpu_mm.pipeline.split_decode`): each costs :func:`split_decoder_bytes` (1080p: ~93 MB), reserved
whether or not threads are free when it runs."""


def split_decoder_bytes(size: tuple[int, int], step: int) -> int:
    """What one decoder of a split decode holds: its state and two buffers of ``step`` frames."""
    return (DECODER_STATE_PER_PIXEL + 2 * step * 3) * size[0] * size[1]


def _split_extra(size: tuple[int, int], step: int, decoders: int) -> int:
    """What ``decoders`` decoders of a split decode hold beyond the one decoder's state every video counts."""
    if decoders < 2:
        return 0
    return decoders * split_decoder_bytes(size, step) - DECODER_STATE_PER_PIXEL * size[0] * size[1]


def video_working_bytes(size: tuple[int, int], target: tuple[int, int], chunk: int, feature_bytes: int, *,
                        decoders: int = 1, step: int = 1) -> int:
    """Peak bytes of one video item: its output rows, one chunk in flight, the decoder's own frames
    (:data:`DECODER_STATE_PER_PIXEL`), with ``decoders > 1`` the decoders of a split decode
    (:func:`split_decoder_bytes`, buffers of ``step`` frames), and a slack."""
    src = size[0] * size[1]
    return (feature_bytes + chunk * _video_frame_bytes(size, target) + DECODER_STATE_PER_PIXEL * src
            + _split_extra(size, step, decoders) + SLACK_BYTES)


def split_decode_fit(size: tuple[int, int], target: tuple[int, int], chunk: int, step: int, threads: int,
                     decoders: int = 1) -> tuple[int, int]:
    """``(threads, frames)``: how many decoders (at most ``threads``) may decode one video's planned frames at once
    within what :func:`video_working_bytes` reserved (for a ``chunk`` and ``decoders`` decoders), and how many
    frames each decoder's two buffers hold (a multiple of ``step``). Each decoder holds its own state and two
    buffers; the slot's thread resizes one buffer at a time. ``(1, chunk)`` when two do not fit."""
    src = size[0] * size[1]
    frame = _video_frame_bytes(size, target)
    reserved = chunk * frame + DECODER_STATE_PER_PIXEL * src + _split_extra(size, step, decoders)
    for n in range(threads, 1, -1):
        frames = (reserved - n * DECODER_STATE_PER_PIXEL * src) // (frame + n * 2 * 3 * src) // step * step
        if frames >= step:
            return n, min(frames, chunk)
    return 1, chunk


def image_working_bytes(size: tuple[int, int], target: tuple[int, int], feature_bytes: int, *,
                        via_pillow: bool, frames: int = 1) -> int:
    """Peak bytes of one image (or of ``frames`` already decoded frames): per source pixel the decoded RGB
    tensor (3) and resize's channels-last and 4-channel copies (5), plus for formats Pillow decodes its own
    image (up to 4) and an EXIF-transposed copy (4); per target pixel the resized frame and its float32 copy
    (15); the output rows; a slack."""
    src = size[0] * size[1]
    per_pixel = 8 + (8 if via_pillow else 0)
    return frames * (per_pixel * src + 15 * target[0] * target[1]) + feature_bytes + SLACK_BYTES


def default_memory_budget(device: str) -> int:
    """8 GiB, or less on a small machine: half the RAM (CPU) or a quarter of the GPU's memory (CUDA)."""
    cap = 8 * 2**30
    if device.startswith("cuda"):
        return min(cap, torch.cuda.get_device_properties(torch.device(device)).total_memory // 4)
    ram = _physical_memory()
    return cap if ram is None else min(cap, ram // 2)


def _physical_memory() -> int | None:
    """The machine's RAM in bytes (None where POSIX cannot say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - not POSIX
        return None


def _mib(n: int) -> str:
    return f"{n / 2**20:.0f} MiB"


def default_cache_bytes() -> int:
    """1 GiB, or 1/16 of the machine's memory if less."""
    ram = _physical_memory()
    return 2**30 if ram is None else min(2**30, ram // 16)


def _feature_bytes(grid: tuple[int, int, int], cfg: ModelSpec) -> int:
    return math.prod(cfg.item_shape(grid)) * cfg.output_dtype.itemsize
