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
import math
import os
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar, Generic, Literal, TypeVar

import torch

from .. import ops
from .._aio import await_or_abandon, wait_until
from .._lifecycle import Closeable
from .._procslots import ShmArena, SlotProcess, process_threads
from .._workers import prestarted_executor
from ..cache import Entry, FeatureCache, content_key
from ..concurrency import choose as choose_concurrency
from ..errors import (
    InvalidRequest,
    LimitExceeded,
    MediaError,
    ProcessingTimeout,
    ProcessorClosed,
    UnsupportedMedia,
)
from ..media.image import (
    ImageInfo,
    decode_image,
    decode_jpeg_cuda,
    decode_jpeg_scaled,
    decode_jpegs,
    is_plain_jpeg,
    jpeg_draft_scale,
    probe_image,
)
from ..media.sources import MediaLimits, Source, load_source
from ..media.video import (
    VideoInfo,
    choose_video_decoder,
    frames_from_array,
    get_video_decoder,
    probe_video,
    rotate_frames,
)
from ..metrics import StageTimer
from ..models.base import VideoSampling
from ..options import RequestOptions
from ..sched import reset_inherited_slice
from ..slots import Slot, SlotPool
from . import memory
from .devices import _normalize_patchify_impl, choose_image_decoder, resolve_device, same_device
from .folder import _model_type_from, _processor_configs, _read_json
from .memory import (
    _feature_bytes,
    _mib,
    default_cache_bytes,
    default_memory_budget,
    image_working_bytes,
    video_call_frames,
    video_chunk_frames,
    video_working_bytes,
)
from .types import Decoded, Features, ItemReport, PreprocessorStatistics


@dataclasses.dataclass
class _Plan:
    """Everything decided before touching pixels (pure data, no tensors except array inputs)."""

    kind: Literal["image", "video"]
    src: Source
    target: tuple[int, int]
    grid: tuple[int, int, int]
    source_size: tuple[int, int]
    indices: list[int] | None = None
    info: VideoInfo | None = None
    image_info: ImageInfo | None = None
    """An image's probe (size, format, mode), so decoding does not parse its header again."""
    sample_fps: float | None = None
    jpeg_scale: int = 1
    """Fast JPEG mode: decode at 1/``jpeg_scale`` by DCT scaling (1: full size)."""
    presize: tuple[int, int] | None = None
    """A video's first, bilinear resize before ``target`` (see :class:`VideoSampling`)."""
    nbytes: int = 0
    """Peak working memory this item may take while it runs (its bound; see :func:`video_working_bytes`)."""
    chunk: int = 0
    """Video frames resized and patchified together (a multiple of the temporal patch)."""
    call: int = 0
    """Video frames one decoder call returns (a multiple of ``chunk``): ``chunk``, except for decoders whose every
    call sets up a demuxer and a decoder again (:data:`gpu_mm.pipeline.memory.PER_CALL_DECODERS`)."""
    timer: StageTimer = dataclasses.field(default_factory=StageTimer)
    out: torch.Tensor | None = None
    """Destination rows inside a FeaturePool lease, when the preprocessor has an output pool."""
    grid_out: torch.Tensor | None = None
    """This item's ``grid_thw`` row inside that lease, written by the item's slot job."""
    video_fps: float | None = None
    key: bytes | None = None
    """The item's feature-cache key (None: cache off, or not cacheable)."""
    cached: Entry | None = None
    """The cache's entry, when this item is a hit (nothing is decoded)."""
    cache_state: Literal["hit", "miss", "coalesced"] | None = None
    flight: asyncio.Future[Any] | None = None
    """For a miss computed by this call: resolved with its result for calls that join it."""


@dataclasses.dataclass
class _Call:
    """One call, routed: each item's rows come from the cache (already in ``outs``), from a slot job (one per
    group of ``groups``, indices into ``plans``), or from another call's computation of the same content in
    flight (``followers``). The synchronous and asynchronous APIs run the same routing."""

    plans: list[_Plan]
    lease: Any
    outs: list[Any]
    groups: list[list[int]]
    followers: list[tuple[int, asyncio.Future[Any]]]

    def members(self, group: list[int]) -> list[_Plan]:
        return [self.plans[i] for i in group]

    def fill(self, group: list[int], results: Sequence[Any]) -> None:
        for i, out in zip(group, results):
            self.outs[i] = out


class _LeaseGuard:
    """Returns a lease to its pool if the call fails, but only once no item's work can still write into it."""

    def __init__(self, pool: Any, lease: Any, items: int) -> None:
        self.pool, self.lease, self.unsettled, self.failed = pool, lease, items, False

    def settled(self) -> None:
        self.unsettled -= 1
        self._maybe_release()

    def fail(self) -> None:
        self.failed = True
        self._maybe_release()

    def _maybe_release(self) -> None:
        if self.failed and self.unsettled == 0 and self.lease is not None:
            self.pool.release(self.lease.handle)
            self.lease = None


F = TypeVar("F", bound=Features)


class Preprocessor(Closeable, Generic[F]):
    """Images and videos to a model family's features on CUDA or CPU.

    A family subclasses it naming its spec (``config_class``) and features (``features_class``); use
    :meth:`from_pretrained` to get the right family for a model folder.

    Use it synchronously (``pre(images=..., videos=...)``), asynchronously
    (``await pre.preprocess(...)``, heavy work on device slots), or as an SGLang-style processor
    (``process_mm_data_async``) inside :class:`gpu_mm.AsyncMMDataProcessor`.

    Args:
        device: ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        config: the family's spec (``config_class``, e.g. :class:`gpu_mm.Qwen2VLConfig`); keyword
            overrides of its fields may be given directly.
        limits: :class:`MediaLimits` applied to every item.
        video_decoder: a registered decoder name: ``"pyav"`` (always there), ``"dali"`` (NVDEC),
            ``"dali-cpu"``; ``"auto"``: DALI/NVDEC on CUDA when installed, else PyAV. An item whose codec
            the decoder lacks falls back to PyAV, and its report says so.
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
            (CUDA only). ``"cpu"``: libjpeg-turbo on the CPU, then the pixels are uploaded (on CUDA: the
            decode transformers sees, since nvJPEG upsamples 4:2:0 chroma differently from libjpeg-turbo;
            4:4:4 JPEGs decode identically; README, "The CUDA path").
        image_batch: plain JPEGs of one call decoded together, up to this many per slot job (default 32 with
            nvJPEG, which decodes a list in one batched call; 1 with libjpeg-turbo, which gains nothing).
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
            ``SCHED_IDLE`` again (not root) (default off).
        workers: where the asynchronous API's slot jobs run on the CPU. ``"threads"`` (default): the slots'
            threads, in this process. ``"processes"``: each slot thread drives a child process of its own (started
            with the slot threads, at :meth:`start` or the first call; torch's threads shared out among them),
            which writes the rows into shared memory: the caller's event loop then shares its interpreter lock
            with no pixel work (measured on 2 cores, 64 concurrent 1080p JPEGs: loop lag p99 1.3-1.4 ms instead
            of 2.7-3.3 ms, with ``idle_workers``), and a decoder that crashes takes down only its child (its items
            fail with :class:`gpu_mm.DecodeError`). Costs each child's memory (torch and gpu-mm imported: ~380 MiB
            private) and its start (3-4 s; :meth:`start` waits for it). The synchronous API always runs on the
            calling thread.
        stop_abandoned_after_s: with ``workers="processes"``, a slot job whose callers have all given up (their
            deadline passed) and that runs this many seconds longer has its process killed, which frees the slot
            (its items fail with :class:`gpu_mm.ProcessingTimeout`; the slot's next job starts a new process). A
            thread cannot be stopped, so with threads, and with ``None`` (the default), such a job keeps its slot
            until it ends.
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
        idle_workers: bool = False,
        image_decoder: str = "auto",
        workers: Literal["threads", "processes"] = "threads",
        stop_abandoned_after_s: float | None = None,
        **overrides: Any,
    ) -> None:
        device = resolve_device(device)
        if workers not in ("threads", "processes"):
            raise ValueError(f"workers must be 'threads' or 'processes', got {workers!r}")
        if workers == "processes" and device != "cpu":
            raise ValueError(f"workers='processes' is for the CPU path (a CUDA slot is a stream), got {device!r}")
        self.workers = workers
        if stop_abandoned_after_s is not None and not stop_abandoned_after_s >= 0:
            raise ValueError(f"stop_abandoned_after_s must be >= 0 or None, got {stop_abandoned_after_s!r}")
        self.stop_abandoned_after_s = stop_abandoned_after_s
        self.image_decoder = choose_image_decoder(image_decoder, device)
        """``"nvjpeg"`` or ``"cpu"``: who decodes this preprocessor's JPEGs."""
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
        self.concurrency = dataclasses.replace(
            chosen, slots=num_slots or chosen.slots,
            express_slots=chosen.express_slots if express_slots is None else express_slots,
            reason=chosen.reason if num_slots is None and express_slots is None else "set by the caller")
        """The slots this preprocessor runs (:class:`gpu_mm.concurrency.Concurrency`), with the reason."""
        if image_batch is not None and image_batch < 1:
            raise ValueError(f"image_batch must be >= 1 or None, got {image_batch!r}")
        # nvJPEG decodes a list in one batched (hardware where present) call; libjpeg-turbo gains nothing.
        self._image_batch = image_batch or (32 if self.image_decoder == "nvjpeg" else 1)
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
        if cache_bytes is None:
            cache_bytes = default_cache_bytes()
        self.cache = FeatureCache(cache_bytes, copy_on_hit=copy_on_hit)
        # Everything besides the media and the request's options that changes an item's features.
        self.fast_jpeg = fast_jpeg
        self.idle_workers = idle_workers
        self._cache_identity = (repr(self.config), self.device, self.output, self.video_decoder, fast_jpeg,
                                self.image_decoder)
        self._inflight: dict[bytes, asyncio.Future[Any]] = {}
        self._arena: ShmArena | None = None
        self._procs: list[SlotProcess] = []
        self._procs_lock = threading.Lock()

    @classmethod
    def for_model(cls, model: str | os.PathLike[str], *, device: str = "auto", **kwargs: Any) -> Any:
        """A local model folder (:meth:`from_pretrained`), or a family name / transformers ``model_type``
        (``qwen2_vl``, ``qwen3_vl_moe`` ...) with that family's default config."""
        from ..models import get_family

        if Path(model).is_dir():
            return cls.from_pretrained(model, device=device, **kwargs)
        return get_family(str(model))(device, **kwargs)

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
        from ..models import get_family

        folder = Path(model_dir)
        image, video = _processor_configs(folder)
        model_config = _read_json(folder / "config.json") or {}
        model_type = model_config.get("model_type") or _model_type_from(image, video)
        family = get_family(model_type)
        if cls is not Preprocessor and not issubclass(family, cls):
            raise ValueError(f"{folder} holds a {model_type!r} model, not one of {cls.__name__}'s family")
        config = family.config_class.from_pretrained_dict(model_type, image, video)
        return family(device, config=config, **kwargs)

    # ------------------------------------------------------------------ sync API

    def __call__(
        self,
        images: Sequence[Any] | Any | None = None,
        videos: Sequence[Any] | Any | None = None,
        **request: Any,
    ) -> F:
        """Preprocess on the calling thread (scripts, tests); returns the family's features.

        Per-request options as keywords or ``options=RequestOptions(...)``: the :class:`gpu_mm.RequestOptions`
        fields the family reads (``config.options``); others raise :class:`gpu_mm.InvalidRequest`."""
        if self._closed:
            raise ProcessorClosed(f"{type(self).__name__} is closed")
        plans = self._plan_all(images, videos, request)
        slot = self._sync_slot()
        call = self._route(plans, self._lease(plans))
        try:
            # cuda:N: the current device for every kernel launched here (slot threads get it from their stream).
            with torch.cuda.device(self.device) if self.device.startswith("cuda") else contextlib.nullcontext():
                for group in call.groups:
                    results = self._execute_group(slot, call.members(group))
                    call.fill(group, results)
                    for plan, out in zip(call.members(group), results):
                        self._keep(plan, out)
        except BaseException:
            if call.lease is not None:
                self.output_pool.release(call.lease.handle)
            raise
        if call.lease is not None and self.output_pool.device != "cpu":
            torch.cuda.current_stream().synchronize()  # another process may read the block at once
        return self._assemble(call)

    def __getstate__(self) -> dict[str, Any]:
        # A copy (deepcopy, pickle) gets its own threads, slots and per-thread decoders, never these.
        state = self.__dict__.copy()
        state.update(_slots=None, _io=None, _inflight={}, _arena=None, _procs=[])
        state.pop("_sync_local", None)
        state.pop("_procs_lock", None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._sync_local = threading.local()
        self._procs_lock = threading.Lock()

    def _sync_slot(self) -> Slot:
        """The calling thread's own slot for the synchronous API, kept between calls so that its decoders
        (a DALI pipeline, an NVDEC session) are built once per thread, not per call."""
        slot = getattr(self._sync_local, "slot", None)
        if slot is None:
            slot = self._sync_local.slot = Slot(-1, self.device)
        return slot

    # ------------------------------------------------------------------ async API

    async def start(self) -> None:
        """Start the slot and IO threads now rather than at the first call, and with ``workers="processes"`` wait
        until every slot's process has built its preprocessor (seconds: each imports torch), so that no request
        waits for that. A server calls it before it accepts requests (``gpu-mm serve`` does)."""
        if self._closed:
            raise ProcessorClosed(f"{type(self).__name__} is closed")
        slots = self._pools()
        if self.workers == "processes":
            await asyncio.gather(*(asyncio.wrap_future(f) for f in slots.on_each_slot(_ready_slot_process)))

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
                slot_start=_weakly(self._start_slot_process) if self.workers == "processes" else None,
                slot_exit=_close_slot_process,
            )
            self._slots.prestart()
        return self._slots

    async def preprocess(
        self,
        images: Sequence[Any] | Any | None = None,
        videos: Sequence[Any] | Any | None = None,
        *,
        deadline: float | None = None,
        **request: Any,
    ) -> F:
        """Like ``__call__`` but async: planning on IO threads, pixel work on device slots.

        ``deadline`` is a ``time.monotonic()`` instant; past it :class:`gpu_mm.ProcessingTimeout` is
        raised and any running item keeps its slot until it ends.
        """
        if self._closed:
            raise ProcessorClosed(f"{type(self).__name__} is closed")
        loop = asyncio.get_running_loop()
        slots = self._pools()
        assert self._io is not None
        # Planning and leasing the output block (an allocation, a CUDA IPC handle) run on an IO thread.
        plan_future = loop.run_in_executor(self._io, self._plan_and_lease, images, videos, request)
        plans, lease = await _within(plan_future, deadline, on_abandoned=self._release_late_lease)
        call = self._route(plans, lease, loop)
        computed = sum(len(g) for g in call.groups)
        guard = _LeaseGuard(self.output_pool, lease, computed) if lease is not None and computed else None
        settled = guard.settled if guard is not None else None
        runs: list[Any] = [self._start_group(slots, call.members(group), deadline, _settles(settled, len(group)))
                           for group in call.groups]
        runs += [self._follow(plans[i], flight, deadline) for i, flight in call.followers]
        try:
            results = await asyncio.gather(*runs, return_exceptions=True)
            for r in results:
                if isinstance(r, BaseException):
                    raise r
        except BaseException:
            if guard is not None:
                guard.fail()  # the block returns to the pool once no abandoned item can write into it
            raise
        for group, result in zip(call.groups, results):
            call.fill(group, result)  # type: ignore[arg-type]
        for (i, _), result in zip(call.followers, results[len(call.groups):]):
            call.outs[i] = result
        if lease is not None and call.followers:
            # Rows computed for another call: copied into this call's block, off the loop.
            await loop.run_in_executor(self._io, _fill_block, [(plans[i], call.outs[i][0]) for i, _ in call.followers])
        if lease is None and (sum(p.kind == "image" for p in plans) > 1 or sum(p.kind == "video" for p in plans) > 1):
            # Joining several items' rows is a copy of every feature byte: not on the caller's loop.
            return await loop.run_in_executor(self._io, self._assemble, call)
        return self._assemble(call)

    def _route(self, plans: list[_Plan], lease: Any, loop: asyncio.AbstractEventLoop | None = None) -> _Call:
        """Where each item's rows come from: hits from the cache now; with ``loop`` (the async API), items
        whose content another call is computing join that computation, and the rest announce theirs; then
        the remaining items grouped into slot jobs."""
        call = _Call(plans, lease, [None] * len(plans), [], [])
        fresh: list[int] = []
        for i, p in enumerate(plans):
            if p.cached is not None:
                call.outs[i] = self._from_cache(p)
            elif loop is not None and p.key is not None and p.key in self._inflight:
                p.cache_state = "coalesced"  # the same content is being computed: wait for that
                self.cache.coalesced()
                call.followers.append((i, self._inflight[p.key]))
            else:
                fresh.append(i)
                if loop is not None and p.key is not None:
                    p.flight = self._inflight[p.key] = loop.create_future()
        call.groups = [[fresh[k] for k in group] for group in self._groups([plans[i] for i in fresh])]
        return call

    def _plan_and_lease(self, images: Any, videos: Any, request: dict[str, Any]) -> tuple[list[_Plan], Any]:
        plans = self._plan_all(images, videos, request)
        return plans, self._lease(plans)

    def _release_late_lease(self, result: tuple[list[_Plan], Any]) -> None:
        """Planning finished after its caller gave up: no item will run, so its block goes back at once."""
        _, lease = result
        if lease is not None:
            self.output_pool.release(lease.handle)

    def _start_group(self, slots: SlotPool, group: list[_Plan], deadline: float | None,
                     on_release: Any) -> asyncio.Task[Any]:
        """One slot job as a task. SlotPool.run reports its outcome (``on_done``) and settles it (``on_release``)
        on every path, but only once its coroutine has begun: a task cancelled before its first step (its
        caller cancelled in the same loop turn) never begins, so its done-callback does that instead."""
        begun: list[bool] = []
        on_done = self._landed(group)

        async def run() -> Any:
            begun.append(True)
            work = self._execute_group if self.workers == "threads" else self._execute_in_process
            return await slots.run(work, group, nbytes=sum(p.nbytes for p in group),
                                   deadline=deadline, on_release=on_release, on_done=on_done)

        def never_begun(task: asyncio.Task[Any]) -> None:
            if begun:
                return
            if on_done is not None:
                on_done(None, asyncio.CancelledError())
            if on_release is not None:
                on_release()

        task = asyncio.ensure_future(run())
        task.add_done_callback(never_begun)
        return task

    def _from_cache(self, plan: _Plan) -> tuple[torch.Tensor, Decoded]:
        assert plan.cached is not None
        plan.cache_state = "hit"
        return plan.cached.rows, plan.cached.value["decoder"]

    def _keep(self, plan: _Plan, out: tuple[torch.Tensor, Decoded]) -> None:
        """Put a computed item in the cache (a copy when its rows live in a reusable pool block)."""
        if plan.key is None:
            return
        rows, decoder = out
        if plan.out is not None:
            rows = rows.clone()
        self.cache.put(plan.key, rows, {
            "target": plan.target, "grid": plan.grid, "source_size": plan.source_size, "indices": plan.indices,
            "sample_fps": plan.sample_fps, "video_fps": plan.video_fps, "decoder": decoder,
        })
        plan.cache_state = "miss"

    def _landed(self, group: list[_Plan]) -> Any:
        """``on_done`` for a slot job: when its work really ends (whether or not its caller is still there),
        keep its items in the cache and hand the outcome to every call that joined them."""
        if not any(p.flight is not None for p in group):
            return None

        def on_done(result: Any, exc: BaseException | None) -> None:
            for k, plan in enumerate(group):
                flight = plan.flight
                if flight is None:
                    continue
                if self._inflight.get(plan.key) is flight:  # type: ignore[arg-type]
                    del self._inflight[plan.key]  # type: ignore[arg-type]
                if flight.done():
                    continue
                if exc is None:
                    self._keep(plan, result[k])
                    flight.set_result(result[k])
                else:
                    if isinstance(exc, asyncio.CancelledError):
                        exc = ProcessingTimeout("the computation this item joined was cancelled before it ran")
                    flight.set_exception(exc)
                    flight.exception()  # retrieved: nobody may have joined

        return on_done

    async def _follow(self, plan: _Plan, flight: asyncio.Future[Any], deadline: float | None) -> Any:
        """Wait, until this call's own deadline, for a computation of the same content another call started;
        its failure is this item's failure, named as this item."""
        if not await wait_until(flight, deadline):
            raise ProcessingTimeout(f"{plan.src.item}: the computation of the same content did not finish by "
                                    "this request's deadline")
        exc = flight.exception()
        if isinstance(exc, MediaError):
            raise type(exc)(plan.src.item, exc.reason) from exc
        if exc is not None:
            raise exc
        return flight.result()

    async def process_mm_data_async(
        self,
        image_data: Any = None,
        audio_data: Any = None,
        input_text: Any = None,
        request_obj: Any = None,
        **kwargs: Any,
    ) -> dict[str, Any]:
        """SGLang's processor contract: features for the request's images and videos as a dict.

        Videos come from ``kwargs["video_data"]`` or ``request_obj.video_data``. Audio is refused.
        """
        if audio_data:
            raise UnsupportedMedia("audio", f"the {self.config.family} family takes no audio")
        videos = kwargs.pop("video_data", None)
        if videos is None and request_obj is not None:
            videos = getattr(request_obj, "video_data", None)
        feats = await self.preprocess(images=image_data or None, videos=videos or None, **kwargs)
        return feats.processor_output(input_text)

    def statistics(self) -> PreprocessorStatistics:
        """Return a snapshot of the slots, the feature cache and the computations in flight."""
        return PreprocessorStatistics(
            device=self.device, memory_budget_bytes=self.memory_budget_bytes,
            slots=None if self._slots is None else self._slots.statistics(),
            cache=self.cache.statistics(), computations_in_flight=len(self._inflight),
            concurrency=self.concurrency, workers=self.workers,
            process_starts=sum(p.starts for p in self._procs),
            process_pids=tuple(p.pid for p in self._procs if p.running and p.pid is not None),
            process_stops=sum(p.stopped for p in self._procs),
        )

    def close(self) -> None:
        """Refuse new calls and let the slot and IO threads exit once their current work ends (no wait)."""
        self._closed = True
        if self._slots is not None:
            self._slots.close()
        if self._io is not None:
            self._io.shutdown(wait=False)

    shutdown = close

    async def aclose(self) -> None:
        """:meth:`close`, then wait for running work (abandoned work included) to end."""
        self._closed = True
        if self._slots is not None:
            await self._slots.aclose()  # the slot threads close their processes as they exit
        if self._io is not None:
            await asyncio.to_thread(self._io.shutdown, True)
        if self._arena is not None:
            self._arena.close()

    # ------------------------------------------------------------------ planning (pure, no pixels)

    def _options(self, request: dict[str, Any]) -> RequestOptions:
        """The call's options, from ``options=RequestOptions(...)`` or keywords, checked against what the
        family reads."""
        options = request.pop("options", None)
        if options is not None and request:
            raise TypeError("pass per-request options either as options=RequestOptions(...) or as keywords")
        parsed = RequestOptions.parse(options if options is not None else request)
        unread = sorted(set(parsed.as_dict()) - self.config.options)
        if unread:
            raise InvalidRequest(unread[0], f"not an option of the {self.config.family} family; its options: "
                                            f"{sorted(self.config.options)}")
        return parsed

    def _plan_all(self, images: Any, videos: Any, request: dict[str, Any]) -> list[_Plan]:
        options = self._options(request)
        plans = [self._plan_image(obj, f"image[{i}]", options) for i, obj in enumerate(_as_list(images))]
        plans += [self._plan_video(obj, f"video[{i}]", options) for i, obj in enumerate(_as_list(videos))]
        for p in plans:
            if p.nbytes > self.memory_budget_bytes:
                raise LimitExceeded(
                    p.src.item,
                    f"needs up to {_mib(p.nbytes)} of working memory ({p.source_size[1]}x{p.source_size[0]} "
                    f"-> {p.target[1]}x{p.target[0]}"
                    + (f", {len(p.indices)} frames" if p.indices is not None else "")
                    + f"), over the preprocessor's memory_budget_bytes={_mib(self.memory_budget_bytes)}",
                )
        return plans

    def _lookup(self, src: Source, kind: str, options: RequestOptions,
                timer: StageTimer) -> tuple[bytes | None, Entry | None]:
        """The item's cache key and entry (runs on a planning thread: hashing never touches the loop).
        Encoded bytes and CPU arrays are cacheable; PIL images and device tensors are not."""
        if not self.cache.enabled:
            return None, None
        if src.kind == "encoded":
            data = src.data
        elif src.kind == "array" and not (isinstance(src.pixels, torch.Tensor) and src.pixels.device.type != "cpu"):
            data = src.pixels
        else:
            return None, None
        with timer.stage("cache"):
            try:
                key = content_key(data, kind, self._cache_identity, sorted(options.as_dict().items()))
            except (TypeError, ValueError, BufferError):
                return None, None  # an array whose memory cannot be read as bytes (object dtype): not cached
            return key, self.cache.get(key)

    def _plan_image(self, obj: Any, item: str, options: RequestOptions) -> _Plan:
        timer = StageTimer()
        with timer.stage("load"):
            src = load_source(obj, item, self.limits)
        key, hit = self._lookup(src, "image", options, timer)
        if hit is not None:
            return _hit_plan("image", src, key, hit, timer)
        with timer.stage("load"):
            info = probe_image(src, self.limits)
        cfg = self.config
        try:
            target = cfg.image_target(info.height, info.width, options)
        except ValueError as exc:
            raise LimitExceeded(src.item, str(exc)) from None
        grid = cfg.grid(1, target)
        scale = jpeg_draft_scale(src, info, target) if self.fast_jpeg and self.device == "cpu" else 1
        nbytes = image_working_bytes((info.height, info.width), target, _feature_bytes(grid, cfg),
                                     via_pillow=not is_plain_jpeg(src, info) or scale > 1)
        return _Plan("image", src, target, grid, (info.height, info.width), image_info=info, nbytes=nbytes,
                     timer=timer, key=key, jpeg_scale=scale)

    def _plan_video(self, obj: Any, item: str, options: RequestOptions) -> _Plan:
        timer = StageTimer()
        with timer.stage("load"):
            src = load_source(obj, item, self.limits)
        key, hit = self._lookup(src, "video", options, timer)
        if hit is not None:
            return _hit_plan("video", src, key, hit, timer)
        info: VideoInfo | None = None
        try:
            if src.kind == "encoded":
                with timer.stage("probe"):
                    info = probe_video(src, self.limits)
                size = info.display_size
                sampling = self.config.sample_video(info.num_frames, info.fps, size, options)
            elif src.kind == "array":
                # Decoded frames are taken as already sampled (as qwen-vl-utils treats frame lists).
                frames = src.pixels = frames_from_array(src)
                size = (frames.shape[1], frames.shape[2])
                sampling = self.config.sample_frames(frames.shape[0], size, options)
            else:
                raise UnsupportedMedia(src.item, "a video must be encoded bytes/path/URL or a T x H x W x C array")
        except MediaError:
            raise
        except ValueError as exc:  # the family's arithmetic refused the video
            raise LimitExceeded(src.item, str(exc)) from None
        plan = self._video_plan(src, sampling, info, size, timer)
        plan.key = key
        return plan

    def _video_plan(self, src: Source, sampling: VideoSampling, info: VideoInfo | None, size: tuple[int, int],
                    timer: StageTimer) -> _Plan:
        cfg = self.config
        indices, target = sampling.indices, sampling.target
        grid = cfg.grid(len(indices), target)
        # Working memory follows the larger of the intermediate and the final frames.
        held = max(target, sampling.presize or target, key=lambda s: s[0] * s[1])
        if info is None:  # decoded frames given: they are all in memory already; one pass over them
            chunk = len(indices)
            nbytes = image_working_bytes(size, held, _feature_bytes(grid, cfg), via_pillow=False, frames=chunk)
        else:
            chunk = video_chunk_frames(size, held, cfg.temporal_patch_size, len(indices))
            nbytes = video_working_bytes(size, held, chunk, _feature_bytes(grid, cfg))
        call = chunk
        if info is not None and self.video_decoder in memory.PER_CALL_DECODERS:
            call = video_call_frames(size, chunk, len(indices))
            nbytes += (call - chunk) * 3 * size[0] * size[1]  # the call's decoded frames beyond one chunk
        return _Plan("video", src, target, grid, size, indices=indices, info=info, sample_fps=sampling.sample_fps,
                     presize=sampling.presize, nbytes=nbytes, chunk=chunk, call=call, timer=timer,
                     video_fps=sampling.video_fps)

    # ------------------------------------------------------------------ execution (on a slot thread)

    def _groups(self, plans: list[_Plan]) -> list[list[int]]:
        """Which plans run together as one slot job: plain JPEGs in batches of up to ``image_batch`` (one
        batched decode call, within the memory budget), every other item on its own."""
        groups: list[list[int]] = []
        batch: list[int] = []
        batch_bytes = 0
        budget = self.memory_budget_bytes
        for i, p in enumerate(plans):
            if self._image_batch > 1 and p.kind == "image" and p.image_info is not None \
                    and p.jpeg_scale == 1 and is_plain_jpeg(p.src, p.image_info):
                if batch and (len(batch) == self._image_batch or (budget and batch_bytes + p.nbytes > budget)):
                    groups.append(batch)
                    batch, batch_bytes = [], 0
                batch.append(i)
                batch_bytes += p.nbytes
            else:
                groups.append([i])
        if batch:
            groups.append(batch)
        return groups

    def _execute_group(self, slot: Slot, group: list[_Plan]) -> list[tuple[torch.Tensor, Decoded]]:
        """Run one slot job: one item, or a batch of plain JPEGs decoded in one call."""
        if len(group) == 1:
            return [self._execute(slot, group[0])]
        t0 = time.perf_counter()
        on = slot.device if self.image_decoder == "nvjpeg" else "cpu"
        images = decode_jpegs([(p.src, p.image_info) for p in group if p.image_info is not None], on)
        share = (time.perf_counter() - t0) / len(group)
        decoded = Decoded(self.image_decoder, batch_size=len(group))
        out = []
        for plan, image in zip(group, images):
            plan.timer.add("decode", share)
            out.append(self._finish(slot, plan, image.unsqueeze(0), decoded))
        return out

    def _execute_in_process(self, slot: Slot, group: list[_Plan]) -> list[tuple[torch.Tensor, Decoded]]:
        """:meth:`_execute_group` in the slot's process (``workers="processes"``), from the slot's thread: the
        plans go without their tensors and futures, each item's rows come back in shared memory, its stage
        timings with them."""
        proc = slot.state.get("process")
        if proc is None:
            proc = self._start_slot_process(slot)
        sent = [dataclasses.replace(p, out=None, grid_out=None, cached=None, flight=None) for p in group]
        shapes = [(math.prod(p.grid), self.config.row_size) for p in group]
        out = []
        results = proc.run(sent, shapes, self.config.output_dtype, abandoned_since=lambda: slot.abandoned_at,
                           stop_after_s=self.stop_abandoned_after_s)
        for plan, (rows, (decoded, stages)) in zip(group, results):
            plan.timer.stages = stages
            out.append((self._place(slot, plan, rows), decoded))
        return out

    def _start_slot_process(self, slot: Slot) -> SlotProcess:
        """The slot's process, started (on the slot's thread, as it starts: the child imports meanwhile)."""
        with self._procs_lock:
            if self._arena is None:
                # Free output blocks kept for reuse: a quarter of the working-memory budget (2 GiB by default).
                self._arena = ShmArena(max_free_bytes=self.memory_budget_bytes // 4)
            total = self.concurrency.slots + self.concurrency.express_slots
            proc = SlotProcess(
                {"class": type(self), "kwargs": dict(
                    config=self.config, limits=self.limits, video_decoder=self.video_decoder,
                    image_decoder=self.image_decoder, fast_jpeg=self.fast_jpeg, cache_bytes=0,
                    num_slots=1, express_slots=0, memory_budget_bytes=self.memory_budget_bytes)},
                self._arena, idle=self.idle_workers, threads=process_threads(self.concurrency.cores, total),
                name=f"gpu-mm-slot-process-{slot.index}")
            self._procs.append(proc)
        slot.state["process"] = proc
        proc.start()
        return proc

    def _execute(self, slot: Slot, plan: _Plan) -> tuple[torch.Tensor, Decoded]:
        """Decode, resize, normalize and patchify one planned item on ``slot``'s device."""
        if plan.kind == "video" and plan.info is not None:
            return self._execute_video(slot, plan)
        with plan.timer.stage("decode"):
            frames, decoder = self._decode(slot, plan)  # uint8 [T, 3, H, W]
        return self._finish(slot, plan, frames, decoder)

    def _finish(self, slot: Slot, plan: _Plan, frames: torch.Tensor,
                decoder: Decoded) -> tuple[torch.Tensor, Decoded]:
        """Upload (if needed), resize, normalize and patchify decoded uint8 ``[T, 3, H, W]`` frames."""
        frames = self._upload_resize(slot, plan, frames)
        with plan.timer.stage("normalize_patchify"):
            out = plan.out if plan.out is not None and same_device(plan.out.device, frames.device) else None
            pv, grid = self._normalize_patchify(frames, out)
        if grid != plan.grid:  # pragma: no cover - plan and run share the arithmetic
            raise RuntimeError(f"{plan.src.item}: planned grid {plan.grid} but produced {grid}")
        return self._place(slot, plan, pv), decoder

    def _upload_resize(self, slot: Slot, plan: _Plan, frames: torch.Tensor) -> torch.Tensor:
        """Frames (uint8 ``[T, 3, H, W]``, any device) on the slot's device, shown as displayed, resized."""
        device = torch.device(slot.device)
        timer = plan.timer
        with timer.stage("transfer"):
            if not same_device(frames.device, device):
                if device.type == "cuda" and frames.device.type == "cpu":
                    frames = frames.pin_memory().to(device, non_blocking=True)
                else:
                    frames = frames.to(device)
        with timer.stage("resize"):
            if plan.info is not None and plan.info.rotation:
                frames = rotate_frames(frames, plan.info.rotation)
            if plan.presize is not None:
                frames = ops.resize(frames, plan.presize, "bilinear")
            return ops.resize(frames, plan.target, self.config.video_resample if plan.kind == "video" else "bicubic")

    def _place(self, slot: Slot, plan: _Plan, pv: torch.Tensor) -> torch.Tensor:
        """Put an item's finished rows where the caller wants them (pool block, device, CPU or pinned)."""
        if plan.out is not None:
            _into_block(plan, pv)
            return plan.out
        if self.output == "device" and pv.device.type == "cuda" and slot.stream is not None:
            # Allocated on the slot's stream, read by the caller on its own (usually the default stream):
            # once the caller frees it, the block must not go to the slot's next item before the default
            # stream's work queued by then has finished. Callers on other streams record theirs.
            pv.record_stream(torch.cuda.default_stream(pv.device))
        if self.output == "cpu" and pv.device.type != "cpu":
            pv = pv.to("cpu")
        elif self.output == "pinned":
            host = torch.empty(pv.shape, dtype=pv.dtype, pin_memory=True)
            host.copy_(pv, non_blocking=True)
            if slot.stream is None:  # the synchronous API returns finished tensors
                torch.cuda.current_stream().synchronize()
            pv = host
        return pv

    def _execute_video(self, slot: Slot, plan: _Plan) -> tuple[torch.Tensor, Decoded]:
        """A video, ``plan.chunk`` frames at a time: decode, resize and patchify each group straight into the
        item's output rows, so memory follows the output and the chunk, not the source's frame count."""
        cfg = self.config
        device = torch.device(slot.device)
        gt, gh, gw = plan.grid
        row = cfg.row_size
        if plan.out is not None and same_device(plan.out.device, device):
            out = plan.out
        else:
            out = torch.empty((gt * gh * gw, row), dtype=cfg.output_dtype, device=device)
        try:
            decoded = Decoded(self._video_chunks(slot, plan, self.video_decoder, out))
        except MediaError as exc:
            # A codec the backend lacks (UnsupportedMedia), or a stream it failed on (DecodeError: e.g. a
            # codec this chip's NVDEC does not have): PyAV decodes it instead, or names what is wrong.
            if self.video_decoder == "pyav":
                raise
            decoded = Decoded(self._video_chunks(slot, plan, "pyav", out), fallback_reason=exc.reason)
        return self._place(slot, plan, out), decoded

    def _video_chunks(self, slot: Slot, plan: _Plan, decoder_name: str, out: torch.Tensor) -> str:
        assert plan.info is not None and plan.indices is not None
        cfg = self.config
        tp = cfg.temporal_patch_size
        rows_per_step = plan.grid[1] * plan.grid[2]
        decoder = self._decoder(slot, decoder_name)
        done = 0
        for first, frames in _frame_chunks(decoder, plan):
            frames = self._upload_resize(slot, plan, frames.permute(0, 3, 1, 2))
            steps = -(-frames.shape[0] // tp)
            begin = first // tp * rows_per_step
            with plan.timer.stage("normalize_patchify"):
                self._normalize_patchify(frames, out[begin : begin + steps * rows_per_step])
            done = first + frames.shape[0]
        if done != len(plan.indices):  # pragma: no cover - decoders raise for frames they cannot reach
            raise RuntimeError(f"{plan.src.item}: decoded {done} of {len(plan.indices)} planned frames")
        return decoder.name

    def _decode(self, slot: Slot, plan: _Plan) -> tuple[torch.Tensor, Decoded]:
        src = plan.src
        if plan.kind == "image":
            if plan.jpeg_scale > 1:
                assert plan.image_info is not None
                return decode_jpeg_scaled(src, plan.image_info, plan.jpeg_scale).unsqueeze(0), Decoded(
                    f"cpu-jpeg-1/{plan.jpeg_scale}")
            if self.image_decoder == "nvjpeg":
                gpu = decode_jpeg_cuda(src, slot.device, self.limits, plan.image_info)
                if gpu is not None:
                    return gpu.unsqueeze(0), Decoded("nvjpeg")
            return decode_image(src, self.limits, plan.image_info).unsqueeze(0), Decoded("cpu")
        assert src.kind == "array" and plan.indices is not None
        frames = src.pixels
        if plan.indices != list(range(frames.shape[0])):  # every frame in order (a drop-in's call): no copy
            frames = frames[plan.indices]
        return frames.permute(0, 3, 1, 2), Decoded("array")

    @staticmethod
    def _decoder(slot: Slot, name: str) -> Any:
        """The slot thread's own instance of decoder ``name`` (decoders are never shared)."""
        key = ("video_decoder", name)
        decoder = slot.state.get(key)
        if decoder is None:
            decoder = slot.state[key] = get_video_decoder(name)
        return decoder

    def _normalize_patchify(
        self, frames: torch.Tensor, out: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, tuple[int, int, int]]:
        cfg = self.config
        kw = dict(patch_size=cfg.patch_size, temporal_patch_size=cfg.temporal_patch_size,
                  merge_size=cfg.merge_size, dtype=cfg.output_dtype, out=out)
        return _normalize_patchify_impl(frames.device.type, cfg.output_dtype)(
            frames, cfg.image_mean, cfg.image_std, **kw)

    # ------------------------------------------------------------------ output

    def _lease(self, plans: list[_Plan]) -> Any:
        """With an output pool: lease one block for all features, point each plan at its rows, and copy the
        rows of cache hits in."""
        if self.output_pool is None or not plans:
            return None
        cfg = self.config
        row = cfg.row_size
        layout: dict[str, tuple[tuple[int, ...], torch.dtype]] = {}
        for kind, key, grid_key in (("image", "pixel_values", "image_grid_thw"),
                                    ("video", "pixel_values_videos", "video_grid_thw")):
            group = [p for p in plans if p.kind == kind]
            if group:
                layout[key] = ((sum(math.prod(p.grid) for p in group), row), cfg.output_dtype)
                layout[grid_key] = ((len(group), 3), torch.long)
        lease = self.output_pool.lease(layout)
        offsets = {"image": 0, "video": 0}
        counts = {"image": 0, "video": 0}
        for p in plans:
            key, grid_key = (("pixel_values", "image_grid_thw") if p.kind == "image"
                             else ("pixel_values_videos", "video_grid_thw"))
            n = math.prod(p.grid)
            p.out = lease.tensors[key][offsets[p.kind] : offsets[p.kind] + n]
            p.grid_out = lease.tensors[grid_key][counts[p.kind]]
            offsets[p.kind] += n
            counts[p.kind] += 1
            if p.cached is not None:  # a hit: its rows go into the block now, nothing runs for it
                _into_block(p, p.cached.rows)
        return lease

    def _assemble(self, call: _Call) -> F:
        plans, outs, lease = call.plans, call.outs, call.lease
        feats = self.features_class()
        cfg = self.config
        img = [(p, o) for p, o in zip(plans, outs) if p.kind == "image"]
        vid = [(p, o) for p, o in zip(plans, outs) if p.kind == "video"]
        if lease is not None:
            feats.handle = lease.handle
        for group, key, grid_key in ((img, "pixel_values", "image_grid_thw"),
                                     (vid, "pixel_values_videos", "video_grid_thw")):
            if not group:
                continue
            if lease is not None:  # rows and grids are already in the block, written by the slot jobs
                pv = lease.tensors[key]
                grid = lease.tensors[grid_key]
            else:
                grid = torch.tensor([p.grid for p, _ in group], dtype=torch.long)
                pv = _join([o[0] for _, o in group], pinned=self.output == "pinned")
            setattr(feats, key, pv)
            setattr(feats, grid_key, grid)
        if vid:
            sampled = [VideoSampling(p.indices or [], p.sample_fps or 0.0, p.target, p.video_fps) for p, _ in vid]
            for name, value in cfg.video_fields(sampled).items():
                setattr(feats, name, value)
        for p, (_, decoded) in zip(plans, outs):
            feats.items.append(
                ItemReport(
                    kind=p.kind, item=p.src.item, source_size=p.source_size, resized=p.target, grid_thw=p.grid,
                    num_tokens=cfg.token_count(p.grid), decoder=str(decoded), frame_indices=p.indices,
                    sample_fps=p.sample_fps, video_fps=p.video_fps, timings=dict(p.timer.stages),
                    cache=p.cache_state, decoded=decoded, working_bytes=p.nbytes,
                )
            )
        return feats


def _frame_chunks(decoder: Any, plan: _Plan) -> Any:
    """Yield ``(position, frames)``: the plan's frames ``plan.chunk`` at a time as uint8 ``[k, H, W, 3]``.

    Decoders that stream (``iter_frames_at``) fill one reused buffer frame by frame; others are asked for
    ``plan.call`` frames per call, yielded a chunk at a time. Decode time goes to the item's ``decode`` stage."""
    assert plan.info is not None and plan.indices is not None
    indices, info, timer, chunk = plan.indices, plan.info, plan.timer, plan.chunk
    iterate = getattr(decoder, "iter_frames_at", None)
    if iterate is None:
        call = max(plan.call, chunk)
        for start in range(0, len(indices), call):
            with timer.stage("decode"):
                decoded = decoder.get_frames_at(plan.src, info, indices[start : start + call])
            for k in range(0, decoded.shape[0], chunk):
                yield start + k, decoded[k : k + chunk]
            del decoded
        return
    buf = torch.empty((min(chunk, len(indices)), info.height, info.width, 3), dtype=torch.uint8)
    # Frames go into the buffer with numpy's copy: a torch copy wakes the intra-op thread pool, whose spinning
    # threads then compete with FFmpeg's for the cores while the next frames decode.
    view = buf.numpy()
    stream = iterate(plan.src, info, indices)
    first = k = 0
    while True:
        with timer.stage("decode"):
            frame = next(stream, None)
            if frame is not None:
                view[k] = frame
        if frame is None:
            break
        k += 1
        if k == buf.shape[0]:
            yield first, buf  # consumed (resized) before the next frame is decoded into it
            first, k = first + k, 0
    if k:
        yield first, buf[:k]


def _join(parts: list[torch.Tensor], *, pinned: bool) -> torch.Tensor:
    """Items' rows as one tensor; with ``pinned`` the joined copy is page-locked too (torch.cat's is not)."""
    if len(parts) == 1:
        return parts[0]
    rows = sum(p.shape[0] for p in parts)
    out = torch.empty((rows, *parts[0].shape[1:]), dtype=parts[0].dtype, device=parts[0].device,
                      pin_memory=pinned and parts[0].device.type == "cpu")
    return torch.cat(parts, out=out)


def _hit_plan(kind: Literal["image", "video"], src: Source, key: bytes | None, hit: Entry,
              timer: StageTimer) -> _Plan:
    v = hit.value
    return _Plan(kind, src, v["target"], v["grid"], v["source_size"], indices=v["indices"], sample_fps=v["sample_fps"],
                 video_fps=v["video_fps"], timer=timer, key=key, cached=hit)


def _weakly(method: Callable[[Slot], Any]) -> Callable[[Slot], Any]:
    """``method`` for a slot hook without keeping its object alive: the slot threads hold their hooks, and a
    preprocessor dropped without close() must still be collected (its slot pool then lets the threads exit)."""
    ref = weakref.WeakMethod(method)

    def call(slot: Slot) -> Any:
        bound = ref()
        return None if bound is None else bound(slot)

    return call


def _ready_slot_process(slot: Slot) -> None:
    """On a slot's thread: wait until its process has built its preprocessor (started if it is not running)."""
    proc = slot.state.get("process")
    if proc is not None:
        proc.ensure_ready()


def _close_slot_process(slot: Slot) -> None:
    """``slot_exit``: a slot's thread, as it exits, stops its process (if it has one)."""
    proc = slot.state.pop("process", None)
    if proc is not None:
        proc.close()


def _into_block(plan: _Plan, rows: torch.Tensor) -> None:
    """An item's rows (unless made in place) and its grid row into its pool block. On CUDA the grid is filled
    by kernels on the current stream: no host-to-device copy, no synchronization."""
    if plan.out is not None and rows is not plan.out:
        plan.out.copy_(rows)
    if plan.grid_out is not None:
        for k, v in enumerate(plan.grid):
            plan.grid_out[k].fill_(v)


def _fill_block(items: list[tuple[_Plan, torch.Tensor]]) -> None:
    """Rows made by another call's computation into this call's pool block."""
    for plan, rows in items:
        _into_block(plan, rows)


def _settles(settled: Any, n: int) -> Any:
    """``settled`` called ``n`` times: a slot job of ``n`` items settles each of them."""
    if settled is None:
        return None

    def settle_all() -> None:
        for _ in range(n):
            settled()

    return settle_all


def _as_list(x: Any) -> list[Any]:
    if x is None:
        return []
    if isinstance(x, (list, tuple)):
        return list(x)
    return [x]


async def _within(fut: asyncio.Future[Any], deadline: float | None,
                  on_abandoned: Any = None) -> Any:
    """``fut``'s result, or :class:`ProcessingTimeout` at ``deadline``; a result that arrives after the caller
    gave up goes to ``on_abandoned`` (to return what it holds)."""
    def abandoned() -> None:
        def settle(f: asyncio.Future[Any]) -> None:
            if on_abandoned is not None and not f.cancelled() and f.exception() is None:
                on_abandoned(f.result())

        fut.add_done_callback(settle)

    if not await await_or_abandon(fut, deadline, abandoned):
        raise ProcessingTimeout("planning (load + probe) did not finish by the deadline")
    return fut.result()
