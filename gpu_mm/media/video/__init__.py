"""Video: probing, and decoder backends registered by name, one module each, imported only when used.

A backend is a class meeting :class:`VideoDecoder` (``get_frames_at``, optionally the streaming
``iter_frames_at``); it fetches exactly the frames a plan asks for (sampling is the model family's). The
registry knows each built-in backend by the module that holds it and the packages it needs, so
:func:`available_video_decoders` answers without importing any of them (importing decord and torchcodec
into one process is refused: their FFmpeg builds clash). Adding a backend is one module here plus one
:func:`register_video_decoder` call.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import threading
from collections.abc import Callable

from ...errors import BackendUnavailable
from .probe import VideoDecoder, VideoInfo, check_planned_indices, frames_from_array, probe_video, rotate_frames
from .pyav import PyAVDecoder

__all__ = [
    "PyAVDecoder",
    "VideoDecoder",
    "VideoInfo",
    "available_video_decoders",
    "check_planned_indices",
    "choose_video_decoder",
    "frames_from_array",
    "get_video_decoder",
    "probe_video",
    "register_video_decoder",
    "rotate_frames",
    "unregister_video_decoder",
]


@dataclasses.dataclass(frozen=True)
class _Backend:
    factory: Callable[[], VideoDecoder] | str
    """A callable, or ``"module:attribute"`` (a class or function of no arguments) imported on first use."""
    requires: tuple[str, ...] = ()
    """Import names of the packages it needs, checked with ``importlib.util.find_spec`` (no import)."""
    args: tuple[object, ...] = ()


_BACKENDS: dict[str, _Backend] = {
    "pyav": _Backend(PyAVDecoder, ("av",)),
    "decord": _Backend(f"{__name__}.decord:DecordDecoder", ("decord",)),
    "torchcodec": _Backend(f"{__name__}.torchcodec:TorchCodecDecoder", ("torchcodec",)),
    "dali": _Backend(f"{__name__}.dali:DALIVideoDecoder", ("nvidia.dali",), ("mixed",)),
    "dali-cpu": _Backend(f"{__name__}.dali:DALIVideoDecoder", ("nvidia.dali",), ("cpu",)),
    "pynvvideocodec": _Backend(f"{__name__}.nvcodec:PyNvVideoCodecDecoder", ("PyNvVideoCodec",)),
}
_lock = threading.Lock()


def register_video_decoder(name: str, factory: Callable[[], VideoDecoder], *, requires: tuple[str, ...] = (),
                           replace: bool = False) -> None:
    """Register a decoder backend under ``name``; its factory is called lazily, once per slot thread.

    Raises:
        ValueError: ``name`` is taken (pass ``replace=True`` to swap a backend deliberately).
    """
    with _lock:
        if name in _BACKENDS and not replace:
            raise ValueError(f"a video decoder named {name!r} is already registered")
        _BACKENDS[name] = _Backend(factory, tuple(requires))


def unregister_video_decoder(name: str) -> None:
    """Remove a backend registered with :func:`register_video_decoder` (``pyav`` stays)."""
    if name == "pyav":
        raise ValueError("pyav is the fallback of every other backend and cannot be removed")
    with _lock:
        _BACKENDS.pop(name, None)


def available_video_decoders() -> list[str]:
    """Registered backends whose packages are installed, found without importing them (a backend listed
    here may still be unusable at run time, e.g. torchcodec without FFmpeg's shared libraries:
    :func:`get_video_decoder` says so)."""
    with _lock:
        backends = dict(_BACKENDS)
    return [name for name, b in backends.items() if all(_installed(pkg) for pkg in b.requires)]


def get_video_decoder(name: str = "pyav") -> VideoDecoder:
    """Build the decoder registered as ``name`` (importing its module now).

    Raises:
        ValueError: unknown name.
        BackendUnavailable: its package is missing or unusable here.
    """
    with _lock:
        backend = _BACKENDS.get(name)
        known = sorted(_BACKENDS)
    if backend is None:
        raise ValueError(f"unknown video decoder {name!r}; registered: {known}")
    factory = backend.factory
    if isinstance(factory, str):
        module, _, attr = factory.partition(":")
        factory = getattr(importlib.import_module(module), attr)
    decoder: VideoDecoder = factory(*backend.args)  # type: ignore[operator]
    return decoder


def choose_video_decoder(name: str, device: str) -> str:
    """The decoder a preprocessor on ``device`` uses for the setting ``name``: ``auto`` is DALI (NVDEC) on CUDA
    when it is installed and usable, else PyAV; any other name must be usable here.

    Raises:
        ValueError: unknown name.
        BackendUnavailable: the named backend's package is missing or unusable here.
    """
    if name == "auto":
        if device.startswith("cuda"):
            try:
                get_video_decoder("dali")
                return "dali"
            except BackendUnavailable:
                pass
        return "pyav"
    get_video_decoder(name)  # fail now, not per request, if the backend is missing
    return name


def _installed(package: str) -> bool:
    try:
        return importlib.util.find_spec(package) is not None
    except (ImportError, ValueError):  # a parent package missing, or a broken installation
        return False
