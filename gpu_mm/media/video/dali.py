"""NVIDIA DALI video decoding: NVDEC through the ``mixed`` backend, or DALI's CPU decoder (VP8/VP9/MJPEG).

Uses DALI's eager API (``nvidia.dali.experimental.dynamic``), one evaluation context per slot thread,
bound to that slot's CUDA stream; only the planned frames are decoded (``frames=``); GPU output reaches
torch through DLPack without a copy.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ...errors import BackendUnavailable, DecodeError, UnsupportedMedia, first_line
from ..sources import Source
from .probe import VideoInfo, check_planned_indices, in_planned_order

__all__ = ["CPU_CODECS", "DALIVideoDecoder", "NVDEC_CODECS"]

CPU_CODECS = frozenset({"vp8", "vp9", "mjpeg"})
"""What DALI's CPU video decoder handles ("Codec 27 (h264) is not supported by the CPU variant")."""
NVDEC_CODECS = frozenset({"h264", "hevc", "vp8", "vp9", "av1", "mjpeg", "mpeg4"})
"""What DALI's mixed backend accepts; the chip decides the rest (not every NVDEC generation decodes AV1;
an item it fails on falls back to PyAV)."""


def _ndd() -> Any:
    try:
        import nvidia.dali.experimental.dynamic as ndd
    except ImportError as exc:
        raise BackendUnavailable(f"DALI is not installed ({exc}); pip install 'gpu-mm[dali]'") from None
    return ndd


class DALIVideoDecoder:
    """Decode planned frames with DALI. ``backend="mixed"`` (NVDEC, frames on the GPU) or ``"cpu"``."""

    def __init__(self, backend: str = "mixed", device_id: int | None = None) -> None:
        if backend not in ("mixed", "cpu"):
            raise ValueError(f"backend must be 'mixed' or 'cpu', got {backend!r}")
        self._ndd = _ndd()
        if backend == "mixed" and not torch.cuda.is_available():
            raise BackendUnavailable("DALI's mixed (NVDEC) backend needs a CUDA device")
        self.backend = backend
        # Dynamic mode names devices, not backends: "gpu" runs an operator's mixed backend where it has one
        # (DALI's _resolve_backend); "mixed" itself is refused ("Invalid device type", first GPU run).
        self.ndd_device = "gpu" if backend == "mixed" else "cpu"
        self.device_id = device_id
        self.name = "dali-nvdec" if backend == "mixed" else "dali-cpu"
        self._contexts: dict[Any, Any] = {}

    def supports(self, codec: str) -> bool:
        return codec in (NVDEC_CODECS if self.backend == "mixed" else CPU_CODECS)

    def _context(self) -> Any:
        """The evaluation context for the current CUDA stream (one per slot thread and stream)."""
        ndd = self._ndd
        if self.backend == "cpu":
            key: Any = "cpu"
            if key not in self._contexts:
                self._contexts[key] = ndd.EvalContext(num_threads=1)
            return self._contexts[key]
        stream = torch.cuda.current_stream()
        key = (stream.device_index, stream.cuda_stream)
        if key not in self._contexts:
            device_id = stream.device_index if self.device_id is None else self.device_id
            try:
                self._contexts[key] = ndd.EvalContext(device_id=device_id, cuda_stream=stream)
            except (TypeError, ValueError):
                self._contexts[key] = ndd.EvalContext(device_id=device_id, cuda_stream=stream.cuda_stream)
        return self._contexts[key]

    def get_frames_at(self, src: Source, info: VideoInfo, indices: Sequence[int]) -> torch.Tensor:
        """Frames at ``indices`` as uint8 ``[N, H, W, 3]`` (on the GPU for the mixed backend).

        Raises:
            UnsupportedMedia: this backend does not decode ``info.codec``.
            DecodeError: DALI failed on the stream.
        """
        if not self.supports(info.codec):
            raise UnsupportedMedia(src.item, f"codec {info.codec!r} is not decoded by DALI's {self.backend} backend")
        check_planned_indices(indices, info)
        wanted = sorted(set(int(i) for i in indices))
        ndd = self._ndd
        encoded = ndd.as_tensor(np.frombuffer(src.data or b"", dtype=np.uint8))
        try:
            with self._context():
                out = ndd.decoders.video(encoded, device=self.ndd_device, frames=wanted)
                frames = torch.from_dlpack(out) if self.backend == "mixed" else torch.from_numpy(np.array(out))
        except RuntimeError as exc:
            raise DecodeError(src.item, f"DALI {self.backend} decode failed: {first_line(exc)}") from None
        if frames.shape[0] != len(wanted):
            raise DecodeError(src.item, f"DALI returned {frames.shape[0]} frames, {len(wanted)} were planned")
        return in_planned_order(frames, wanted, indices)
