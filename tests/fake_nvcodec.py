"""A stand-in for PyNvVideoCodec on machines without an NVIDIA driver (the real package refuses to import there):
the API gpu-mm calls, with the signatures of PyNvVideoCodec 2.2.4's ``SimpleDecoder`` (a keyword it does not take
fails here as there), frames decoded by PyAV from the path it is given, as CPU tensors behind DLPack.

What it cannot show (NVDEC's colour conversion, its seeking, its memory) is checked on a card by the ``cuda`` tests.
"""

from __future__ import annotations

import enum
import sys
import types
from typing import Any

import av
import torch


class OutputColorType(enum.Enum):
    NATIVE = 0
    RGB = 1
    RGBP = 2


class PyNvVCExceptionUnsupported(Exception):
    """Like the real package's exceptions: not a RuntimeError."""


class DecodedFrame:
    def __init__(self, pixels: torch.Tensor) -> None:
        self._pixels = pixels

    def __dlpack__(self, stream: Any = None) -> Any:
        return self._pixels.__dlpack__()

    def __dlpack_device__(self) -> Any:
        return self._pixels.__dlpack_device__()


class SimpleDecoder:
    """Records what gpu-mm asks of it (class-wide, reset by :func:`install`)."""

    built: list[dict[str, Any]] = []
    reopened: list[str] = []
    batches: list[list[int]] = []
    fail_on: set[str] = set()
    """Path contents (first bytes, as hex) on which decoding raises, as NVDEC does on a stream it cannot take."""
    refuse: set[str] = set()
    """Path contents on which opening raises a bare ``Exception``, as ``SimpleDecoder`` does for a stream whose
    container states no frame count."""

    def __init__(self, enc_file_path: Any, gpu_id: int = 0, cuda_context: int = 0, cuda_stream: int = 0,
                 use_device_memory: bool = True, max_width: int = 0, max_height: int = 0,
                 need_scanned_stream_metadata: int = 0, decoder_cache_size: int = 4,
                 output_color_type: OutputColorType = OutputColorType.NATIVE, bWaitForSessionWarmUp: bool = False,
                 enableDecodeStats: bool = False) -> None:
        self.kw = dict(gpu_id=gpu_id, cuda_context=cuda_context, cuda_stream=cuda_stream,
                       use_device_memory=use_device_memory, max_width=max_width, max_height=max_height,
                       output_color_type=output_color_type, decoder_cache_size=decoder_cache_size)
        SimpleDecoder.built.append(self.kw)
        self._open(enc_file_path)

    def _open(self, path: Any) -> None:
        if not isinstance(path, str):
            raise TypeError("the fake, like reconfigure_decoder, takes a path")
        with open(path, "rb") as f:
            head = f.read(64)
        with av.open(path) as container:
            stream = container.streams.video[0]
            if stream.codec_context.width > self.kw["max_width"] or stream.codec_context.height > self.kw["max_height"]:
                raise PyNvVCExceptionUnsupported("frame larger than the decoder was created for")
            rgb = self.kw["output_color_type"] == OutputColorType.RGB
            self._frames = [torch.from_numpy(f.to_ndarray(format="rgb24" if rgb else "nv12"))
                            for f in container.decode(stream)]
        if head.hex() in SimpleDecoder.refuse:
            raise Exception("Elementary streams not supported by Simple Decoder. Invalid input stream.")  # noqa: TRY002
        self._fail = head.hex() in SimpleDecoder.fail_on

    def reconfigure_decoder(self, new_source: str) -> None:
        SimpleDecoder.reopened.append(new_source)
        self._open(new_source)

    def __len__(self) -> int:
        return len(self._frames)

    def get_batch_frames_by_index(self, indices: list[int]) -> list[DecodedFrame]:
        SimpleDecoder.batches.append(list(indices))
        if self._fail:
            raise PyNvVCExceptionUnsupported("cuvidDecodePicture failed")
        return [DecodedFrame(self._frames[i]) for i in indices if 0 <= i < len(self._frames)]


class Stream:
    """What gpu-mm reads of ``torch.cuda.current_stream()``, with frames on the CPU."""

    def __init__(self) -> None:
        self.device_index = 0
        self.cuda_stream = 12345
        self.device = torch.device("cpu")
        self.synchronized = 0

    def synchronize(self) -> None:
        self.synchronized += 1


def install(monkeypatch: Any) -> Stream:
    """Put the fake in ``sys.modules`` as ``PyNvVideoCodec`` and make torch report a CUDA device whose current
    stream is a :class:`Stream`; returns that stream."""
    module = types.ModuleType("PyNvVideoCodec")
    module.OutputColorType = OutputColorType  # type: ignore[attr-defined]
    module.SimpleDecoder = SimpleDecoder  # type: ignore[attr-defined]
    module.PyNvVCExceptionUnsupported = PyNvVCExceptionUnsupported  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "PyNvVideoCodec", module)
    SimpleDecoder.built, SimpleDecoder.reopened, SimpleDecoder.batches = [], [], []
    SimpleDecoder.fail_on, SimpleDecoder.refuse = set(), set()
    stream = Stream()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: stream)
    return stream
