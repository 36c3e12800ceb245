"""Device decisions: which device a setting names, whether a tensor is already there, which image decoder and
which normalize+patchify run on it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from .. import ops
from ..errors import (
    BackendUnavailable,
)
from ..media.image import jpeg_codec


def resolve_device(device: str) -> str:
    """The device a setting names: ``auto`` is ``cuda`` when CUDA is available, else ``cpu``.

    Raises:
        ValueError: not one of ``auto``, ``cpu``, ``cuda``, ``cuda:N``.
        BackendUnavailable: a CUDA device without CUDA.
    """
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if not (device == "cpu" or device == "cuda" or (device.startswith("cuda:") and device[5:].isdigit())):
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise BackendUnavailable(f"device {device!r} requested but CUDA is not available")
    return device


def same_device(actual: torch.device, wanted: torch.device) -> bool:
    """Whether a tensor on ``actual`` is already where ``wanted`` names: ``cuda`` (no index) means the
    current CUDA device, so a tensor on ``cuda:0`` is there when device 0 is current; ``cpu`` is ``cpu``."""
    if actual.type != wanted.type:
        return False
    if wanted.type != "cuda" or actual.index == wanted.index:
        return True
    index = wanted.index if wanted.index is not None else torch.cuda.current_device()
    actual_index = actual.index if actual.index is not None else torch.cuda.current_device()
    return index == actual_index


IMAGE_DECODERS = ("auto", "nvjpeg", "nvimgcodec", "cpu")


def choose_image_decoder(name: str, device: str) -> str:
    """``image_decoder`` resolved for ``device``: ``"nvjpeg"``, ``"nvimgcodec"`` or ``"cpu"``.

    Raises:
        ValueError: an unknown name, or nvJPEG without a CUDA device.
        BackendUnavailable: nvImageCodec is not installed or cannot load; nvJPEG asked of a torchvision without
            image codecs.
    """
    if name not in IMAGE_DECODERS:
        raise ValueError(f"image_decoder must be one of {IMAGE_DECODERS}, got {name!r}")
    if name == "nvimgcodec":
        from ..media.nvimgcodec import load_nvimgcodec

        load_nvimgcodec()  # fail now, not per request
    cuda = device.startswith("cuda")
    if name == "nvjpeg" and not cuda:
        raise ValueError(f"image_decoder='nvjpeg' needs a CUDA device, got device={device!r}")
    nvjpeg = jpeg_codec() is not None  # torchvision's; a torchvision without image codecs has none
    if name == "nvjpeg" and not nvjpeg:
        raise BackendUnavailable("image_decoder='nvjpeg' needs torchvision's decode_jpeg, which this torchvision "
                                 "does not have (its image codecs were deprecated in 0.29); use 'nvimgcodec' or 'cpu'")
    if name == "auto":
        return "nvjpeg" if cuda and nvjpeg else "cpu"
    return name


def _normalize_patchify_impl(device_type: str, dtype: torch.dtype) -> Callable[..., Any]:
    """Which normalize+patchify runs: the Triton kernel for float output on CUDA where Triton can run, else the
    torch/CPU one in ``gpu_mm.ops`` (uint8 output is one permuting copy, torch's)."""
    if device_type == "cuda" and dtype != torch.uint8:
        from ..kernels.normalize_patchify import fused_normalize_patchify
        from ..kernels.runtime import triton_available

        if triton_available():
            return fused_normalize_patchify
    return ops.normalize_patchify
