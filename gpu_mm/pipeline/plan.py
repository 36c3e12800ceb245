"""Planning: each item's source loaded and probed, its frames, sizes and grid chosen by the family's spec, its
working memory bounded and its cache entry looked up, before any pixel is decoded; then the items grouped into
slot jobs."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any, Literal

import torch

from ..cache import Entry, FeatureCache, content_key
from ..errors import InvalidRequest, LimitExceeded, MediaError, UnsupportedMedia
from ..media.audio import AudioInfo, probe_audio
from ..media.image import ImageInfo, is_plain_jpeg, jpeg_draft_scale, probe_image
from ..media.sources import MediaLimits, Source, load_source
from ..media.video import VideoInfo, frames_from_array, probe_video
from ..media.video.runs import split_starts
from ..metrics import StageTimer
from ..models.base import ImageView, VideoSampling
from ..options import RequestOptions
from . import memory
from .memory import (
    _feature_bytes,
    _mib,
    image_working_bytes,
    video_call_frames,
    video_chunk_frames,
    video_working_bytes,
)


@dataclasses.dataclass(frozen=True)
class ItemPlan:
    """Everything decided about one item before touching pixels: frozen and picklable (a slot process gets it as
    it is), no tensors except an array input's pixels."""

    kind: Literal["image", "video", "audio"]
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
    meta: tuple[int, ...] = ()
    """The item's row of the family's per-item tensor (``grid_thw``, a tile or crop count)."""
    views: tuple[ImageView, ...] | None = None
    """The outputs an image becomes (``layout = "pixels"`` families; None: one, resized to ``target``)."""
    nbytes: int = 0
    """Peak working memory this item may take while it runs (its bound; see :func:`video_working_bytes`)."""
    chunk: int = 0
    """Video frames resized and patchified together (a multiple of the temporal patch)."""
    call: int = 0
    """Video frames one decoder call returns (a multiple of ``chunk``): ``chunk``, except for decoders whose every
    call sets up a demuxer and a decoder again (:data:`gpu_mm.pipeline.memory.PER_CALL_DECODERS`)."""
    video_fps: float | None = None
    key: bytes | None = None
    """The item's feature-cache key (None: cache off, or not cacheable)."""
    audio: AudioInfo | None = None
    """An audio item's header (its pixel fields are zeros: its slot job decodes it to 16 kHz samples, and the
    call's clips become features together)."""
    runs: tuple[int, ...] = (0,)
    """Where a video's keyframe runs begin in ``indices`` when they decode at once (more than one only for PyAV
    with threads to lend: :mod:`gpu_mm.pipeline.split_decode`); ``nbytes`` reserves a decoder for each."""
    decode_threads: int = 1
    """Threads its keyframe runs decode on (at most ``decoders``): set as its slot job starts, from the threads
    free then (:class:`gpu_mm.concurrency.SpareThreads`)."""

    @property
    def decoders(self) -> int:
        """Decoders whose memory ``nbytes`` reserves: one per keyframe run."""
        return len(self.runs)


@dataclasses.dataclass(eq=False)
class Item:
    """One item of a call as it runs: its plan, and what happens to it (stage times, where its rows go, how the
    cache served it)."""

    plan: ItemPlan
    timer: StageTimer = dataclasses.field(default_factory=StageTimer)
    out: torch.Tensor | None = None
    """Destination rows inside a FeaturePool lease, when the preprocessor has an output pool (or a slot process's
    shared block)."""
    grid_out: torch.Tensor | None = None
    """This item's row of the per-item tensor inside that lease, written by the item's slot job."""
    kept: torch.Tensor | None = None
    """Rows of its own for the cache when the item's rows went into ``out`` (a block the caller hands back for
    reuse), made by its slot job so that no copy falls on the caller's event loop."""
    cached: Entry | None = None
    """The cache's entry, when this item is a hit (nothing is decoded)."""
    cache_state: Literal["hit", "miss", "coalesced"] | None = None
    flight: asyncio.Future[Any] | None = None
    """For a miss computed by this call: resolved with its result for calls that join it."""


@dataclasses.dataclass(frozen=True)
class Planner:
    """Turns a call's items and options into :class:`ItemPlan` s (on a planning thread, never the caller's loop)."""

    config: Any
    """The family's spec (:class:`gpu_mm.models.base.ModelSpec`)."""
    device: str
    limits: MediaLimits
    video_decoder: str
    fast_jpeg: bool
    memory_budget_bytes: int
    image_batch: int
    """Plain JPEGs decoded together in one slot job, at most."""
    cache: FeatureCache
    cache_identity: tuple[Any, ...]
    """Everything besides the media and the request's options that changes an item's features."""
    spare_threads: int = 0
    """Threads the preprocessor may lend to videos' decodes (a PyAV video plans memory for its keyframe runs
    decoding at once, up to :data:`gpu_mm.pipeline.memory.SPLIT_MAX_DECODERS` decoders)."""

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

    def plan_all(self, images: Any, videos: Any, request: dict[str, Any], audios: Any = None) -> list[Item]:
        """The call's items in order: images, videos, audios, then (``use_audio_in_video``) the videos' tracks."""
        options = self._options(request)
        items = [self._plan("image", obj, f"image[{i}]", options) for i, obj in enumerate(as_list(images))]
        videos_planned = [self._plan("video", obj, f"video[{i}]", options) for i, obj in enumerate(as_list(videos))]
        items += videos_planned
        items += [self._plan("audio", obj, f"audio[{i}]", options) for i, obj in enumerate(as_list(audios))]
        if options.use_audio_in_video:
            items += [track for video in videos_planned if (track := self._video_track(video, options)) is not None]
        for p in (item.plan for item in items):
            if p.kind == "audio" and p.nbytes > self.memory_budget_bytes:
                raise LimitExceeded(p.src.item, f"needs up to {_mib(p.nbytes)} of working memory to decode, over the "
                                                f"preprocessor's memory_budget_bytes={_mib(self.memory_budget_bytes)}")
            if p.nbytes > self.memory_budget_bytes:
                raise LimitExceeded(
                    p.src.item,
                    f"needs up to {_mib(p.nbytes)} of working memory ({p.source_size[1]}x{p.source_size[0]} "
                    f"-> {p.target[1]}x{p.target[0]}"
                    + (f", {len(p.indices)} frames" if p.indices is not None else "")
                    + f"), over the preprocessor's memory_budget_bytes={_mib(self.memory_budget_bytes)}",
                )
        return items

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
                # An audio clip's samples depend on no option; a video's pixels not on use_audio_in_video.
                read = {} if kind == "audio" else {k: v for k, v in options.as_dict().items()
                                                   if k != "use_audio_in_video"}
                key = content_key(data, kind, self.cache_identity, sorted(read.items()))
            except (TypeError, ValueError, BufferError):
                return None, None  # an array whose memory cannot be read as bytes (object dtype): not cached
            return key, self.cache.get(key)

    def _plan(self, kind: Literal["image", "video", "audio"], obj: Any, item: str, options: RequestOptions) -> Item:
        """One item: loaded, looked up in the cache (a hit plans nothing more), then planned by its kind."""
        if kind not in self.config.modalities:
            raise InvalidRequest(item, f"the {self.config.family} family takes no {kind}s")
        timer = StageTimer()
        with timer.stage("load"):
            src = load_source(obj, item, self.limits)
        return self._plan_source(kind, src, options, timer)

    def _plan_source(self, kind: Literal["image", "video", "audio"], src: Source, options: RequestOptions,
                     timer: StageTimer, audio: AudioInfo | None = None) -> Item:
        key, hit = self._lookup(src, kind, options, timer)
        if hit is not None:
            return hit_item(kind, src, key, hit, timer, self.config)
        if kind == "audio":
            return Item(self._plan_audio(src, timer, audio, key), timer)
        if kind == "image":
            return Item(self._plan_image(src, options, timer, key), timer)
        return Item(self._plan_video(src, options, timer, key), timer)

    def _plan_audio(self, src: Source, timer: StageTimer, info: AudioInfo | None, key: bytes | None) -> ItemPlan:
        if info is None:
            with timer.stage("probe"):
                info = probe_audio(src, self.limits)
        assert info is not None
        return ItemPlan("audio", src, (0, 0), (0, 0, 0), (0, 0), nbytes=info.working_bytes(self.limits), key=key,
                        audio=info)

    def _video_track(self, video: Item, options: RequestOptions) -> Item | None:
        """A video's own audio track as an audio item (``use_audio_in_video``); None for a video without one."""
        src = video.plan.src
        if src.kind != "encoded":
            raise InvalidRequest(src.item, "use_audio_in_video needs the encoded video: decoded frames carry no "
                                           "audio track")
        track = Source(f"{src.item}, its audio track", "encoded", data=src.data)
        timer = StageTimer()
        with timer.stage("probe"):
            info = probe_audio(track, self.limits, required=False)
        return None if info is None else self._plan_source("audio", track, options, timer, info)

    def _plan_image(self, src: Source, options: RequestOptions, timer: StageTimer, key: bytes | None) -> ItemPlan:
        with timer.stage("load"):
            info = probe_image(src, self.limits)
        cfg = self.config
        views = None
        try:
            if cfg.layout == "pixels":
                views = tuple(cfg.image_views(info.height, info.width, options))
                # The largest resize bounds the working memory (views are made one resize at a time).
                target = max((v.size for v in views), key=lambda s: s[0] * s[1])
                grid = (len(views), *views[0].out_size)
            else:
                target = cfg.image_target(info.height, info.width, options)
                grid = cfg.grid(1, target)
        except ValueError as exc:
            raise LimitExceeded(src.item, str(exc)) from None
        scale = jpeg_draft_scale(src, info, target) if self.fast_jpeg and self.device == "cpu" else 1
        nbytes = image_working_bytes((info.height, info.width), target, _feature_bytes(grid, cfg),
                                     via_pillow=not is_plain_jpeg(src, info) or scale > 1)
        return ItemPlan("image", src, target, grid, (info.height, info.width), image_info=info, nbytes=nbytes,
                        jpeg_scale=scale, views=views, key=key, meta=cfg.item_meta(grid))

    def _plan_video(self, src: Source, options: RequestOptions, timer: StageTimer, key: bytes | None) -> ItemPlan:
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
        return self._video_plan(src, sampling, info, size, key)

    def _video_plan(self, src: Source, sampling: VideoSampling, info: VideoInfo | None,
                    size: tuple[int, int], key: bytes | None) -> ItemPlan:
        cfg = self.config
        indices, target = sampling.indices, sampling.target
        grid = cfg.grid(len(indices), target)
        # Working memory follows the larger of the intermediate and the final frames.
        held = max(target, sampling.presize or target, key=lambda s: s[0] * s[1])
        runs: tuple[int, ...] = (0,)
        if info is None:  # decoded frames given: they are all in memory already; one pass over them
            chunk = len(indices)
            nbytes = image_working_bytes(size, held, _feature_bytes(grid, cfg), via_pillow=False, frames=chunk)
        else:
            chunk = video_chunk_frames(size, held, cfg.temporal_patch_size, len(indices))
            runs = self._runs(info, indices)
            nbytes = video_working_bytes(size, held, chunk, _feature_bytes(grid, cfg), decoders=len(runs),
                                         step=cfg.temporal_patch_size)
        call = chunk
        if info is not None and self.video_decoder in memory.PER_CALL_DECODERS:
            call = video_call_frames(size, chunk, len(indices))
            nbytes += (call - chunk) * 3 * size[0] * size[1]  # the call's decoded frames beyond one chunk
            nbytes += memory.decoder_held_bytes(self.video_decoder, size, len(indices))
        return ItemPlan("video", src, target, grid, size, indices=indices, info=info, sample_fps=sampling.sample_fps,
                        presize=sampling.presize, nbytes=nbytes, chunk=chunk, call=call, video_fps=sampling.video_fps,
                        key=key, meta=cfg.item_meta(grid), runs=runs)

    def _runs(self, info: VideoInfo, indices: list[int]) -> tuple[int, ...]:
        """Where a video's keyframe runs begin when they decode at once (``(0,)`` unless PyAV decodes and threads
        may be lent)."""
        most = min(1 + self.spare_threads, memory.SPLIT_MAX_DECODERS)
        if self.video_decoder != "pyav" or most < 2:
            return (0,)
        return tuple(split_starts(info, indices, most, self.config.temporal_patch_size))

    def groups(self, items: list[Item]) -> list[list[int]]:
        """Which plans run together as one slot job: plain JPEGs in batches of up to ``image_batch`` (one
        batched decode call, within the memory budget), every other item on its own."""
        groups: list[list[int]] = []
        batch: list[int] = []
        batch_bytes = 0
        budget = self.memory_budget_bytes
        for i, p in enumerate(item.plan for item in items):
            if self.image_batch > 1 and p.kind == "image" and p.image_info is not None \
                    and p.jpeg_scale == 1 and is_plain_jpeg(p.src, p.image_info):
                if batch and (len(batch) == self.image_batch or (budget and batch_bytes + p.nbytes > budget)):
                    groups.append(batch)
                    batch, batch_bytes = [], 0
                batch.append(i)
                batch_bytes += p.nbytes
            else:
                groups.append([i])
        if batch:
            groups.append(batch)
        return groups


def hit_item(kind: Literal["image", "video", "audio"], src: Source, key: bytes | None, hit: Entry, timer: StageTimer,
             config: Any) -> Item:
    """A cache hit: the plan its entry recorded, nothing more to decide."""
    v = hit.value
    plan = ItemPlan(kind, src, v["target"], v["grid"], v["source_size"], indices=v["indices"],
                    sample_fps=v["sample_fps"], video_fps=v["video_fps"], key=key, meta=config.item_meta(v["grid"]))
    return Item(plan, timer, cached=hit)


def as_list(x: Any) -> list[Any]:
    if x is None:
        return []
    if isinstance(x, (list, tuple)):
        return list(x)
    return [x]
