"""Plain JPEGs decoded by nvImageCodec (``pip install nvidia-nvimgcodec-cu13``; DALI installs it too).

On CUDA it chooses among its backends per image: the hardware JPEG engines where the chip has them (A100, H100,
H200), nvJPEG's CUDA decoder, or its hybrid CPU/GPU one, for a whole batch in one call on the slot's stream; on the
CPU its libjpeg-turbo backend decodes a batch on its own threads (the same bits as torchvision's libjpeg-turbo
decode, tested). EXIF orientation is applied by the decoder. One decoder per slot thread (``slot.state``); its
images are handed to torch through DLPack without a copy.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ..errors import BackendUnavailable, DecodeError, first_line
from .image import ImageInfo
from .sources import Source

__all__ = ["NvImageCodecDecoder", "load_nvimgcodec"]


def load_nvimgcodec() -> Any:
    """The ``nvidia.nvimgcodec`` module.

    Raises:
        BackendUnavailable: not installed, or its library cannot load here.
    """
    # Its C library prints an ERROR and a WARNING line for every corrupt image (read once, at its import): a client
    # sending corrupt JPEGs would flood the server's output, while gpu-mm answers each with a typed error naming
    # it. Quiet unless the operator asks otherwise (PYNVIMGCODEC_VERBOSITY=1: errors, 2: warnings too).
    os.environ.setdefault("PYNVIMGCODEC_VERBOSITY", "0")
    try:
        return importlib.import_module("nvidia.nvimgcodec")
    except (ImportError, OSError, RuntimeError) as exc:
        raise BackendUnavailable(f"nvImageCodec is not usable ({first_line(exc)}); pip install "
                                 "nvidia-nvimgcodec-cu13 (or gpu-mm[nvimgcodec])") from None


class NvImageCodecDecoder:
    """Decode plain JPEGs to uint8 ``[3, H, W]`` (channels-last in memory) on ``device``, a batch per call."""

    name = "nvimgcodec"

    def __init__(self, device: str = "cpu") -> None:
        n = load_nvimgcodec()
        self._n = n
        self.device = torch.device(device)
        if self.device.type == "cuda":
            index = self.device.index if self.device.index is not None else torch.cuda.current_device()
            self._decoder = n.Decoder(device_id=index)
        else:  # its libjpeg-turbo backend only: no CUDA context
            self._decoder = n.Decoder(device_id=n.NVIMGCODEC_DEVICE_CPU_ONLY,
                                      backends=[n.Backend(n.BackendKind.CPU_ONLY)])
        self._params = n.DecodeParams(apply_exif_orientation=True, color_spec=n.ColorSpec.SRGB, allow_any_depth=False,
                                      sample_format=n.SampleFormat.I_RGB)

    def decode(self, items: Sequence[tuple[Source, ImageInfo]]) -> list[torch.Tensor]:
        """Each plain JPEG of ``items`` as uint8 ``[3, H, W]`` as displayed (EXIF applied), on this decoder's
        device; on CUDA, ready in stream order on the current stream.

        Raises:
            DecodeError: naming the first item nvImageCodec could not decode, or decoded to another size than its
                header states.
        """
        n = self._n
        arrays = [np.frombuffer(src.data or b"", dtype=np.uint8) for src, _ in items]
        streams = [n.CodeStream(a) for a in arrays]
        cuda_stream = torch.cuda.current_stream(self.device).cuda_stream if self.device.type == "cuda" else 0
        try:
            images = self._decoder.decode(streams, params=self._params, cuda_stream=cuda_stream)
        except RuntimeError as exc:
            raise DecodeError(items[0][0].item, f"nvImageCodec failed: {first_line(exc)}") from None
        out = []
        for (src, info), image in zip(items, images):
            if image is None:
                raise DecodeError(src.item, "nvImageCodec could not decode this JPEG (corrupt or truncated data)")
            # Host images through the array interface (their DLPack export asks CUDA for the device even then).
            hwc = torch.from_dlpack(image) if self.device.type == "cuda" else torch.from_numpy(np.asarray(image))
            if tuple(hwc.shape) != (info.height, info.width, 3):  # info: as displayed, EXIF applied
                raise DecodeError(src.item, f"nvImageCodec decoded {tuple(hwc.shape)}; the header states "
                                            f"{info.width}x{info.height} RGB")
            out.append(hwc.permute(2, 0, 1))
        return out
