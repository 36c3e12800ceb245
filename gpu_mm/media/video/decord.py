"""decord (the ``decord2`` package, CPU)."""

from __future__ import annotations

import io
from collections.abc import Sequence

import torch

from ...errors import BackendUnavailable, DecodeError, first_line
from ..sources import Source
from .probe import VideoInfo

__all__ = ["DecordDecoder", "refuse_together"]


def refuse_together(name: str, other: str) -> None:
    """decord2 bundles its own FFmpeg while torchcodec loads the system's: with both in one process,
    decoding crashed the interpreter (decord2 3.4 + torchcodec 0.17, AV1). Refuse the second one."""
    import sys

    if other in sys.modules:
        raise BackendUnavailable(
            f"{name} cannot be used in a process that has loaded {other}: their FFmpeg builds clash "
            "(the process can crash); use one of them per process"
        )


class DecordDecoder:
    """decord (the ``decord2`` package, CPU): ``VideoReader.get_batch`` on the planned indices.

    The plan's frame count comes from the container's packets, not from decord, whose own count can
    be over-reported by a container header (dmlc/decord#373); indices beyond what decord can reach
    are an error, never a loop or a silent repeat.
    """

    name = "decord"

    def __init__(self) -> None:
        refuse_together("decord", "torchcodec")
        try:
            import decord
        except ImportError as exc:
            raise BackendUnavailable(f"decord is not installed ({exc}); pip install 'gpu-mm[decord]'") from None
        self._decord = decord

    def get_frames_at(self, src: Source, info: VideoInfo, indices: Sequence[int]) -> torch.Tensor:
        decord = self._decord
        if not indices:
            raise ValueError("no frame indices given")
        try:
            reader = decord.VideoReader(io.BytesIO(src.data or b""), ctx=decord.cpu(0), num_threads=1)
            available = min(len(reader), info.num_frames)
            beyond = [i for i in indices if not 0 <= i < available]
            if beyond:
                raise DecodeError(src.item, f"decord reaches {available} frames; planned index {beyond[0]} is beyond")
            frames = reader.get_batch(list(indices)).asnumpy()
        except decord.DECORDError as exc:
            raise DecodeError(src.item, f"decord failed: {first_line(exc)}") from None
        return torch.from_numpy(frames)
