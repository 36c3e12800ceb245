"""Execution: one slot job (one item, or a batch of plain JPEGs) decoded, resized, normalized and patchified
into its rows on the slot's device. Slot threads and slot processes run the same :class:`Executor`."""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable, Generator
from typing import Any, TypeVar

import torch

from .. import ops
from ..cache import holds_more
from ..errors import MediaError, MemoryExhausted, describe
from ..media.audio import decode_audio
from ..media.image import decode_image, decode_jpeg_cuda, decode_jpeg_scaled, decode_jpegs, is_plain_jpeg
from ..media.nvimgcodec import NvImageCodecDecoder
from ..media.sources import MediaLimits
from ..media.video import get_video_decoder, rotate_frames
from ..slots import Slot
from .devices import _normalize_patchify_impl, same_device
from .memory import _feature_bytes
from .plan import Item, ItemPlan
from .split_decode import split_frame_chunks, split_plan
from .types import Decoded


@dataclasses.dataclass(frozen=True)
class Executor:
    """Runs slot jobs; holds only what decides the pixels (picklable: a slot process gets a copy)."""

    config: Any
    """The family's spec (:class:`gpu_mm.models.base.ModelSpec`)."""
    limits: MediaLimits
    video_decoder: str
    image_decoder: str
    output: str = "device"
    """``device``, ``cpu`` or ``pinned``: where finished rows go (see :class:`gpu_mm.Preprocessor`)."""

    def run(self, slot: Slot, group: list[Item]) -> list[tuple[torch.Tensor, Decoded]]:
        """Run one slot job: one item, or a batch of plain JPEGs decoded in one call.

        Raises:
            MemoryExhausted: the device (or the host) ran out of memory for it; nothing of it is held after.
        """
        item = group[0].plan.src.item if len(group) == 1 else f"{group[0].plan.src.item} (a batch of {len(group)})"
        return within_memory(lambda: self._run(slot, group), item)

    def _run(self, slot: Slot, group: list[Item]) -> list[tuple[torch.Tensor, Decoded]]:
        if len(group) == 1:
            return [self._execute(slot, group[0])]
        t0 = time.perf_counter()
        jpegs = [(p.plan.src, p.plan.image_info) for p in group if p.plan.image_info is not None]
        if self.image_decoder == "nvimgcodec":
            images = self._image_decoder(slot).decode(jpegs)
        else:
            images = decode_jpegs(jpegs, slot.device if self.image_decoder == "nvjpeg" else "cpu")
        share = (time.perf_counter() - t0) / len(group)
        decoded = Decoded(self.image_decoder, batch_size=len(group))
        for item in group:
            item.timer.add("decode", share)
        out: list[tuple[torch.Tensor, Decoded] | None] = [None] * len(group)
        for members in same_size_runs(group, images, batch_resize_bytes(self.config)):
            if len(members) == 1:
                k = members[0]
                out[k] = self._finish(slot, group[k], images[k].unsqueeze(0), decoded)
                continue
            rows = self._finish_together(slot, [group[k] for k in members], [images[k] for k in members])
            for k, r in zip(members, rows):
                out[k] = (r, decoded)
        return [r for r in out if r is not None]

    def _finish_together(self, slot: Slot, items: list[Item], images: list[torch.Tensor]) -> list[torch.Tensor]:
        """Images of one size with one plan (target, no views) stacked, resized in one call and normalized (and
        patchified) in one launch; each item's rows a slice of the result (placed as :meth:`place` places rows).
        The same bits as one item at a time: every op computes each image on its own."""
        cfg = self.config
        plan = items[0].plan
        b = len(items)
        t0 = time.perf_counter()
        frames = to_device(torch.stack(images), torch.device(slot.device))  # [B, 3, H, W]
        t1 = time.perf_counter()
        if plan.presize is not None:
            frames = ops.resize(frames, plan.presize, "bilinear")
        frames = ops.resize(frames, plan.target, cfg.image_resample)
        t2 = time.perf_counter()
        if cfg.layout == "pixels":
            rows = torch.empty((b, *cfg.item_shape(plan.grid)), dtype=cfg.output_dtype, device=frames.device)
            self._normalize_into(frames.unsqueeze(1), rows)
            parts = list(rows.unbind(0))
        else:
            pv, grid = self._normalize_patchify(frames.unsqueeze(1))  # [B, 1, 3, h, w]: B items of one frame
            if grid != plan.grid:  # pragma: no cover - plan and run share the arithmetic
                raise RuntimeError(f"{plan.src.item}: planned grid {plan.grid} but produced {grid}")
            parts = list(pv.chunk(b))
        t3 = time.perf_counter()
        for item in items:
            item.timer.add("transfer", (t1 - t0) / b)
            item.timer.add("resize", (t2 - t1) / b)
            item.timer.add("normalize_patchify", (t3 - t2) / b)
        return [self.place(slot, item, rows) for item, rows in zip(items, parts)]

    def run_plans(self, slot: Slot, plans: list[ItemPlan],
                  outs: list[torch.Tensor | None]) -> list[tuple[Decoded, dict[str, float]]]:
        """A slot process's job: ``plans`` as the parent sent them, each item's rows written into its ``outs``
        tensor (shared memory); returns each item's decoder and stage times."""
        # No cache key here: the parent's slot thread keeps what the cache needs (a slot process's rows are its own).
        items = [Item(dataclasses.replace(plan, key=None), out=out) for plan, out in zip(plans, outs)]
        results = self.run(slot, items)
        return [(decoded, item.timer.stages) for item, (_, decoded) in zip(items, results)]

    def _execute(self, slot: Slot, item: Item) -> tuple[torch.Tensor, Decoded]:
        """Decode, resize, normalize and patchify one planned item on ``slot``'s device (an audio item: decode
        to 16 kHz samples, on the CPU; the call's clips become features together, :meth:`audio_features`)."""
        if item.plan.kind == "audio":
            with item.timer.stage("decode"):
                clip = decode_audio(item.plan.src, self.limits)
            return torch.from_numpy(clip.samples), Decoded("pyav")
        if item.plan.kind == "video" and item.plan.info is not None:
            return self._execute_video(slot, item)
        with item.timer.stage("decode"):
            frames, decoder = self._decode(slot, item)  # uint8 [T, 3, H, W]
        return self._finish(slot, item, frames, decoder)

    def _finish(self, slot: Slot, item: Item, frames: torch.Tensor,
                decoder: Decoded) -> tuple[torch.Tensor, Decoded]:
        """Upload (if needed), resize, normalize and lay out decoded uint8 ``[T, 3, H, W]`` frames."""
        cfg = self.config
        frames = self._upload(slot, item, frames)
        out = item.out if item.out is not None and same_device(item.out.device, frames.device) else None
        if cfg.layout == "pixels":  # whole images: an image's views, or a video's frames one image each
            if out is None:
                out = torch.empty(cfg.item_shape(item.plan.grid), dtype=cfg.output_dtype, device=frames.device)
            if item.plan.views is not None:
                self._render_views(item, frames, out)
            else:
                frames = self._resize(item, frames)
                with item.timer.stage("normalize_patchify"):
                    self._normalize_into(frames, out)
            return self.place(slot, item, out), decoder
        frames = self._resize(item, frames)
        with item.timer.stage("normalize_patchify"):
            pv, grid = self._normalize_patchify(frames, out)
        if grid != item.plan.grid:  # pragma: no cover - plan and run share the arithmetic
            raise RuntimeError(f"{item.plan.src.item}: planned grid {item.plan.grid} but produced {grid}")
        return self.place(slot, item, pv), decoder

    def _upload(self, slot: Slot, item: Item, frames: torch.Tensor) -> torch.Tensor:
        """Frames (uint8 ``[T, 3, H, W]``, any device) on the slot's device."""
        with item.timer.stage("transfer"):
            return to_device(frames, torch.device(slot.device))

    def _resize(self, item: Item, frames: torch.Tensor) -> torch.Tensor:
        """Frames shown as displayed, resized to the plan's target."""
        with item.timer.stage("resize"):
            if item.plan.info is not None and item.plan.info.rotation:
                frames = rotate_frames(frames, item.plan.info.rotation)
            if item.plan.presize is not None:
                frames = ops.resize(frames, item.plan.presize, "bilinear")
            resample = self.config.video_resample if item.plan.kind == "video" else self.config.image_resample
            return ops.resize(frames, item.plan.target, resample)

    def _render_views(self, item: Item, frames: torch.Tensor, out: torch.Tensor) -> None:
        """An image's views (``layout = "pixels"``), each normalized into its slot of ``out``; views that share
        a crop and a size share one resize."""
        assert item.plan.views is not None
        made: tuple[Any, torch.Tensor] | None = None
        for i, view in enumerate(item.plan.views):
            with item.timer.stage("resize"):
                key = (view.crop, view.size)
                if made is None or made[0] != key:
                    src = frames
                    if view.crop is not None:
                        top, left, h, w = view.crop
                        src = frames[..., top : top + h, left : left + w]
                    made = (key, ops.resize(src, view.size, self.config.image_resample))
                image = made[1]
                if view.tile is not None:
                    top, left, h, w = view.tile
                    image = image[..., top : top + h, left : left + w]
            with item.timer.stage("normalize_patchify"):
                self._normalize_into(image, out[i : i + 1])

    def _normalize_into(self, frames: torch.Tensor, out: torch.Tensor) -> None:
        """uint8 ``[k, 3, H, W]`` rescaled and normalized (``output_dtype`` uint8: as they are) into ``out``."""
        cfg = self.config
        if cfg.output_dtype == torch.uint8:
            out.copy_(frames)
        else:
            out.copy_(ops.normalize(frames, cfg.image_mean, cfg.image_std))

    def place(self, slot: Slot, item: Item, pv: torch.Tensor) -> torch.Tensor:
        """Put an item's finished rows where the caller wants them (pool block, device, CPU or pinned). Rows the
        cache will keep get storage of their own here, on the slot's thread, not on the caller's loop: a slice of a
        batch's rows would keep the whole batch alive behind an entry that counts one item, and a pool block goes
        back to its pool."""
        keep = item.plan.key is not None
        if item.out is not None:
            into_block(item, pv)
            if keep:
                item.kept = pv if pv is not item.out and not holds_more(pv) else pv.clone()
            return item.out
        return self._placed(slot, pv.clone() if keep and holds_more(pv) else pv)

    def _placed(self, slot: Slot, pv: torch.Tensor) -> torch.Tensor:
        """A finished tensor on the device, the CPU or pinned host memory, as ``output`` says."""
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

    def audio_features(self, slot: Slot, items: list[Item], clips: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        """A call's clips (its audio items' samples, in order) as the family's audio features, computed together
        on the slot's device and placed as :meth:`place` places rows; the time goes to each item's
        ``audio_features`` stage."""
        t0 = time.perf_counter()
        features = within_memory(lambda: self.config.audio_features(clips, torch.device(slot.device)),
                                 items[0].plan.src.item if len(items) == 1 else f"the call's {len(items)} clips")
        out = {k: self._placed(slot, t) for k, t in features.items()}
        share = (time.perf_counter() - t0) / max(len(items), 1)
        for item in items:
            item.timer.add("audio_features", share)
        return out

    def _execute_video(self, slot: Slot, item: Item) -> tuple[torch.Tensor, Decoded]:
        """A video, ``item.plan.chunk`` frames at a time: decode, resize and patchify each group straight into the
        item's output rows, so memory follows the output and the chunk, not the source's frame count."""
        cfg = self.config
        device = torch.device(slot.device)
        if item.out is not None and same_device(item.out.device, device):
            out = item.out
        else:
            out = torch.empty(cfg.item_shape(item.plan.grid), dtype=cfg.output_dtype, device=device)
        try:
            decoded = self._video_chunks(slot, item, self.video_decoder, out)
        except MediaError as exc:
            # A codec the backend lacks (UnsupportedMedia), or a stream it failed on (DecodeError: e.g. a
            # codec this chip's NVDEC does not have): PyAV decodes it instead, or names what is wrong.
            if self.video_decoder == "pyav":
                raise
            decoded = dataclasses.replace(self._video_chunks(slot, item, "pyav", out), fallback_reason=exc.reason)
        return self.place(slot, item, out), decoded

    def _video_chunks(self, slot: Slot, item: Item, decoder_name: str, out: torch.Tensor) -> Decoded:
        """Decode the item's planned frames a chunk at a time (PyAV given spare threads: its keyframe runs at once,
        their chunks in any order), each resized and laid out into the rows its position says."""
        assert item.plan.info is not None and item.plan.indices is not None
        cfg = self.config
        tp = cfg.temporal_patch_size
        rows_per_step = item.plan.grid[1] * item.plan.grid[2] if cfg.layout == "patches" else 1
        decoder = self._decoder(slot, decoder_name)
        starts, frames_per_run = split_plan(item.plan, tp, item.plan.decode_threads if decoder_name == "pyav" else 1)
        chunks: Generator[tuple[int, torch.Tensor], None, None] = (
            split_frame_chunks(item, starts, frames_per_run) if len(starts) > 1 else frame_chunks(decoder, item))
        done = 0
        with contextlib.closing(chunks):
            for first, frames in chunks:
                frames = self._resize(item, self._upload(slot, item, frames.permute(0, 3, 1, 2)))
                steps = -(-frames.shape[0] // tp)
                begin = first // tp * rows_per_step
                with item.timer.stage("normalize_patchify"):
                    if cfg.layout == "pixels":  # one image per frame
                        self._normalize_into(frames, out[begin : begin + steps])
                    else:
                        self._normalize_patchify(frames, out[begin : begin + steps * rows_per_step])
                done += frames.shape[0]
        if done != len(item.plan.indices):  # pragma: no cover - decoders raise for frames they cannot reach
            raise RuntimeError(f"{item.plan.src.item}: decoded {done} of {len(item.plan.indices)} planned frames")
        return Decoded(decoder.name, threads=len(starts))

    def _decode(self, slot: Slot, item: Item) -> tuple[torch.Tensor, Decoded]:
        src = item.plan.src
        if item.plan.kind == "image":
            if item.plan.jpeg_scale > 1:
                assert item.plan.image_info is not None
                return decode_jpeg_scaled(src, item.plan.image_info, item.plan.jpeg_scale).unsqueeze(0), Decoded(
                    f"cpu-jpeg-1/{item.plan.jpeg_scale}")
            if self.image_decoder == "nvjpeg":
                gpu = decode_jpeg_cuda(src, slot.device, self.limits, item.plan.image_info)
                if gpu is not None:
                    return gpu.unsqueeze(0), Decoded("nvjpeg")
            info = item.plan.image_info
            if self.image_decoder == "nvimgcodec" and info is not None and is_plain_jpeg(src, info):
                return self._image_decoder(slot).decode([(src, info)])[0].unsqueeze(0), Decoded("nvimgcodec")
            return decode_image(src, self.limits, item.plan.image_info).unsqueeze(0), Decoded("cpu")
        assert src.kind == "array" and item.plan.indices is not None
        frames = src.pixels
        if item.plan.indices != list(range(frames.shape[0])):  # every frame in order (a drop-in's call): no copy
            frames = frames[item.plan.indices]
        return frames.permute(0, 3, 1, 2), Decoded("array")

    @staticmethod
    def _image_decoder(slot: Slot) -> NvImageCodecDecoder:
        """The slot thread's own nvImageCodec decoder."""
        decoder = slot.state.get("image_decoder")
        if decoder is None:
            decoder = slot.state["image_decoder"] = NvImageCodecDecoder(slot.device)
        return decoder

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


def frame_chunks(decoder: Any, item: Item) -> Any:
    """Yield ``(position, frames)``: the item's frames ``item.plan.chunk`` at a time as uint8 ``[k, H, W, 3]``.

    Decoders that stream (``iter_frames_at``) fill one reused buffer frame by frame; others are asked for
    ``item.plan.call`` frames per call, yielded a chunk at a time. Decode time goes to the item's ``decode`` stage."""
    assert item.plan.info is not None and item.plan.indices is not None
    indices, info, timer, chunk = item.plan.indices, item.plan.info, item.timer, item.plan.chunk
    iterate = getattr(decoder, "iter_frames_at", None)
    if iterate is None:
        call = max(item.plan.call, chunk)
        for start in range(0, len(indices), call):
            with timer.stage("decode"):
                decoded = decoder.get_frames_at(item.plan.src, info, indices[start : start + call])
            for k in range(0, decoded.shape[0], chunk):
                yield start + k, decoded[k : k + chunk]
            del decoded
        return
    buf = torch.empty((min(chunk, len(indices)), info.height, info.width, 3), dtype=torch.uint8)
    # Frames go into the buffer with numpy's copy: a torch copy wakes the intra-op thread pool, whose spinning
    # threads then compete with FFmpeg's for the cores while the next frames decode.
    view = buf.numpy()
    stream = iterate(item.plan.src, info, indices)
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


_T = TypeVar("_T")


def within_memory(work: Callable[[], _T], item: str) -> _T:
    """``work()``, its allocation failures (torch's on CUDA, the CPU allocator's RuntimeError, Python's
    MemoryError) raised as :class:`MemoryExhausted` naming ``item``; other errors as they are."""
    try:
        return work()
    except (MemoryError, RuntimeError) as exc:  # torch.OutOfMemoryError is a RuntimeError
        if not (isinstance(exc, (torch.OutOfMemoryError, MemoryError))
                or "DefaultCPUAllocator: can't allocate memory" in str(exc)):
            raise
        reason = f"out of memory while computing it ({describe(exc)}); the device holds more than the memory " \
                 "budget assumed"
    # Raised outside the handler: the allocator's exception, and the tensors its traceback holds, are gone.
    raise MemoryExhausted(item, reason)


def to_device(frames: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Frames on ``device`` (from the CPU to a GPU through pinned memory, without blocking the host)."""
    if same_device(frames.device, device):
        return frames
    if device.type == "cuda" and frames.device.type == "cpu":
        return frames.pin_memory().to(device, non_blocking=True)
    return frames.to(device)


def batch_resize_bytes(config: Any) -> Callable[[Item], tuple[int, int]]:
    """Per item of a batch: (the working bytes its plan reserved beyond its decoded image and its rows, what it
    holds while resized with others: a stacked copy, float32 copies of the source and the target (torch's CUDA
    resize works in float32) and the resized image)."""
    def figures(item: Item) -> tuple[int, int]:
        (h, w), (th, tw) = item.plan.source_size, item.plan.target
        reserved = item.plan.nbytes - 3 * h * w - _feature_bytes(item.plan.grid, config)
        return reserved, (3 + 12) * h * w + (12 + 3) * th * tw
    return figures


def same_size_runs(group: list[Item], images: list[torch.Tensor],
                   figures: Callable[[Item], tuple[int, int]]) -> list[list[int]]:
    """A batch's items in runs that can be resized and normalized together: one decoded size, one plan (target,
    pre-resize, the whole image as it is resized), in order of first appearance, each run cut so that what its
    members hold together stays within what the whole batch reserved (the budget counts each item once)."""
    spare = sum(figures(item)[0] for item in group)
    runs: dict[Any, list[int]] = {}
    for k, (item, image) in enumerate(zip(group, images)):
        plan = item.plan
        key = (tuple(image.shape), plan.target, plan.presize) if _whole_image(plan) else ("alone", k)
        runs.setdefault(key, []).append(k)
    out: list[list[int]] = []
    for members in runs.values():
        run: list[int] = []
        held = 0
        for k in members:
            need = figures(group[k])[1]
            if run and held + need > spare:
                out.append(run)
                run, held = [], 0
            run.append(k)
            held += need
        out.append(run)
    return out


def _whole_image(plan: ItemPlan) -> bool:
    """Whether an image becomes its resized self alone (patch rows, or one view of all of it), so that same-size
    images with the same plan are resized and normalized together."""
    views = plan.views
    return plan.kind == "image" and (views is None or (len(views) == 1 and views[0].crop is None
                                                       and views[0].tile is None and views[0].size == plan.target))


def into_block(item: Item, rows: torch.Tensor) -> None:
    """An item's rows (unless made in place) and its grid row into its pool block. On CUDA the grid is filled
    by kernels on the current stream: no host-to-device copy, no synchronization."""
    if item.out is not None and rows is not item.out:
        item.out.copy_(rows)
    if item.grid_out is not None:
        if item.grid_out.dim() == 0:
            item.grid_out.fill_(item.plan.meta[0])
        else:
            for k, v in enumerate(item.plan.meta):
                item.grid_out[k].fill_(v)


def fill_block(items: list[tuple[Item, torch.Tensor]]) -> None:
    """Rows made by another call's computation into this call's pool block."""
    for item, rows in items:
        into_block(item, rows)
