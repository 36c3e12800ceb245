"""NVDEC through PyNvVideoCodec (``pip install pynvvideocodec``): the planned frames fetched by index, converted to
RGB on the GPU, on the slot's CUDA stream.

One ``SimpleDecoder`` per slot thread and stream, kept across items: a new source is opened with
``reconfigure_decoder`` (which takes a path: the item's bytes are given as an in-memory file, ``memfd``, never
written to disk), so the NVDEC session, its parser and its surfaces are built once per slot, not per item. A
source larger than the session was built for rebuilds it. PyNvVideoCodec retains the device's primary CUDA context
(the one torch uses) when given none, so it adds no context of its own.

Frames are asked for in batches of :data:`FRAMES_PER_BATCH` (the decoder's surfaces hold one batch) and copied into
one ``[N, H, W, 3]`` tensor on the stream they were converted on. What this backend measures against DALI and PyAV
on a card is in ``benchmarks/gpu_bench.py``; :func:`gpu_mm.media.video.choose_video_decoder` picks by measurement.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from typing import Any

import torch

from ...errors import BackendUnavailable, DecodeError, UnsupportedMedia, first_line
from ..sources import Source
from .dali import NVDEC_CODECS
from .probe import VideoInfo, check_planned_indices, in_planned_order

__all__ = ["FRAMES_PER_BATCH", "PyNvVideoCodecDecoder", "memory_file"]

FRAMES_PER_BATCH = 32
"""Frames per ``get_batch_frames_by_index`` call: the decoded frames one call keeps until they are copied out
(counted in each item's planned working memory: ``gpu_mm.pipeline.memory.DECODER_HELD_FRAMES``)."""


def _nvc() -> Any:
    try:
        import PyNvVideoCodec as nvc
    except (ImportError, OSError, RuntimeError) as exc:  # no package, or no driver / NVDEC library to load
        raise BackendUnavailable(f"PyNvVideoCodec is not usable ({first_line(exc)}); pip install pynvvideocodec, on a "
                                 "machine with an NVIDIA driver") from None
    return nvc


@contextlib.contextmanager
def memory_file(data: bytes | memoryview) -> Iterator[str]:
    """``data`` as a path that FFmpeg can open (an anonymous in-memory file, ``/proc/self/fd/N``), closed after."""
    fd = os.memfd_create("gpu-mm-video", os.MFD_CLOEXEC)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        yield f"/proc/self/fd/{fd}"
    finally:
        os.close(fd)


class PyNvVideoCodecDecoder:
    """Decode planned frames with PyNvVideoCodec's ``SimpleDecoder`` (NVDEC), frames on the GPU."""

    name = "pynvvideocodec"

    def __init__(self, device_id: int | None = None) -> None:
        self._nvc = _nvc()
        if not torch.cuda.is_available():
            raise BackendUnavailable("PyNvVideoCodec decodes with NVDEC and needs a CUDA device")
        self.device_id = device_id
        self._sessions: dict[tuple[int, int], _Session] = {}

    def supports(self, codec: str) -> bool:
        return codec in NVDEC_CODECS

    def get_frames_at(self, src: Source, info: VideoInfo, indices: Sequence[int]) -> torch.Tensor:
        """Frames at ``indices`` as uint8 ``[N, H, W, 3]`` on the current CUDA device, made on its current stream.

        Raises:
            UnsupportedMedia: a codec NVDEC does not decode.
            DecodeError: PyNvVideoCodec failed on the stream, or reaches fewer frames than planned.
        """
        if not self.supports(info.codec):
            raise UnsupportedMedia(src.item, f"codec {info.codec!r} is not decoded by NVDEC")
        check_planned_indices(indices, info)
        wanted = sorted(set(int(i) for i in indices))
        stream = torch.cuda.current_stream()
        try:
            with memory_file(src.data or b"") as path:
                decoder = self._session(stream).open(path, info)
                available = len(decoder)
                if wanted[-1] >= available:
                    raise DecodeError(src.item, f"PyNvVideoCodec reaches {available} frames; planned index "
                                                f"{wanted[-1]} is beyond")
                frames = torch.empty((len(wanted), info.height, info.width, 3), dtype=torch.uint8,
                                     device=stream.device)
                for start in range(0, len(wanted), FRAMES_PER_BATCH):
                    asked = wanted[start : start + FRAMES_PER_BATCH]
                    batch = decoder.get_batch_frames_by_index(asked)
                    got = [_hwc(torch.from_dlpack(frame)) for frame in batch]
                    if len(got) != len(asked):
                        raise DecodeError(src.item, f"PyNvVideoCodec returned {len(got)} frames for "
                                                    f"{len(asked)} indices")
                    for k, frame in enumerate(got):
                        if tuple(frame.shape) != (info.height, info.width, 3):
                            raise DecodeError(src.item, f"PyNvVideoCodec returned a {tuple(frame.shape)} frame, "
                                                        f"the stream is {info.width}x{info.height}")
                        frames[start + k].copy_(frame)
                    # The batch's frames live in the decoder's buffers: copied out before it is asked for more
                    # (and before they go back to it). The slot's thread waits; the caller's deadline does not.
                    stream.synchronize()
                    del batch, got
        except (DecodeError, torch.OutOfMemoryError):
            raise
        except Exception as exc:  # noqa: BLE001 - the library raises its own types, RuntimeError and bare Exception
            self._sessions.pop(_key(stream), None)  # a failed session is rebuilt for the next item
            raise DecodeError(src.item, f"PyNvVideoCodec failed: {first_line(exc)}") from None
        return in_planned_order(frames, wanted, indices)

    def _session(self, stream: torch.cuda.Stream) -> _Session:
        key = _key(stream)
        session = self._sessions.get(key)
        if session is None:
            device = stream.device_index if self.device_id is None else self.device_id
            session = self._sessions[key] = _Session(self._nvc, device, stream.cuda_stream)
        return session


def _key(stream: torch.cuda.Stream) -> tuple[int, int]:
    return (int(stream.device_index or 0), int(stream.cuda_stream))


def _hwc(frame: torch.Tensor) -> torch.Tensor:
    """A frame as ``[H, W, 3]`` (interleaved RGB is already so; planar ``[3, H, W]`` is permuted)."""
    if frame.ndim == 3 and frame.shape[-1] != 3 and frame.shape[0] == 3:
        return frame.permute(1, 2, 0)
    return frame


class _Session:
    """One slot's ``SimpleDecoder``, reopened on each source; rebuilt for a larger frame than it was made for."""

    def __init__(self, nvc: Any, device: int, cuda_stream: int) -> None:
        self.nvc = nvc
        self.device = device
        self.cuda_stream = cuda_stream
        self.decoder: Any = None
        self.max_size = (0, 0)

    def open(self, path: str, info: VideoInfo) -> Any:
        if self.decoder is not None and info.width <= self.max_size[0] and info.height <= self.max_size[1]:
            try:
                self.decoder.reconfigure_decoder(path)
                return self.decoder
            except Exception:  # noqa: BLE001 - a source the session cannot take: build one that can
                self.decoder = None
        size = (max(info.width, self.max_size[0]), max(info.height, self.max_size[1]))
        # A path: SimpleDecoder 2.2's only warning at construction is for large in-memory buffers (nothing to
        # silence, and silencing per call in slot threads would race on the process's warning filters).
        self.decoder = self.nvc.SimpleDecoder(
            path, gpu_id=self.device, cuda_stream=self.cuda_stream, use_device_memory=True,
            output_color_type=self.nvc.OutputColorType.RGB, max_width=size[0], max_height=size[1],
            decoder_cache_size=1)
        self.max_size = size
        return self.decoder
