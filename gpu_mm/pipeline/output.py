"""Output: one pool block leased for a call's features, and the features assembled under the family's keys with a
report per item."""

from __future__ import annotations

from typing import Any, TypeVar

import torch

from ..audio import SAMPLE_RATE
from ..models.base import VideoSampling
from .execute import into_block
from .plan import Item
from .routing import Call
from .types import Features, ItemReport

F = TypeVar("F", bound=Features)


def lease(pool: Any, config: Any, plans: list[Item]) -> Any:
    """With an output pool: lease one block for all features, point each item at its rows, and copy the
    rows of cache hits in."""
    if pool is None or not plans:
        return None
    cfg = config
    layout: dict[str, tuple[tuple[int, ...], torch.dtype]] = {}
    for kind, key in PIXEL_KEYS.items():
        group = [p for p in plans if p.plan.kind == kind]
        if group:
            shapes = [cfg.item_shape(p.plan.grid) for p in group]
            layout[key] = ((sum(s[0] for s in shapes), *shapes[0][1:]), cfg.output_dtype)
            meta_key = cfg.meta_keys.get(kind)
            if meta_key is not None:
                layout[meta_key] = (_meta_shape(group), torch.long)
    lease = pool.lease(layout)
    offsets = {"image": 0, "video": 0}
    counts = {"image": 0, "video": 0}
    for p in plans:
        n = cfg.item_shape(p.plan.grid)[0]
        p.out = lease.tensors[PIXEL_KEYS[p.plan.kind]][offsets[p.plan.kind] : offsets[p.plan.kind] + n]
        meta_key = cfg.meta_keys.get(p.plan.kind)
        if meta_key is not None:
            p.grid_out = lease.tensors[meta_key][counts[p.plan.kind]]
        offsets[p.plan.kind] += n
        counts[p.plan.kind] += 1
        if p.cached is not None:  # a hit: its rows go into the block now, nothing runs for it
            into_block(p, p.cached.rows)
    return lease


PIXEL_KEYS = {"image": "pixel_values", "video": "pixel_values_videos"}


def _meta_shape(group: list[Item]) -> tuple[int, ...]:
    """The per-item tensor's shape: one row per item, or one number per item for a one-value meta."""
    width = len(group[0].plan.meta)
    return (len(group),) if width == 1 else (len(group), width)


def assemble(call: Call, features_class: type[F], config: Any, output: str,
             audio: dict[str, torch.Tensor] | None = None) -> F:
    """The call's features: each kind's rows (joined, or the block's), the family's per-video fields, ``audio``
    (the call's audio features, by name) and a report per item."""
    plans, outs, lease = call.items, call.outs, call.lease
    feats = features_class()
    cfg = config
    img = [(p, o) for p, o in zip(plans, outs) if p.plan.kind == "image"]
    vid = [(p, o) for p, o in zip(plans, outs) if p.plan.kind == "video"]
    if lease is not None:
        feats.handle = lease.handle
    for kind, group in (("image", img), ("video", vid)):
        if not group:
            continue
        key, meta_key = PIXEL_KEYS[kind], cfg.meta_keys.get(kind)
        if lease is not None:  # rows and grids are already in the block, written by the slot jobs
            pv = lease.tensors[key]
            meta = lease.tensors.get(meta_key)
        else:
            pv = join([o[0] for _, o in group], pinned=output == "pinned")
            meta = torch.tensor([p.plan.meta for p, _ in group], dtype=torch.long)
            meta = meta.reshape(_meta_shape([p for p, _ in group]))
        setattr(feats, key, pv)
        if meta_key is not None:
            setattr(feats, meta_key, meta)
    if vid:
        sampled = [VideoSampling(p.plan.indices or [], p.plan.sample_fps or 0.0, p.plan.target, p.plan.video_fps)
                   for p, _ in vid]
        for name, value in cfg.video_fields(sampled).items():
            setattr(feats, name, value)
    for name, value in (audio or {}).items():
        setattr(feats, name, value)
    clip = 0
    for item, (rows, decoded) in zip(plans, outs):
        plan = item.plan
        if plan.kind == "audio":
            feats.items.append(_audio_report(item, rows, decoded, clip, audio or {}, cfg))
            clip += 1
            continue
        feats.items.append(
            ItemReport(
                kind=plan.kind, item=plan.src.item, source_size=plan.source_size, resized=plan.target,
                grid_thw=plan.grid, num_tokens=cfg.token_count(plan.grid), decoder=str(decoded),
                frame_indices=plan.indices, sample_fps=plan.sample_fps, video_fps=plan.video_fps,
                timings=dict(item.timer.stages), cache=item.cache_state, decoded=decoded, working_bytes=plan.nbytes,
            )
        )
    return feats


def _audio_report(item: Item, samples: torch.Tensor, decoded: Any, clip: int, audio: dict[str, torch.Tensor],
                  cfg: Any) -> ItemReport:
    """An audio item's report: its valid feature frames (``grid_thw`` is ``(1, mel bins, frames)``), their
    tokens and its seconds."""
    mask = audio.get("feature_attention_mask")
    frames = int(mask[clip].sum()) if mask is not None else 0
    bins = int(audio["input_features"].shape[1]) if "input_features" in audio else 0
    return ItemReport(kind="audio", item=item.plan.src.item, source_size=(0, 0), resized=(0, 0),
                      grid_thw=(1, bins, frames), num_tokens=cfg.audio_token_count(frames) if frames else 0,
                      decoder=str(decoded), timings=dict(item.timer.stages), cache=item.cache_state, decoded=decoded,
                      working_bytes=item.plan.nbytes, seconds=samples.numel() / SAMPLE_RATE)


def join(parts: list[torch.Tensor], *, pinned: bool) -> torch.Tensor:
    """Items' rows as one tensor; with ``pinned`` the joined copy is page-locked too (torch.cat's is not)."""
    if len(parts) == 1:
        return parts[0]
    rows = sum(p.shape[0] for p in parts)
    if not pinned and _adjacent(parts):  # slices of one batch's rows, in order: already one tensor
        return parts[0].as_strided((rows, *parts[0].shape[1:]), parts[0].stride())
    out = torch.empty((rows, *parts[0].shape[1:]), dtype=parts[0].dtype, device=parts[0].device,
                      pin_memory=pinned and parts[0].device.type == "cpu")
    return torch.cat(parts, out=out)


def _adjacent(parts: list[torch.Tensor]) -> bool:
    """Whether contiguous ``parts`` lie one after another in one storage, so that they are one tensor's rows."""
    first = parts[0]
    storage = first.untyped_storage().data_ptr()
    end = first.storage_offset()
    for p in parts:
        if (not p.is_contiguous() or p.untyped_storage().data_ptr() != storage or p.storage_offset() != end
                or p.dtype != first.dtype or p.shape[1:] != first.shape[1:]):
            return False
        end += p.numel()
    return True


class LeaseGuard:
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
