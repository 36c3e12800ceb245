"""The family-agnostic pipeline: plan -> group -> run on device slots -> place output -> assemble.

:class:`Preprocessor` turns images and videos into a model family's features on CUDA or CPU. It knows
nothing of any family: each item's target size, frames and extra fields come from the family's pure spec
(:class:`gpu_mm.models.base.ModelSpec`), and everything else (loading, probing, the memory bound, the
feature cache, batching plain JPEGs, decoding with fallback, resize, the normalize+patchify kernel, the
output pool, assembling rows) is done here, the same way for every family, by the synchronous and the
asynchronous API alike.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, Generic, Literal, TypeVar

from .._lifecycle import Closeable
from .._workers import prestarted_executor
from ..cache import FeatureCache
from ..concurrency import SpareThreads
from ..concurrency import choose as choose_concurrency
from ..errors import InvalidRequest, ProcessorClosed, UnsupportedMedia
from ..media.sources import MediaLimits
from ..media.video import choose_video_decoder
from ..models import Family, get_family
from ..sched import reset_inherited_slice
from ..slots import Slot, SlotPool
from .calls import CallRunner
from .devices import choose_image_decoder, resolve_device
from .execute import Executor
from .folder import _model_type_from, _processor_configs, _read_json
from .memory import default_cache_bytes, default_memory_budget
from .plan import ItemPlan, Planner
from .processes import SlotProcesses, choose_workers, close_slot_process, ready_slot_process, weakly
from .routing import Router
from .types import Features, MemoryStatement, PreprocessorStatistics

F = TypeVar("F", bound=Features)


def worker_defaults(workers: str, idle_workers: bool | None,
                    device: str) -> tuple[Literal["threads", "processes"], bool]:
    """``workers`` and ``idle_workers`` resolved for ``device`` as :class:`gpu_mm.Settings` resolves them for
    ``gpu-mm serve`` and the plug-ins (one set of defaults): ``auto`` is slot processes on the CPU, threads on CUDA;
    ``None`` is idle slots on the CPU only."""
    return choose_workers(workers, device), device == "cpu" if idle_workers is None else idle_workers


class Preprocessor(Closeable, Generic[F]):
    """Images, videos (and, for the Omni families, audio) to a model family's features on CUDA or CPU.

    Each registered family has its subclass naming its spec (``config_class``) and features (``features_class``),
    e.g. :class:`gpu_mm.Qwen2VLPreprocessor` (:mod:`gpu_mm.pipeline.families`); use :meth:`from_pretrained` to get
    the right family for a model folder, :meth:`for_model` for a family name.

    Use it synchronously (``pre(images=..., videos=...)``), asynchronously
    (``await pre.preprocess(...)``, heavy work on device slots), or as an SGLang-style processor
    (``process_mm_data_async``) inside :class:`gpu_mm.AsyncMMDataProcessor`.

    Args:
        device: ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        config: the family's spec (``config_class``, e.g. :class:`gpu_mm.Qwen2VLConfig`); keyword
            overrides of its fields may be given directly.
        limits: :class:`MediaLimits` applied to every item.
        video_decoder: a registered decoder name: ``"pyav"`` (always there), ``"dali"`` (NVDEC),
            ``"dali-cpu"``, ``"pynvvideocodec"`` (NVDEC); ``"auto"``: DALI/NVDEC on CUDA when installed, else
            PyAV. An item whose codec the decoder lacks falls back to PyAV, and its report says so.
        num_slots: device slots. ``None``: :func:`gpu_mm.concurrency.choose` for the device and the cores this
            process may use (CUDA: 1, as SGLang found one GPU worker best; CPU: 1 on one core, 2 on two or
            three, as measured, cores / 2 up to 8 beyond); :attr:`concurrency` says what was chosen and why.
        memory_budget_bytes: working memory (decoded frames, intermediates and outputs) of the items
            running at once, bounded per item by what its plan states. An item that could never fit is
            refused at planning with :class:`gpu_mm.LimitExceeded`; others queue. ``None``: the default,
            :func:`default_memory_budget` (8 GiB, or half the machine's memory / a quarter of the GPU's if
            less).
        express_slots: extra slots only for cheap items (planned at most ``express_max_bytes``), so a
            cheap image never waits behind a decompression bomb or a long video (``None``: chosen with
            ``num_slots``, 1).
        express_max_bytes: what counts as cheap (default 256 MiB: a 4K JPEG plans ~160 MiB, a 67 Mpx image
            or a minute of 1080p video several GiB).
        output: ``"device"`` leaves features where they were made (finished when returned; safe to use on
            the default CUDA stream, on another stream call ``tensor.record_stream(stream)``); ``"cpu"`` copies
            them to the CPU;
            ``"pinned"`` (CUDA only) copies them asynchronously into pinned host memory on the slot's
            stream, the slot's completion event covering the copy.
        image_decoder: who decodes JPEGs. ``"auto"``: nvJPEG on CUDA, libjpeg-turbo on the CPU. ``"nvjpeg"``
            (CUDA only). ``"nvimgcodec"``: nvImageCodec, a batch per call (on CUDA its hardware JPEG engines where
            the chip has them, or nvJPEG's decoders; on the CPU its libjpeg-turbo backend on its own threads,
            the bits of ``"cpu"``). ``"cpu"``: libjpeg-turbo on the CPU, then the pixels are uploaded (on CUDA:
            the decode transformers sees, since nvJPEG upsamples 4:2:0 chroma differently from libjpeg-turbo;
            4:4:4 JPEGs decode identically; README, "The CUDA path").
        image_batch: plain JPEGs of one call decoded together, up to this many per slot job (default 32 with
            nvJPEG or nvImageCodec, which decode a list in one batched call; 1 with libjpeg-turbo, which gains
            nothing).
        output_pool: a :class:`gpu_mm.handoff.FeaturePool`; features are then written straight into a
            block leased from it (in place on the CPU; by the kernel's ``out=`` on CUDA), ready to hand to
            another process with ``features.handle``.
        cache_bytes: bytes of finished features kept by content (:class:`gpu_mm.cache.FeatureCache`, LRU);
            concurrent requests for content being computed wait for that computation. ``None``: 1 GiB, or
            1/16 of the machine's memory if less; ``0``: off. Hits share their tensors (read-only by
            contract) unless ``copy_on_hit``.
        fast_jpeg: on the CPU, decode a JPEG whose target is at most half its size at 1/2, 1/4 or 1/8 scale
            by libjpeg's DCT scaling, then resize from there (default off: the features then differ slightly
            from transformers'; the README states by how much).
        idle_workers: run the slot threads on Linux's ``SCHED_IDLE`` policy (:func:`gpu_mm.sched.set_idle_policy`):
            the caller's loop preempts them at once, and one that other processes starve goes back on the normal
            policy for a while (:class:`gpu_mm.sched.StarvationGuard`); ignored where a thread could not leave
            ``SCHED_IDLE`` again (not root). ``None`` (default): on for the CPU, off on CUDA (never measured
            there), as :class:`gpu_mm.Settings` and so ``gpu-mm serve`` and the plug-ins have it.
        workers: where the asynchronous API's slot jobs run. ``"auto"`` (default, as :class:`gpu_mm.Settings`):
            processes on the CPU (where Linux's ``memfd_create`` is), threads on CUDA. ``"threads"``: the slots'
            threads, in this process. ``"processes"`` (CPU only): each slot thread drives a child process of its own
            (started with the slot threads, at :meth:`start` or the first call; torch's threads shared out among
            them), which writes the rows into shared memory: the caller's event loop then shares its interpreter lock
            with no pixel work (measured on 2 cores, 64 concurrent 1080p JPEGs: loop lag p99 1.3-1.4 ms instead of
            2.7-3.3 ms, with ``idle_workers``), and a decoder that crashes takes down only its child (its items fail
            with :class:`gpu_mm.DecodeError`). Costs each child's memory (torch and gpu-mm imported: ~380 MiB private)
            and its start (3-4 s; :meth:`start` waits for it). The synchronous API always runs on the calling thread.
        stop_abandoned_after_s: with ``workers="processes"``, a slot job whose callers have all given up (their
            deadline passed) and that runs this many seconds longer has its process killed, which frees the slot
            (its items fail with :class:`gpu_mm.ProcessingTimeout`; the slot's next job starts a new process). A
            thread cannot be stopped, so with threads, and with ``None`` (the default), such a job keeps its slot
            until it ends.
        decode_threads: threads lent to videos being decoded, beyond their slots' own (PyAV): a video whose
            planned frames span several keyframes decodes its runs in parallel
            (:mod:`gpu_mm.pipeline.split_decode`), on threads free at its start, never waited for, within its
            planned memory; the features are the same bits. ``None``: the cores that the calls in flight and the
            running slot jobs leave, taken as the video's job starts (at most cores - 1, :attr:`concurrency`'s
            ``spare_threads``): a lone video borrows the cores of idle slots, and a burst of calls, or a machine
            whose slots are all busy, lends nothing
            (:meth:`gpu_mm.concurrency.SpareThreads.of_cores`); ``N``: at most ``N`` lent, whatever runs; ``0``:
            one thread per video.
    """

    thread_safe = True  # no shared mutable state: per-thread state lives in the slots
    config_class: ClassVar[type[Any]]
    """The family's spec: a frozen dataclass subclassing :class:`gpu_mm.models.base.ModelSpec`."""
    features_class: type[F]
    """The family's features (a :class:`Features` subclass): what the calls return."""

    def __init__(
        self,
        device: str = "auto",
        *,
        config: Any = None,
        limits: MediaLimits | None = None,
        video_decoder: str = "auto",
        num_slots: int | None = None,
        memory_budget_bytes: int | None = None,
        express_slots: int | None = None,
        express_max_bytes: int = 256 * 2**20,
        max_queued: int | None = None,
        output: Literal["device", "cpu", "pinned"] = "device",
        output_pool: Any = None,
        image_batch: int | None = None,
        cache_bytes: int | None = None,
        copy_on_hit: bool = False,
        fast_jpeg: bool = False,
        idle_workers: bool | None = None,
        image_decoder: str = "auto",
        workers: Literal["auto", "threads", "processes"] = "auto",
        stop_abandoned_after_s: float | None = None,
        decode_threads: int | None = None,
        **overrides: Any,
    ) -> None:
        device = resolve_device(device)
        workers, idle_workers = worker_defaults(workers, idle_workers, device)
        if workers == "processes" and device != "cpu":
            raise ValueError(f"workers='processes' is for the CPU path (a CUDA slot is a stream), got {device!r}")
        self.workers = workers
        if stop_abandoned_after_s is not None and not stop_abandoned_after_s >= 0:
            raise ValueError(f"stop_abandoned_after_s must be >= 0 or None, got {stop_abandoned_after_s!r}")
        self.stop_abandoned_after_s = stop_abandoned_after_s
        self.image_decoder = choose_image_decoder(image_decoder, device)
        """``"nvjpeg"``, ``"nvimgcodec"`` or ``"cpu"``: who decodes this preprocessor's JPEGs."""
        if output not in ("device", "cpu", "pinned"):
            raise ValueError(f"output must be 'device', 'cpu' or 'pinned', got {output!r}")
        if output_pool is not None and output != "device":
            raise ValueError("output_pool decides where features go: leave output='device'")
        if output_pool is not None and output_pool.device != "cpu" and not device.startswith("cuda"):
            raise ValueError(f"a {output_pool.device} output pool needs a CUDA preprocessor, got device={device!r}")
        self.output_pool = output_pool
        if output == "pinned" and not device.startswith("cuda"):
            raise ValueError("output='pinned' needs a CUDA device (pinned memory is page-locked for GPU copies)")
        self.device = device
        if config is not None and not isinstance(config, self.config_class):
            raise TypeError(f"{type(self).__name__} takes a {self.config_class.__name__}, got {type(config).__name__}")
        self.config = dataclasses.replace(config or self.config_class(), **overrides)
        self.config.validate()
        self.limits = limits or MediaLimits()
        self.video_decoder = choose_video_decoder(video_decoder, device)
        self.output = output
        chosen = choose_concurrency(device)
        slots = num_slots or chosen.slots
        express = chosen.express_slots if express_slots is None else express_slots
        if decode_threads is not None and decode_threads < 0:
            raise ValueError(f"decode_threads must be >= 0 or None, got {decode_threads!r}")
        self.concurrency = dataclasses.replace(
            chosen, slots=slots, express_slots=express,
            spare_threads=chosen.spare_threads if decode_threads is None else decode_threads,
            reason=chosen.reason if num_slots is None and express_slots is None else "set by the caller")
        """The slots this preprocessor runs (:class:`gpu_mm.concurrency.Concurrency`), with the reason."""
        if image_batch is not None and image_batch < 1:
            raise ValueError(f"image_batch must be >= 1 or None, got {image_batch!r}")
        # nvJPEG decodes a list in one batched (hardware where present) call; libjpeg-turbo gains nothing.
        self._image_batch = image_batch or (32 if self.image_decoder in ("nvjpeg", "nvimgcodec") else 1)
        if memory_budget_bytes is None:
            memory_budget_bytes = default_memory_budget(device)
        if memory_budget_bytes < 1:
            raise ValueError(f"memory_budget_bytes must be >= 1 or None, got {memory_budget_bytes!r}")
        if self.concurrency.express_slots < 0:
            raise ValueError(f"express_slots must be >= 0, got {express_slots!r}")
        self.memory_budget_bytes = memory_budget_bytes
        self._express_max_bytes = express_max_bytes
        self._max_queued = max_queued
        self._slots: SlotPool | None = None
        self._io: concurrent.futures.ThreadPoolExecutor | None = None
        self._closed = False
        self._sync_local = threading.local()
        self._sync_slots: list[Slot] = []
        """Every thread's slot for the synchronous API, so that :meth:`close` can drop their decoders."""
        if cache_bytes is None:
            cache_bytes = default_cache_bytes()
        self.cache = FeatureCache(cache_bytes, copy_on_hit=copy_on_hit)
        # Everything besides the media and the request's options that changes an item's features.
        self.fast_jpeg = fast_jpeg
        self.idle_workers = idle_workers
        self._cache_identity = (repr(self.config), self.device, self.output, self.video_decoder, fast_jpeg,
                                self.image_decoder)
        self._planner = Planner(self.config, device, self.limits, self.video_decoder, fast_jpeg, memory_budget_bytes,
                                self._image_batch, self.cache, self._cache_identity,
                                spare_threads=self.concurrency.spare_threads)
        self._executor = Executor(self.config, self.limits, self.video_decoder, self.image_decoder, output)
        self._router = Router(self.cache, self._planner)
        self._processes = SlotProcesses(
            self._executor, memory_budget_bytes=memory_budget_bytes, idle=idle_workers, cores=self.concurrency.cores,
            slots=self.concurrency.slots + self.concurrency.express_slots,
            stop_abandoned_after_s=stop_abandoned_after_s) if workers == "processes" else None
        self.spare_threads = (SpareThreads.of_cores(self.concurrency.cores) if decode_threads is None
                              else SpareThreads(decode_threads))
        """The threads lent to videos' keyframe runs (``capacity``: the most at once; ``lent`` now)."""
        self._calls = CallRunner(self._planner, self._router, self._executor, self._processes,
                                 output_pool=output_pool, features_class=self.features_class,
                                 spare=self.spare_threads)

    @classmethod
    def for_model(cls, model: str | os.PathLike[str], *, device: str = "auto", **kwargs: Any) -> Any:
        """A local model folder (:meth:`from_pretrained`), or a family name / transformers ``model_type``
        (``qwen2_vl``, ``qwen3_vl_moe`` ...) with that family's default config."""
        if Path(model).is_dir():
            return cls.from_pretrained(model, device=device, **kwargs)
        return preprocessor_class(str(model))(device, **kwargs)

    @classmethod
    def from_pretrained(cls, model_dir: str | os.PathLike[str], *, device: str = "auto", **kwargs: Any) -> Any:
        """The preprocessor of the model in ``model_dir`` (a local folder; nothing is downloaded).

        The family comes from ``config.json``'s ``model_type`` (or, without one, from the processor class
        its processor configs name); its spec from ``preprocessor_config.json`` and
        ``video_preprocessor_config.json`` (as published models ship them) or from ``processor_config.json``'s
        ``image_processor`` / ``video_processor`` (as transformers 5 saves a processor). Called on a
        family's class, the folder must be of that family.
        ``kwargs`` go to the preprocessor (``limits``, ``num_slots``, ``cache_bytes``...).

        Raises:
            FileNotFoundError: the folder holds no image processor config.
            KeyError: the folder's model type is not a registered family.
        """
        folder = Path(model_dir)
        model_config = _read_json(folder / "config.json") or {}
        needs_configs = True  # a family that reads config.json alone (internvl_chat) may lack processor configs
        if isinstance(model_config.get("model_type"), str):
            with contextlib.suppress(KeyError):
                needs_configs = preprocessor_class(model_config["model_type"]).config_class.needs_processor_config
        image, video = _processor_configs(folder, required=needs_configs)
        model_type = model_config.get("model_type") or _model_type_from(image, video)
        family = preprocessor_class(model_type)
        if cls is not Preprocessor and not issubclass(family, cls):
            raise ValueError(f"{folder} holds a {model_type!r} model, not one of {cls.__name__}'s family")
        config = family.config_class.from_model_folder(model_type, image, video, model_config)
        return family(device, config=config, **kwargs)

    # ------------------------------------------------------------------ sync API

    def __call__(
        self,
        images: Sequence[Any] | Any | None = None,
        videos: Sequence[Any] | Any | None = None,
        audios: Sequence[Any] | Any | None = None,
        *,
        spec: Any = None,
        **request: Any,
    ) -> F:
        """Preprocess on the calling thread (scripts, tests); returns the family's features.

        ``audios``: encoded audio (any container FFmpeg reads), for families that take it (``config.modalities``).
        ``spec``: settings for this call only, a spec of this preprocessor's family (``config_class``), e.g. another
        pixel bound or output dtype; the slots, memory budget and cache stay this preprocessor's (cache entries are
        kept apart by spec). Per-request options as keywords or ``options=RequestOptions(...)``: the
        :class:`gpu_mm.RequestOptions` fields the family reads (``config.options``); others raise
        :class:`gpu_mm.InvalidRequest`."""
        if self._closed:
            raise ProcessorClosed(f"{type(self).__name__} is closed")
        calls = self._calls.for_spec(self._call_spec(spec))
        return calls.run(self._sync_slot(), images, videos, request, audios)  # type: ignore[no-any-return]

    def _call_spec(self, spec: Any) -> Any:
        """A call's own spec, checked: of this family, valid."""
        if spec is None:
            return None
        if type(spec) is not self.config_class:
            raise InvalidRequest("spec", f"this {self.config.family} preprocessor takes a {self.config_class.__name__},"
                                         f" got {type(spec).__name__}")
        try:
            spec.validate()
        except ValueError as exc:
            raise InvalidRequest("spec", str(exc)) from None
        return spec

    def plan(
        self,
        images: Sequence[Any] | Any | None = None,
        videos: Sequence[Any] | Any | None = None,
        audios: Sequence[Any] | Any | None = None,
        **request: Any,
    ) -> list[ItemPlan]:
        """Each item's plan (frames, target size, grid, working-memory bound), from its header alone: nothing is
        decoded. Loading, limits and options are checked as a call checks them, with the same errors."""
        return [item.plan for item in self._planner.plan_all(images, videos, request, audios)]

    def __getstate__(self) -> dict[str, Any]:
        # A copy (deepcopy, pickle) gets its own threads, slots and per-thread decoders, never these.
        state = self.__dict__.copy()
        state.update(_slots=None, _io=None, _sync_slots=[])
        state.pop("_sync_local", None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._sync_local = threading.local()

    def _sync_slot(self) -> Slot:
        """The calling thread's own slot for the synchronous API, kept between calls so that its decoders
        (a DALI pipeline, an NVDEC session) are built once per thread, not per call."""
        slot = getattr(self._sync_local, "slot", None)
        if slot is None:
            slot = self._sync_local.slot = Slot(-1, self.device)
            with _lock:
                self._sync_slots.append(slot)
        return slot

    # ------------------------------------------------------------------ async API

    def start_soon(self) -> None:
        """Start the slot and IO threads, and with ``workers="processes"`` the slots' processes, now, in the
        background, without waiting for them: what a caller with no event loop at hand (an engine's processor,
        built in its constructor) does so that its first request does not wait seconds for the slot processes (2
        cores: a first request 5.2 s without it, 25 ms once they are up). :meth:`start` waits until they are ready."""
        if self._closed:
            raise ProcessorClosed(f"{type(self).__name__} is closed")
        self._pools()

    async def start(self) -> None:
        """Start the slot and IO threads now rather than at the first call, and with ``workers="processes"`` wait
        until every slot's process has built its preprocessor (seconds: each imports torch), so that no request
        waits for that. A server calls it before it accepts requests (``gpu-mm serve`` does)."""
        if self._closed:
            raise ProcessorClosed(f"{type(self).__name__} is closed")
        slots = self._pools()
        if self.workers == "processes":
            await asyncio.gather(*(asyncio.wrap_future(f) for f in slots.on_each_slot(ready_slot_process)))

    def _pools(self) -> SlotPool:
        """The slot pool and IO threads, made (and their threads started) at the first call: not one thread at a
        time inside a burst of requests."""
        if self._io is None:
            self._io = prestarted_executor(self.concurrency.io_threads, "gpu-mm-io", reset_inherited_slice)
        if self._slots is None:
            self._slots = SlotPool(
                self.concurrency.slots,
                device=self.device,
                memory_budget_bytes=self.memory_budget_bytes,
                express_slots=self.concurrency.express_slots,
                express_max_bytes=self._express_max_bytes,
                max_queued=self._max_queued,
                idle_workers=self.idle_workers,
                slot_start=None if self._processes is None else weakly(self._processes.start),
                slot_exit=close_slot_process,
            )
            self._slots.prestart()
        return self._slots

    async def preprocess(
        self,
        images: Sequence[Any] | Any | None = None,
        videos: Sequence[Any] | Any | None = None,
        audios: Sequence[Any] | Any | None = None,
        *,
        deadline: float | None = None,
        spec: Any = None,
        **request: Any,
    ) -> F:
        """Like ``__call__`` but async: planning on IO threads, pixel work on device slots.

        ``deadline`` is a ``time.monotonic()`` instant; past it :class:`gpu_mm.ProcessingTimeout` is
        raised and any running item keeps its slot until it ends. ``spec``: as for ``__call__``.
        """
        if self._closed:
            raise ProcessorClosed(f"{type(self).__name__} is closed")
        slots = self._pools()
        assert self._io is not None
        calls = self._calls.for_spec(self._call_spec(spec))
        return await calls.run_async(  # type: ignore[no-any-return]
            slots, self._io, images, videos, request, deadline, audios)

    async def process_mm_data_async(
        self,
        image_data: Any = None,
        audio_data: Any = None,
        input_text: Any = None,
        request_obj: Any = None,
        **kwargs: Any,
    ) -> dict[str, Any]:
        """SGLang's processor contract: features for the request's images, videos and audio as a dict.

        Videos come from ``kwargs["video_data"]`` or ``request_obj.video_data``. Audio is refused by families that
        take none (:class:`gpu_mm.UnsupportedMedia`).
        """
        if audio_data and "audio" not in self.config.modalities:
            raise UnsupportedMedia("audio", f"the {self.config.family} family takes no audio")
        videos = kwargs.pop("video_data", None)
        if videos is None and request_obj is not None:
            videos = getattr(request_obj, "video_data", None)
        feats = await self.preprocess(images=image_data or None, videos=videos or None, audios=audio_data or None,
                                      **kwargs)
        return feats.processor_output(input_text)

    def statistics(self) -> PreprocessorStatistics:
        """Return a snapshot of the slots, the feature cache, the computations in flight and the memory held."""
        processes = {} if self._processes is None else self._processes.counts()
        slots = None if self._slots is None else self._slots.statistics()
        cache = self.cache.statistics()
        return PreprocessorStatistics(
            device=self.device, memory_budget_bytes=self.memory_budget_bytes, slots=slots,
            cache=cache, computations_in_flight=len(self._router.inflight),
            concurrency=self.concurrency, workers=self.workers, memory=self.memory_statement(slots, cache),
            decode_threads_lent=self.spare_threads.lent, **processes,
        )

    def memory_statement(self, slots: Any = None, cache: Any = None) -> MemoryStatement:
        """What this preprocessor may hold and holds now (:class:`MemoryStatement`)."""
        slots = slots if slots is not None else (None if self._slots is None else self._slots.statistics())
        cache = cache if cache is not None else self.cache.statistics()
        return MemoryStatement(
            device=self.device, budget_bytes=self.memory_budget_bytes + cache.max_bytes,
            working_budget_bytes=self.memory_budget_bytes,
            working_bytes=0 if slots is None else slots.bytes_in_flight,
            cache_max_bytes=cache.max_bytes, cache_bytes=cache.bytes,
            cache_device=self.device if self.output == "device" else "cpu")

    def close(self) -> None:
        """Refuse new calls and let the slot and IO threads exit once their current work ends (no wait). What this
        preprocessor holds goes with them: the feature cache is emptied now, each slot's decoders (DALI pipelines,
        NVDEC sessions) and process go as its thread exits, the synchronous API's decoders now (a call still
        running keeps its own until it returns)."""
        self._closed = True
        self._drop_held()
        if self._slots is not None:
            self._slots.close()
        if self._io is not None:
            self._io.shutdown(wait=False)

    shutdown = close

    def _drop_held(self) -> None:
        """What a closed preprocessor lets go at once: its cache and the synchronous API's decoders (a call still
        running keeps its own until it returns; the slots' threads drop theirs as they exit)."""
        self.cache.clear()
        for slot in list(self._sync_slots):
            slot.state.clear()

    async def aclose(self) -> None:
        """:meth:`close`, then wait for running work (abandoned work included) to end (the slots' threads drop
        their decoders and processes as they exit)."""
        self._closed = True
        self._drop_held()
        if self._slots is not None:
            await self._slots.aclose()  # the slot threads close their processes as they exit
        if self._io is not None:
            await asyncio.to_thread(self._io.shutdown, True)
        if self._processes is not None:
            self._processes.close()


_made: dict[str, type[Preprocessor[Any]]] = {}
_lock = threading.Lock()


def preprocessor_class(name: str) -> type[Preprocessor[Any]]:
    """The preprocessor class of a family name, ``model_type`` or processor class name (``qwen2_5_vl``,
    ``Qwen3VLProcessor``).

    Raises:
        KeyError: no family has that name; the message lists the known ones.
    """
    return _class_of(get_family(name))


def _class_of(family: Family) -> type[Preprocessor[Any]]:
    with _lock:
        cls = _made.get(family.preprocessor_name)
        if cls is None:
            cls = type(family.preprocessor_name, (Preprocessor,), {
                "__module__": "gpu_mm.pipeline.families", "__qualname__": family.preprocessor_name,
                "__doc__": f"Images and videos to {family.name} features on CUDA or CPU (arguments as "
                           f":class:`gpu_mm.Preprocessor`; ``config`` is a :class:`{family.config_class.__name__}`).",
                "config_class": family.config_class, "features_class": family.features_class,
            })
            _made[family.preprocessor_name] = cls
        return cls
