"""One call's flow, the same for the synchronous and the asynchronous API: plan, route through the cache, run the
slot jobs, assemble the features."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import copy
import dataclasses
import functools
from typing import Any

import torch

from .._aio import await_or_abandon
from ..concurrency import SpareThreads
from ..errors import InvalidRequest, ProcessingTimeout
from ..slots import Slot, SlotPool
from . import output
from .execute import Executor, fill_block
from .output import LeaseGuard
from .plan import Item, Planner
from .processes import SlotProcesses
from .routing import Router


class CallRunner:
    """Runs calls through one preprocessor's planner, router, executor (or slot processes) and output pool."""

    def __init__(self, planner: Planner, router: Router, executor: Executor, processes: SlotProcesses | None, *,
                 output_pool: Any, features_class: type[Any], spare: SpareThreads | None = None) -> None:
        self._planner, self._router, self._executor, self._processes = planner, router, executor, processes
        self._spare = spare or SpareThreads(0)
        self.output_pool, self.features_class = output_pool, features_class
        self.config, self.device, self.output = planner.config, planner.device, executor.output
        self._own_spec: Any = None
        """The call's own family spec, when it is not the preprocessor's (see :meth:`for_spec`)."""

    def for_spec(self, spec: Any) -> CallRunner:
        """This runner for calls with their own settings (``spec``, of the same family): the same slots, memory
        budget, cache and computations in flight; planning and pixel work by ``spec``, and cache keys too."""
        if spec is None or spec == self.config:
            return self
        runner = copy.copy(self)
        identity = (repr(spec), *self._planner.cache_identity[1:])
        runner._planner = dataclasses.replace(self._planner, config=spec, cache_identity=identity)
        runner._executor = dataclasses.replace(self._executor, config=spec)
        runner.config = runner._own_spec = spec
        return runner

    def run(self, slot: Slot, images: Any, videos: Any, request: dict[str, Any], audios: Any = None) -> Any:
        """A call on the calling thread, its slot jobs run one after another on ``slot``."""
        with self._spare.call():  # in flight: its cores are not lent to another call's video
            return self._run(slot, images, videos, request, audios)

    def _run(self, slot: Slot, images: Any, videos: Any, request: dict[str, Any], audios: Any) -> Any:
        plans = self._plan(images, videos, request, audios)
        call = self._router.route(plans, output.lease(self.output_pool, self.config, plans))
        try:
            # cuda:N: the current device for every kernel launched here (slot threads get it from their stream).
            with torch.cuda.device(self.device) if self.device.startswith("cuda") else contextlib.nullcontext():
                for group in call.groups:
                    results = self._lending(self._executor.run, slot, call.members(group))
                    call.fill(group, results)
                    for item, out in zip(call.members(group), results):
                        self._router.keep(item, out)
        except BaseException:
            if call.lease is not None:
                self.output_pool.release(call.lease.handle)
            raise
        if call.lease is not None and self.output_pool.device != "cpu":
            torch.cuda.current_stream().synchronize()  # another process may read the block at once
        audio_items, clips = _clips(call)
        audio = None
        if audio_items:
            with torch.cuda.device(self.device) if self.device.startswith("cuda") else contextlib.nullcontext():
                audio = self._executor.audio_features(slot, audio_items, clips)
        return output.assemble(call, self.features_class, self.config, self.output, audio)

    def _lending(self, work: Any, slot: Slot, group: list[Item]) -> Any:
        """``work(slot, group)`` on the slot's thread, counted as a running job (:meth:`SpareThreads.job`), a lone
        video's plan given the spare threads free now for its keyframe runs beyond the first (as many as its plan
        reserved decoders for; given back when it ends)."""
        with self._spare.job():
            lent = 0
            if len(group) == 1 and group[0].plan.decoders > 1:
                item = group[0]
                lent = self._spare.take(item.plan.decoders - 1)
                if lent:
                    item.plan = dataclasses.replace(item.plan, decode_threads=1 + lent)
            try:
                return work(slot, group)
            finally:
                self._spare.give(lent)

    async def run_async(self, slots: SlotPool, io: concurrent.futures.Executor, images: Any, videos: Any,
                        request: dict[str, Any], deadline: float | None, audios: Any = None) -> Any:
        """A call from an event loop: planning on ``io`` threads, slot jobs on ``slots``, ``deadline`` a
        ``time.monotonic()`` instant (past it :class:`gpu_mm.ProcessingTimeout`; running items keep their slots)."""
        with self._spare.call():  # in flight from now: a burst of calls lends no core to the first one's video
            return await self._run_async(slots, io, images, videos, request, deadline, audios)

    async def _run_async(self, slots: SlotPool, io: concurrent.futures.Executor, images: Any, videos: Any,
                         request: dict[str, Any], deadline: float | None, audios: Any) -> Any:
        loop = asyncio.get_running_loop()
        # Planning and leasing the output block (an allocation, a CUDA IPC handle) run on an IO thread.
        plan_future = loop.run_in_executor(io, self._plan_and_lease, images, videos, request, audios)
        plans, lease = await _within(plan_future, deadline, on_abandoned=self._release_late_lease)
        call = self._router.route(plans, lease, loop)
        computed = sum(len(g) for g in call.groups)
        guard = LeaseGuard(self.output_pool, lease, computed) if lease is not None and computed else None
        settled = guard.settled if guard is not None else None
        runs: list[Any] = [self._start_group(slots, call.members(group), deadline, _settles(settled, len(group)))
                           for group in call.groups]
        runs += [self._router.follow(plans[i], flight, deadline) for i, flight in call.followers]
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
            await loop.run_in_executor(io, fill_block, [(plans[i], call.outs[i][0]) for i, _ in call.followers])
        audio_items, clips = _clips(call)
        audio = None
        if audio_items:  # the call's clips become features together, on a slot (a padding rule may join them)
            audio = await slots.run(self._executor.audio_features, audio_items, clips, deadline=deadline,
                                    nbytes=self.config.audio_working_bytes([c.numel() for c in clips]))
        kinds = [item.plan.kind for item in plans]
        if lease is None and (kinds.count("image") > 1 or kinds.count("video") > 1):
            # Joining several items' rows is a copy of every feature byte: not on the caller's loop.
            return await loop.run_in_executor(io, output.assemble, call, self.features_class, self.config,
                                              self.output, audio)
        return output.assemble(call, self.features_class, self.config, self.output, audio)

    def _plan(self, images: Any, videos: Any, request: dict[str, Any], audios: Any) -> list[Item]:
        plans = self._planner.plan_all(images, videos, request, audios)
        if self.output_pool is not None:
            for item in plans:
                if item.plan.kind == "audio":
                    raise InvalidRequest(item.plan.src.item, "a preprocessor with an output_pool writes features into "
                                         "a block sized before decoding, and audio features are sized by decoding: "
                                         "use one without output_pool for audio")
        return plans

    def _plan_and_lease(self, images: Any, videos: Any, request: dict[str, Any],
                        audios: Any) -> tuple[list[Item], Any]:
        plans = self._plan(images, videos, request, audios)
        return plans, output.lease(self.output_pool, self.config, plans)

    def _release_late_lease(self, result: tuple[list[Item], Any]) -> None:
        """Planning finished after its caller gave up: no item will run, so its block goes back at once."""
        _, lease = result
        if lease is not None:
            self.output_pool.release(lease.handle)

    def _start_group(self, slots: SlotPool, group: list[Item], deadline: float | None,
                     on_release: Any) -> asyncio.Task[Any]:
        """One slot job as a task. SlotPool.run reports its outcome (``on_done``) and settles it (``on_release``)
        on every path, but only once its coroutine has begun: a task cancelled before its first step (its
        caller cancelled in the same loop turn) never begins, so its done-callback does that instead."""
        begun: list[bool] = []
        on_done = self._router.landed(group)

        async def run() -> Any:
            begun.append(True)
            # Audio decodes on the slot's thread (FFmpeg releases the interpreter lock; nothing to lay out in rows);
            # decoded arrays are resized and laid out there too (torch's ops release it), not copied to a process.
            processes = self._processes is not None and group[0].plan.kind != "audio" and all(
                item.plan.src.kind != "array" for item in group)
            work: Any = self._executor.run
            if processes:
                assert self._processes is not None
                work = functools.partial(self._processes.run, config=self._own_spec)
            return await slots.run(functools.partial(self._lending, work), group,
                                   nbytes=sum(p.plan.nbytes for p in group), deadline=deadline,
                                   on_release=on_release, on_done=on_done)

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


def _clips(call: Any) -> tuple[list[Item], list[torch.Tensor]]:
    """The call's audio items and their decoded samples, in order."""
    pairs = [(item, out[0]) for item, out in zip(call.items, call.outs) if item.plan.kind == "audio"]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def _settles(settled: Any, n: int) -> Any:
    """``settled`` called ``n`` times: a slot job of ``n`` items settles each of them."""
    if settled is None:
        return None

    def settle_all() -> None:
        for _ in range(n):
            settled()

    return settle_all


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
