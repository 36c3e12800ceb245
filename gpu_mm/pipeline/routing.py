"""Routing: where each item's rows come from. A cache hit now; content another call is computing, by joining that
computation (single flight); everything else computed on a slot, then kept."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Sequence
from typing import Any

import torch

from .._aio import wait_until
from ..cache import FeatureCache
from ..errors import MediaError, ProcessingTimeout
from .plan import Item, Planner
from .types import Decoded


@dataclasses.dataclass
class Call:
    """One call, routed: each item's rows come from the cache (already in ``outs``), from a slot job (one per
    group of ``groups``, indices into ``plans``), or from another call's computation of the same content in
    flight (``followers``). The synchronous and asynchronous APIs run the same routing."""

    items: list[Item]
    lease: Any
    outs: list[Any]
    groups: list[list[int]]
    followers: list[tuple[int, asyncio.Future[Any]]]

    def members(self, group: list[int]) -> list[Item]:
        return [self.items[i] for i in group]

    def fill(self, group: list[int], results: Sequence[Any]) -> None:
        for i, out in zip(group, results):
            self.outs[i] = out


class Router:
    """Routes calls through one feature cache and the computations in flight."""

    def __init__(self, cache: FeatureCache, planner: Planner) -> None:
        self.cache = cache
        self.planner = planner
        self.inflight: dict[bytes, asyncio.Future[Any]] = {}
        """Content keys being computed now, each with the future its joiners wait on."""

    def __getstate__(self) -> dict[str, Any]:
        # A copy (deepcopy, pickle) joins no computation of the original's.
        return {**self.__dict__, "inflight": {}}

    def route(self, plans: list[Item], lease: Any, loop: asyncio.AbstractEventLoop | None = None) -> Call:
        """Where each item's rows come from: hits from the cache now; with ``loop`` (the async API), items
        whose content another call is computing join that computation, and the rest announce theirs; then
        the remaining items grouped into slot jobs."""
        call = Call(plans, lease, [None] * len(plans), [], [])
        fresh: list[int] = []
        for i, p in enumerate(plans):
            if p.cached is not None:
                call.outs[i] = self._from_cache(p)
            elif loop is not None and p.plan.key is not None and p.plan.key in self.inflight:
                p.cache_state = "coalesced"  # the same content is being computed: wait for that
                self.cache.coalesced()
                call.followers.append((i, self.inflight[p.plan.key]))
            else:
                fresh.append(i)
                if loop is not None and p.plan.key is not None:
                    p.flight = self.inflight[p.plan.key] = loop.create_future()
        call.groups = [[fresh[k] for k in group] for group in self.planner.groups([plans[i] for i in fresh])]
        return call

    def _from_cache(self, item: Item) -> tuple[torch.Tensor, Decoded]:
        assert item.cached is not None
        item.cache_state = "hit"
        return item.cached.rows, item.cached.value["decoder"]

    def keep(self, item: Item, out: tuple[torch.Tensor, Decoded]) -> None:
        """Put a computed item in the cache (a copy when its rows live in a reusable pool block)."""
        plan = item.plan
        if plan.key is None:
            return
        rows, decoder = out
        if item.out is not None:  # its rows are in a block the caller will hand back: a copy of their own
            rows = item.kept if item.kept is not None else rows.clone()
        self.cache.put(plan.key, rows, {
            "target": plan.target, "grid": plan.grid, "source_size": plan.source_size, "indices": plan.indices,
            "sample_fps": plan.sample_fps, "video_fps": plan.video_fps, "decoder": decoder,
        })
        item.cache_state = "miss"

    def landed(self, group: list[Item]) -> Any:
        """``on_done`` for a slot job: when its work really ends (whether or not its caller is still there),
        keep its items in the cache and hand the outcome to every call that joined them."""
        if not any(p.flight is not None for p in group):
            return None

        def on_done(result: Any, exc: BaseException | None) -> None:
            for k, item in enumerate(group):
                flight = item.flight
                if flight is None:
                    continue
                if self.inflight.get(item.plan.key) is flight:  # type: ignore[arg-type]
                    del self.inflight[item.plan.key]  # type: ignore[arg-type]
                if flight.done():
                    continue
                if exc is None:
                    self.keep(item, result[k])
                    flight.set_result(result[k])
                else:
                    if isinstance(exc, asyncio.CancelledError):
                        exc = ProcessingTimeout("the computation this item joined was cancelled before it ran")
                    flight.set_exception(exc)
                    flight.exception()  # retrieved: nobody may have joined

        return on_done

    async def follow(self, item: Item, flight: asyncio.Future[Any], deadline: float | None) -> Any:
        """Wait, until this call's own deadline, for a computation of the same content another call started;
        its failure is this item's failure, named as this item."""
        if not await wait_until(flight, deadline):
            raise ProcessingTimeout(f"{item.plan.src.item}: the computation of the same content did not finish by "
                                    "this request's deadline")
        exc = flight.exception()
        if isinstance(exc, MediaError):
            raise type(exc)(item.plan.src.item, exc.reason) from exc
        if exc is not None:
            raise exc
        return flight.result()
