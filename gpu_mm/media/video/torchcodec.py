"""torchcodec (needs the system's FFmpeg shared libraries)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ...errors import BackendUnavailable, DecodeError, first_line
from ..sources import Source
from .decord import refuse_together
from .probe import VideoInfo

__all__ = ["TorchCodecDecoder"]


def _load_torchcodec_ffmpeg() -> None:
    """``import torchcodec`` succeeds without the system's FFmpeg libraries; its video decoder then fails on
    first use. Load them now, so a machine without them reports the backend unavailable, not every item bad.

    Raises:
        RuntimeError: torchcodec cannot load FFmpeg's shared libraries.
    """
    try:
        from torchcodec._internally_replaced_utils import load_core_libraries
    except ImportError:  # pragma: no cover - a torchcodec without this helper loads at import
        return
    load_core_libraries()


class TorchCodecDecoder:
    """torchcodec (needs the system's FFmpeg shared libraries), exact seek mode, planned indices only."""

    name = "torchcodec"

    def __init__(self, num_ffmpeg_threads: int = 1) -> None:
        refuse_together("torchcodec", "decord")
        try:
            from torchcodec.decoders import VideoDecoder as _VideoDecoder

            _load_torchcodec_ffmpeg()
        except (ImportError, RuntimeError, OSError) as exc:
            raise BackendUnavailable(
                f"torchcodec is not usable ({first_line(exc)}); it needs pip install torchcodec "
                "and FFmpeg's shared libraries (4..9) on the system"
            ) from None
        self._cls = _VideoDecoder
        self.num_ffmpeg_threads = num_ffmpeg_threads

    def get_frames_at(self, src: Source, info: VideoInfo, indices: Sequence[int]) -> torch.Tensor:
        if not indices:
            raise ValueError("no frame indices given")
        try:
            decoder = self._cls(src.data or b"", seek_mode="exact", dimension_order="NHWC",
                                num_ffmpeg_threads=self.num_ffmpeg_threads)
            available = min(int(decoder.metadata.num_frames or 0), info.num_frames)
            beyond = [i for i in indices if not 0 <= i < available]
            if beyond:
                reason = f"torchcodec reaches {available} frames; planned index {beyond[0]} is beyond"
                raise DecodeError(src.item, reason)
            return decoder.get_frames_at(list(indices)).data
        except (RuntimeError, ValueError) as exc:
            raise DecodeError(src.item, f"torchcodec failed: {first_line(exc)}") from None
