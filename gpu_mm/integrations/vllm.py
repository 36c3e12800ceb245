"""vLLM plug-in: gpu-mm as vLLM's video loader and as the pixel work of its Qwen-VL processors.

Two parts, each off unless the operator asks for it (``GPU_MM_VLLM``: ``1``/``all``, or ``loader``,
``processors``, comma-separated; unset, empty or ``0``: nothing is registered):

* **loader**: vLLM asks the video loader registered for the model's video processor class (not
  ``VLLM_VIDEO_LOADER_BACKEND``) to turn a request's video bytes into sampled frames. gpu-mm registers its
  loader for ``Qwen2VLVideoProcessor`` (Qwen2-VL, Qwen2.5-VL), ``Qwen3VLVideoProcessor`` (Qwen3-VL,
  Qwen3-VL-MoE) and the InternVL and GLM video processors (for which vLLM uses its default loader): it probes the
  container (frames counted from packets, gpu-mm's :class:`MediaLimits`), samples with gpu-mm's arithmetic for
  the loader it replaces (the rule vLLM's own Qwen loaders port from transformers: ``fps`` 2 capped at 30,
  ``min_frames`` 4, ``max_frames`` at most 768, ``temporal_patch_size`` 2; vLLM's default loader's ``num_frames``
  (32) evenly spread; all overridable with ``--media-io-kwargs``), decodes only those frames (PyAV, or DALI/NVDEC
  on CUDA, copied to host memory as vLLM's own GPU loader does; PyAV decodes a clip's keyframe runs at once on
  cores no other load in flight uses, ``decode_threads``) and returns them with the metadata vLLM's loaders return.
  Loads run on the plug-in's own threads behind an admission bound: at most ``max_concurrent_calls``
  decoding and ``memory_budget_bytes`` of loads in flight (decoded frames and decoders' state),
  ``max_queued`` waiting; beyond that :class:`VLLMOverloaded` (HTTP 503) at once; past ``timeout_s``
  :class:`VLLMTimeout` (HTTP 504), the abandoned decode keeping its place and bytes until it really ends. Bad
  media, and a video whose load alone exceeds the budget, raise gpu-mm's typed :class:`gpu_mm.MediaError` (a
  ``ValueError``: HTTP 400).
* **processors**: vLLM's Qwen2-VL, Qwen2.5-VL, Qwen3-VL, Qwen3-VL-MoE, GLM-4.1V / 4.5V, InternVL (-hf, served by
  vLLM's InternS1 class) and Gemma 3 multimodal processors, re-registered with a processing-info class whose
  transformers processor carries gpu-mm's drop-ins (:mod:`gpu_mm.integrations.hf`), and InternVL's original
  checkpoints (``InternVLChatModel``: vLLM's own processor classes, :mod:`gpu_mm.integrations.vllm_internvl`), and
  the Qwen2.5-Omni / Qwen3-Omni thinkers (their images and videos, and their audio through the Whisper feature
  extractor drop-in):
  resize, rescale, normalize and patchify (tiles, crops) by gpu-mm, in both of vLLM's modes
  (``mm_device_do_normalize`` on, the default: uint8 pixels; off: float pixels). Everything else (prompt
  expansion, placeholders, M-RoPE, caching, IPC) stays vLLM's.

vLLM calls the ``vllm.general_plugins`` entry point ``gpu_mm`` (the top-level ``gpu_mm_vllm_entry`` module, which
imports this one only when ``GPU_MM_VLLM`` asks) in each of its processes; in a process that builds vLLM objects
itself, call :func:`register`.
Settings: :class:`gpu_mm.integrations.sglang.PluginSettings` (``GPU_MM_*``), shared with the SGLang plug-in.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import logging
import math
import os
import threading
import time
from http import HTTPStatus
from typing import Any, ClassVar

import numpy as np
from vllm.exceptions import GracefulHTTPError
from vllm.multimodal.video import VIDEO_LOADER_REGISTRY, VideoLoader

from .. import ops
from ..concurrency import SpareThreads, usable_cores
from ..errors import InvalidRequest, LimitExceeded, MediaError, Overloaded, ProcessingTimeout
from ..media.sources import MediaLimits, load_source
from ..media.video import PyAVDecoder, choose_video_decoder, get_video_decoder, probe_video, rotate_frames
from ..media.video.runs import runs_for, split_starts
from ..models import qwen3_vl
from ..options import _integer, _number
from ..pipeline import default_memory_budget, resolve_device
from ..pipeline.memory import DECODER_STATE_PER_PIXEL, SPLIT_MAX_DECODERS
from ._settings import PluginSettings
from .service import use_service

__all__ = [
    "ENABLE_VARIABLE",
    "LOADERS",
    "MODELS",
    "GpuMMQwen2VLVideoLoader",
    "GpuMMQwen3VLVideoLoader",
    "VLLMOverloaded",
    "VLLMTimeout",
    "adopt_drop_ins",
    "enabled_parts",
    "register",
    "sample_indices",
    "sampling_options",
]

_log = logging.getLogger(__name__)
_lock = threading.RLock()
ENABLE_VARIABLE = "GPU_MM_VLLM"
PARTS = ("loader", "processors")


class VLLMOverloaded(Overloaded, GracefulHTTPError):
    """gpu-mm's :class:`~gpu_mm.Overloaded` that vLLM's front end answers with HTTP 503."""

    def __init__(self, message: str) -> None:
        Overloaded.__init__(self, message)
        self.message, self.http_status = message, HTTPStatus.SERVICE_UNAVAILABLE


class VLLMTimeout(ProcessingTimeout, GracefulHTTPError):
    """gpu-mm's :class:`~gpu_mm.ProcessingTimeout` that vLLM's front end answers with HTTP 504."""

    def __init__(self, message: str) -> None:
        ProcessingTimeout.__init__(self, message)
        self.message, self.http_status = message, HTTPStatus.GATEWAY_TIMEOUT


OFF = ("", "0", "false", "off", "no")
"""Values of ``GPU_MM_VLLM`` (lower-cased, stripped) that ask for nothing. The entry point
(``gpu_mm_vllm_entry.OFF``) holds the same values without importing gpu_mm; a test keeps the two equal."""


def enabled_parts(environ: Any = None) -> frozenset[str]:
    """What ``GPU_MM_VLLM`` asks for: a subset of ``{"loader", "processors"}``.

    Raises:
        ValueError: a word that is none of ``1``, ``all``, ``loader``, ``processors`` (or ``0``/empty alone).
    """
    raw = (os.environ if environ is None else environ).get(ENABLE_VARIABLE, "").strip().lower()
    if raw in OFF:
        return frozenset()
    if raw in ("1", "all", "true", "on", "yes"):
        return frozenset(PARTS)
    words = {w.strip() for w in raw.split(",") if w.strip()}
    unknown = words - set(PARTS)
    if unknown:
        raise ValueError(f"{ENABLE_VARIABLE}={raw!r}: unknown part(s) {sorted(unknown)}; "
                         f"use 1, all, or a comma list of {list(PARTS)}")
    return frozenset(words)


# ------------------------------------------------------------------------------------------- the loader

_MAX_FRAMES, _MAX_FPS = 768, 30
"""vLLM's own Qwen loaders' caps on ``max_frames`` and ``fps`` (``Qwen2VLVideoBackend``, ``Qwen3VLVideoBackend``)."""
_SAMPLING_BOUNDS = {"min_frames": _MAX_FRAMES, "max_frames": 1 << 20, "temporal_patch_size": 16}
"""The integer sampling settings the loader takes besides ``fps``, with the largest value it accepts (larger
``max_frames`` are capped at 768 later, as vLLM caps them)."""
_VLLM_CODEC_KWARGS = frozenset({"backend", "num_ffmpeg_threads", "seek_mode", "device", "hw_decoders", "max_width",
                                "max_height", "pool_size", "timeout_sec"})
"""vLLM's own codec options (``--media-io-kwargs``): they choose vLLM's decoders, which gpu-mm replaces."""


def sample_indices(family: str, total: int, video_fps: float, *, fps: float = 2, min_frames: int = 4,
                   max_frames: int = _MAX_FRAMES, temporal_patch_size: int = 2, num_frames: int = -1) -> list[int]:
    """The frames vLLM's own loader for ``family`` samples, by gpu-mm's arithmetic: for ``qwen2_vl`` /
    ``qwen3_vl``, transformers' ``sample_frames`` in fps mode, with vLLM's caps (fps at most 30, ``max_frames`` at
    most 768) and, for Qwen2-VL, vLLM's clamp of a float32 step past the last frame; for ``uniform`` (vLLM's default
    loader, the other families' video), ``num_frames`` (``-1``: all) spread evenly, fewer where ``fps`` (``<= 0``:
    off) over the clip's duration gives fewer (``VideoBackend.compute_frames_index_to_sample``)."""
    if family == "uniform":
        n = min(num_frames, total) if num_frames > 0 else total
        if fps > 0:
            n = min(n, math.floor((total / video_fps if video_fps > 0 else 0.0) * fps))
        n = max(1, n)
        return list(range(n)) if n == total else [int(i) for i in np.linspace(0, total - 1, n, dtype=int)]
    fps, max_frames = min(fps, _MAX_FPS), min(max_frames, _MAX_FRAMES)
    if family == "qwen3_vl":
        n = qwen3_vl.nframes(total, video_fps, fps=fps, min_frames=min_frames, max_frames=max_frames)
        return qwen3_vl.sample_indices(0, total - 1, n)
    n_hf = ops.nframes_hf(total, video_fps, fps=fps, min_frames=min_frames, max_frames=max_frames,
                          temporal_patch_size=temporal_patch_size)
    return [min(i, total - 1) for i in ops.sample_indices_hf(total, n_hf)]


@dataclasses.dataclass(frozen=True)
class _Plan:
    src: Any
    info: Any
    indices: list[int]
    runs: tuple[int, ...] = (0,)
    """Where its keyframe runs begin in ``indices`` when PyAV decodes them at once (a decoder each)."""

    @property
    def decoders(self) -> int:
        return len(self.runs)

    @property
    def nbytes(self) -> int:
        """What a load holds while it runs: the decoded frames (uint8 RGB), which it hands to vLLM, and the state of
        each of its decoders (a GPU decoder's falls back to PyAV's on the host)."""
        pixels = self.info.width * self.info.height
        return (len(self.indices) * 3 + self.decoders * DECODER_STATE_PER_PIXEL) * pixels


def sampling_options(values: dict[str, Any]) -> dict[str, Any]:
    """The sampling settings of a load (``--media-io-kwargs``, or a request's own ``media_io_kwargs``), checked:
    hostile values are a :class:`gpu_mm.InvalidRequest` (HTTP 400), never an arithmetic error."""
    # Above vLLM's caps (fps 30, 768 frames) values are capped, as vLLM's own loaders cap them.
    out: dict[str, Any] = {}
    if (fps := _number(values, "fps", lo=0.0, hi=1000.0, open_lo=True)) is not None:
        out["fps"] = fps
    for name, hi in _SAMPLING_BOUNDS.items():
        if (value := _integer(values, name, lo=1, hi=hi)) is not None:
            out[name] = value
    return out


class _Loads:
    """The loader's bounded work. A load is planned in its caller's thread (probe and sampling: no pixels),
    then admitted: at most ``workers`` decoding at once and at most ``budget`` bytes of loads (frames and
    decoders' state, :attr:`_Plan.nbytes`) in flight, up to ``queued`` loads waiting for that; a load past both
    is refused at once, and one that alone exceeds the budget is refused as a limit. Each load's deadline covers
    its wait and its decode; a load that times out leaves its decode running, its place and bytes held until the
    decode ends (so the bounds count the work really running). Frames already handed to vLLM are vLLM's to account
    for."""

    def __init__(self, settings: PluginSettings) -> None:
        self.settings = settings
        self.workers = settings.max_concurrent_calls or min(8, os.cpu_count() or 1)
        self.queued = settings.max_queued if settings.max_queued is not None else 4 * self.workers
        self.device = resolve_device(settings.device)
        self.decoder = choose_video_decoder(settings.video_decoder, self.device)
        self.limits = MediaLimits.for_network()
        # Decoded frames end in host memory (a GPU decoder's are copied out), so the host's budget applies.
        self.budget = settings.memory_budget_bytes or default_memory_budget("cpu")
        self._pool = concurrent.futures.ThreadPoolExecutor(self.workers, thread_name_prefix="gpu-mm-vllm-video")
        # A PyAV load decodes its keyframe runs at once on threads lent from the cores the loads in flight leave.
        lend = settings.decode_threads
        self.spare = SpareThreads.of_cores(usable_cores()) if lend is None else SpareThreads(lend)
        self._cond = threading.Condition()
        self.running = 0
        self.waiting = 0
        self.bytes = 0

    def plan(self, family: str, data: bytes, options: dict[str, Any]) -> _Plan:
        src = load_source(data, "video", self.limits)
        info = probe_video(src, self.limits)
        try:
            indices = sample_indices(family, info.num_frames, info.fps, **options)
        except ValueError as exc:  # too few frames for the rule (vLLM's own loader fails on them too)
            raise LimitExceeded(src.item, f"cannot sample frames: {exc}") from None
        runs: tuple[int, ...] = (0,)
        if self.decoder == "pyav" and self.spare.capacity:
            runs = tuple(split_starts(info, indices, min(1 + self.spare.capacity, SPLIT_MAX_DECODERS), 1))
        plan = _Plan(src, info, indices, runs)
        if plan.nbytes > self.budget:
            raise LimitExceeded(src.item, f"{len(indices)} frames of {info.width}x{info.height} need "
                                          f"{plan.nbytes / 2**20:.0f} MiB to decode, over the loader's budget of "
                                          f"{self.budget / 2**20:.0f} MiB (GPU_MM_MEMORY_BUDGET_MB)")
        return plan

    def _fits(self, nbytes: int) -> bool:
        return self.running < self.workers and self.bytes + nbytes <= self.budget

    def _release(self, nbytes: int) -> None:
        with self._cond:
            self.running -= 1
            self.bytes -= nbytes
            self._cond.notify_all()

    def load(self, family: str, data: bytes, options: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        with self.spare.call():  # in flight from now: a burst of loads lends no core to the first one's runs
            return self._load(family, data, options)

    def _load(self, family: str, data: bytes, options: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        timeout = self.settings.timeout_s
        deadline = None if timeout is None else time.monotonic() + timeout
        plan = self.plan(family, data, options)
        item, nbytes = plan.src.item, plan.nbytes
        with self._cond:
            if not self._fits(nbytes):
                if self.waiting >= self.queued:
                    raise VLLMOverloaded(f"{item}: gpu-mm video loads are at their bound ({self.running} decoding, "
                                         f"{self.waiting} waiting, {self.bytes / 2**20:.0f} MiB in flight); "
                                         "retry later")
                self.waiting += 1
                try:
                    while not self._fits(nbytes):
                        left = None if deadline is None else deadline - time.monotonic()
                        if left is not None and left <= 0:
                            raise VLLMTimeout(f"{item}: not loaded within {timeout} s (waited for a decoder)")
                        self._cond.wait(left)
                finally:
                    self.waiting -= 1
            self.running += 1
            self.bytes += nbytes
        try:
            future = self._pool.submit(self.decode, plan)
        except BaseException:
            self._release(nbytes)
            raise
        future.add_done_callback(lambda _: self._release(nbytes))
        try:
            return future.result(timeout=None if deadline is None else max(0.0, deadline - time.monotonic()))
        except concurrent.futures.TimeoutError:
            raise VLLMTimeout(f"{item}: not loaded within {timeout} s (decoding; it ends on its own)") from None

    def close(self) -> None:
        """Let its threads end once their decodes have (a replaced loader's work finishes; new loads go to the
        new one)."""
        self._pool.shutdown(wait=False)

    def decode(self, plan: _Plan) -> tuple[Any, dict[str, Any]]:
        src, info, indices = plan.src, plan.info, plan.indices
        try:
            with self.spare.job():  # a running load: its core is not lent to another's runs
                if plan.decoders > 1:
                    frames = self._decode_runs(plan)
                else:
                    frames = get_video_decoder(self.decoder).get_frames_at(src, info, indices)
            backend = self.decoder
        except MediaError:
            if self.decoder == "pyav":
                raise
            frames, backend = get_video_decoder("pyav").get_frames_at(src, info, indices), "pyav"
        frames = rotate_frames(frames, info.rotation).cpu().contiguous()
        meta = {"total_num_frames": info.num_frames, "fps": info.fps, "duration": info.num_frames / info.fps,
                "video_backend": f"gpu_mm:{backend}", "frames_indices": indices,
                "do_sample_frames": len(indices) == info.num_frames}
        return frames.numpy(), meta

    def _decode_runs(self, plan: _Plan) -> Any:
        """PyAV's frames for a plan, its keyframe runs decoded at once on the threads free now (its planned runs
        when there is one for each, else fewer)."""
        lent = self.spare.take(plan.decoders - 1)
        try:
            starts = runs_for(plan.runs, plan.info, plan.indices, 1 + lent, 1)
            self.spare.give(lent - (len(starts) - 1))  # what the runs cannot use goes back at once
            lent = len(starts) - 1
            return PyAVDecoder().get_frames_in_runs(plan.src, plan.info, plan.indices, starts)
        finally:
            self.spare.give(lent)


_current: _Loads | None = None


def _loads() -> _Loads:
    """The loader's work in this process, built on first use from the settings in force."""
    global _current
    with _lock:
        if _current is None:
            _current = _Loads(_settings())
        return _current


class _GpuMMVideoLoader(VideoLoader):
    family: ClassVar[str]

    @classmethod
    def load_bytes(cls, data: bytes, num_frames: int = -1, fps: float = 2, max_duration: float = 300,
                   frame_recovery: bool = False, **kwargs: Any) -> tuple[Any, dict[str, Any]]:
        """vLLM's loader call: ``num_frames``, ``max_duration`` and ``frame_recovery`` are ignored, as by vLLM's
        own Qwen loaders (fps-driven; gpu-mm's limits bound the clip)."""
        unknown = set(kwargs) - _SAMPLING_BOUNDS.keys() - _VLLM_CODEC_KWARGS
        if unknown:
            raise InvalidRequest("media_io_kwargs", f"gpu-mm's video loader does not take {sorted(unknown)}")
        return _loads().load(cls.family, data, sampling_options({"fps": fps, **kwargs}))


class GpuMMQwen2VLVideoLoader(_GpuMMVideoLoader):
    """gpu-mm's loader for ``Qwen2VLVideoProcessor`` (Qwen2-VL, Qwen2.5-VL)."""

    family = "qwen2_vl"


class GpuMMQwen3VLVideoLoader(_GpuMMVideoLoader):
    """gpu-mm's loader for ``Qwen3VLVideoProcessor`` (Qwen3-VL, Qwen3-VL-MoE)."""

    family = "qwen3_vl"


class GpuMMUniformVideoLoader(_GpuMMVideoLoader):
    """gpu-mm's loader where vLLM uses its default one (InternVL's and GLM's video processors): ``num_frames``
    (vLLM's default 32) spread evenly over the clip, or fewer by ``fps``, as vLLM's ``VideoBackend`` samples."""

    family = "uniform"

    @classmethod
    def load_bytes(cls, data: bytes, num_frames: int = -1, fps: float = -1, max_duration: float = 300,
                   frame_recovery: bool = False, **kwargs: Any) -> tuple[Any, dict[str, Any]]:
        unknown = set(kwargs) - _VLLM_CODEC_KWARGS
        if unknown:
            raise InvalidRequest("media_io_kwargs", f"gpu-mm's video loader does not take {sorted(unknown)}")
        if not isinstance(num_frames, int) or isinstance(num_frames, bool) or not (num_frames == -1 or
                                                                                    0 < num_frames <= 1 << 20):
            raise InvalidRequest("num_frames", f"must be -1 or a positive integer, got {num_frames!r}")
        options: dict[str, Any] = {"num_frames": num_frames, "fps": -1.0}  # vLLM's -1: no rate limit
        if isinstance(fps, (int, float)) and fps > 0:
            options.update(sampling_options({"fps": fps}))
        return _loads().load(cls.family, data, options)


LOADERS: dict[str, tuple[type[_GpuMMVideoLoader], tuple[str, ...]]] = {
    "gpu_mm_qwen2_vl": (GpuMMQwen2VLVideoLoader, ("Qwen2VLVideoProcessor",)),
    "gpu_mm_qwen3_vl": (GpuMMQwen3VLVideoLoader, ("Qwen3VLVideoProcessor",)),
    "gpu_mm_uniform": (GpuMMUniformVideoLoader, ("InternVLVideoProcessor", "Glm4vVideoProcessor",
                                                 "Glm46VVideoProcessor")),
}
"""Registered name -> (loader, the transformers video processor classes it serves)."""


# ----------------------------------------------------------------------------------------- the processors

MODELS: dict[str, tuple[str, ...]] = {
    "vllm.model_executor.models.qwen2_vl": ("Qwen2VLForConditionalGeneration",),
    "vllm.model_executor.models.qwen2_5_vl": ("Qwen2_5_VLForConditionalGeneration",),
    "vllm.model_executor.models.qwen3_vl": ("Qwen3VLForConditionalGeneration",),
    "vllm.model_executor.models.qwen3_vl_moe": ("Qwen3VLMoeForConditionalGeneration",),
    "vllm.model_executor.models.glm4_1v": ("Glm4vForConditionalGeneration", "Glm4vMoeForConditionalGeneration"),
    # vLLM serves InternVL's -hf checkpoints (architecture InternVLForConditionalGeneration) with this class.
    "vllm.model_executor.models.interns1": ("InternS1ForConditionalGeneration",),
    "vllm.model_executor.models.gemma3_mm": ("Gemma3ForConditionalGeneration",),
    # InternVL's original checkpoints (internvl_chat): vLLM's own processor classes, no transformers one.
    "vllm.model_executor.models.internvl": ("InternVLChatModel",),
    # The Omni thinkers: the Qwen2-VL image and video drop-ins and the Whisper feature extractor drop-in (audio).
    "vllm.model_executor.models.qwen2_5_omni_thinker": ("Qwen2_5OmniThinkerForConditionalGeneration",),
    "vllm.model_executor.models.qwen3_omni_moe_thinker": ("Qwen3OmniMoeThinkerForConditionalGeneration",),
}
"""vLLM model modules -> the model classes whose multimodal processor gets gpu-mm's pixel work."""

def adopt_drop_ins(processor: Any) -> Any:
    """:func:`gpu_mm.integrations.hf.adopt_drop_ins` with vLLM's own InternVL classes too
    (:mod:`gpu_mm.integrations.vllm_internvl`). Checked on every call: vLLM may put a (cached) stock component
    back on a cached processor (its InternVL path does so for the video processor). Returns ``processor``."""
    from . import hf, vllm_internvl

    return hf.adopt_drop_ins(processor, dict.fromkeys(vllm_internvl.SWAPS, vllm_internvl.adopt))


@functools.lru_cache(maxsize=None)
def _with_drop_ins(info_cls: type) -> type:
    """``info_cls`` (a vLLM ``BaseProcessingInfo``) whose transformers processor carries gpu-mm's drop-ins."""

    class WithDropIns(info_cls):  # type: ignore[valid-type,misc]  # a vLLM class known at run time
        gpu_mm = True

        def get_hf_processor(self, **kwargs: Any) -> Any:
            return adopt_drop_ins(super().get_hf_processor(**kwargs))

    WithDropIns.__name__ = WithDropIns.__qualname__ = f"GpuMM{info_cls.__name__}"
    return WithDropIns


def _register_processors() -> list[str]:
    import importlib

    from vllm.multimodal import MULTIMODAL_REGISTRY

    done = []
    registry_log = logging.getLogger("vllm.multimodal.registry")
    level = registry_log.level
    registry_log.setLevel(logging.ERROR)  # its "already registered ... overwritten" warning: meant, said once below
    try:
        for module, names in MODELS.items():
            mod = importlib.import_module(module)
            for name in names:
                model_cls = getattr(mod, name)
                factories = model_cls.__dict__["_processor_factory"]
                if not getattr(factories.info, "gpu_mm", False):
                    MULTIMODAL_REGISTRY.register_processor(
                        factories.processor, info=_with_drop_ins(factories.info),
                        dummy_inputs=factories.dummy_inputs)(model_cls)
                done.append(name)
    finally:
        registry_log.setLevel(level)
    _log.info("gpu-mm: the multimodal processors of %s use gpu-mm's pixel work", ", ".join(done))
    return done


# ------------------------------------------------------------------------------------------- entry point

_options: dict[str, Any] = {}


def _settings() -> PluginSettings:
    return dataclasses.replace(PluginSettings.from_env(), **_options)


def register(parts: Any = None, **options: Any) -> dict[str, list[str]]:
    """The ``vllm.general_plugins`` entry point (vLLM calls it with no arguments in each of its processes):
    register the parts ``GPU_MM_VLLM`` asks for, or ``parts`` (an iterable of ``"loader"`` /
    ``"processors"``) when given. ``options`` are :class:`PluginSettings` fields over the ``GPU_MM_*``
    variables. Safe to call again. Returns what was registered: loader names and model classes."""
    wanted = enabled_parts() if parts is None else frozenset(parts)
    if wanted - set(PARTS):
        raise ValueError(f"unknown part(s) {sorted(wanted - set(PARTS))}; use {list(PARTS)}")
    done: dict[str, list[str]] = {"loader": [], "processors": []}
    if not wanted:
        return done
    global _current
    with _lock:
        if options:
            _options.update(options)
            if _current is not None:
                _current.close()
                _current = None
        service = _settings().service  # an invalid GPU_MM_* variable or keyword fails here, at start-up
        if service is not None and "processors" in wanted:
            # vLLM hands its processors pixels it decoded itself: they go to the service in shared memory, so over
            # its Unix socket (gpu_mm.integrations.service); a drop-in of a family it does not serve stays here.
            use_service(service)
            _log.info("gpu-mm: the processors' pixel work goes to the service at %s", service)
        if "loader" in wanted:
            loads = _loads()  # a decoder that is not usable fails at start-up, not per request
            for name, (loader, processors) in LOADERS.items():
                VIDEO_LOADER_REGISTRY.register(name, video_processor=processors)(loader)
                done["loader"].append(name)
            _log.info("gpu-mm: video loader for Qwen2-VL, Qwen3-VL, InternVL and GLM video processors (%s on %s, "
                      "%d decoding, "
                      "%d queued, %d MiB of frames in flight, timeout %s s)", loads.decoder, loads.device,
                      loads.workers, loads.queued, loads.budget // 2**20, loads.settings.timeout_s)
        if "processors" in wanted:
            done["processors"] = _register_processors()
    return done
