"""One video's planned frames decoded on several threads at once, each from its own keyframe.

A clip's decode is one core's work: FFmpeg's slice threads help only streams encoded with several slices per
frame, and the encoders of phones, cameras and ``ffmpeg``'s default x264 write one. Its keyframes, though, cut it
into runs that decode independently (:func:`gpu_mm.media.video.runs.split_starts`: runs of about equal decoding
work). :func:`split_frame_chunks` decodes each run on a thread of its own (PyAV: FFmpeg decodes and converts
without the interpreter lock) into two small buffers and yields the chunks as they are ready, in any order, to
the slot's thread, which resizes and lays out each where its position says: the same bits as one decoder's.

The threads are borrowed from :class:`gpu_mm.concurrency.SpareThreads` (cores no running slot job uses) as the
item's slot job starts, never waited for; its decoders and buffers fit what its plan reserved
(:func:`gpu_mm.pipeline.memory.split_decode_fit`). Measured in ``benchmarks/split_decode.py``.
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
from collections.abc import Generator
from typing import Any

import numpy as np
import torch

from ..media.video import PyAVDecoder, VideoInfo
from ..media.video.runs import runs_for
from ..sched import leave_idle_policy, set_idle_policy
from .memory import split_decode_fit
from .plan import Item, ItemPlan

__all__ = ["split_frame_chunks", "split_plan"]


def split_plan(plan: ItemPlan, step: int, most: int) -> tuple[list[int], int]:
    """``(starts, frames)``: where the runs of a video decoded by up to ``most`` threads begin (its planned runs
    when it got a thread for each, else :func:`split_starts` for fewer; ``[0]``: one decoder) and the frames each
    run's buffers hold, within the plan's memory (:func:`gpu_mm.pipeline.memory.split_decode_fit`)."""
    most = min(most, plan.decoders)
    if plan.kind != "video" or plan.info is None or plan.indices is None or most < 2:
        return [0], plan.chunk
    held = max(plan.target, plan.presize or plan.target, key=lambda s: s[0] * s[1])  # as the planner reserved
    threads, frames = split_decode_fit(plan.source_size, held, plan.chunk, step, most, plan.decoders)
    if threads < 2:
        return [0], plan.chunk
    return runs_for(plan.runs, plan.info, plan.indices, threads, step), frames


def split_frame_chunks(item: Item, starts: list[int],
                       frames: int) -> Generator[tuple[int, torch.Tensor], None, None]:
    """Yield ``(position, frames)`` for the item's planned frames, ``[k <= frames, H, W, 3]`` uint8, decoded by
    one thread per run (runs begin at ``starts``), in the order they are ready. A yielded tensor is a buffer of
    its run's thread: valid until the next ``next()`` (or the generator's close), which hands it back.

    Waiting for frames counts in the item's ``decode`` stage. The first error of any run (a
    :class:`gpu_mm.DecodeError` naming the item) stops the others and is raised here; every thread has ended
    when this generator ends, is closed, or raises."""
    assert item.plan.info is not None and item.plan.indices is not None
    indices, info, timer = item.plan.indices, item.plan.info, item.timer
    bounds = [*starts, len(indices)]
    ready: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
    stop = threading.Event()
    runs = [_Run(item, indices[a:b], a, frames, info, ready, stop) for a, b in zip(bounds, bounds[1:])]
    threads = [threading.Thread(target=run.main, name=f"gpu-mm-split-decode-{k}", daemon=True)
               for k, run in enumerate(runs)]
    for t in threads:
        t.start()
    given: threading.Event | None = None
    left = len(runs)
    try:
        while left:
            if given is not None:
                given.set()  # the caller is done with the last buffer
                given = None
            with timer.stage("decode"):
                what, value = ready.get()
            if what == "chunk":
                position, view, given = value
                yield position, torch.from_numpy(view)
            elif what == "done":
                left -= 1
            else:
                raise value
    finally:
        stop.set()
        for run in runs:
            run.wake()
        for t in threads:
            t.join()


class _Run:
    """One run's thread: its own PyAV decoder (one FFmpeg thread: the runs are the parallelism) and two buffers."""

    def __init__(self, item: Item, indices: list[int], position: int, frames: int, info: VideoInfo,
                 ready: queue.SimpleQueue[tuple[str, Any]], stop: threading.Event) -> None:
        self.item, self.indices, self.position, self.info = item, indices, position, info
        self.ready, self.stop = ready, stop
        count = min(frames, len(indices))
        self.buffers = [np.empty((count, info.height, info.width, 3), np.uint8) for _ in range(2)]
        self.free = [threading.Event(), threading.Event()]
        for event in self.free:
            event.set()

    def wake(self) -> None:
        for event in self.free:
            event.set()

    def main(self) -> None:
        idle = _idle_if_creator_was()
        try:
            self._decode()
            self.ready.put(("done", None))
        except BaseException as exc:  # noqa: BLE001 - handed to the slot's thread, which raises it
            self.ready.put(("error", exc))
        finally:
            if idle:
                leave_idle_policy()

    def _decode(self) -> None:
        decoder = PyAVDecoder(thread_count=1)
        which, k, first = 0, 0, self.position
        with contextlib.closing(decoder.iter_frames_at(self.item.plan.src, self.info, self.indices)) as frames:
            for frame in frames:
                if k == 0:
                    self.free[which].wait()
                if self.stop.is_set():  # another run failed, or the slot's thread stopped early
                    return
                self.buffers[which][k] = frame
                k += 1
                if k == self.buffers[which].shape[0]:
                    self._hand(which, first, k)
                    which, first, k = 1 - which, first + k, 0
            if self.stop.is_set():
                return
            if k:
                self._hand(which, first, k)

    def _hand(self, which: int, first: int, count: int) -> None:
        self.free[which].clear()
        self.ready.put(("chunk", (first, self.buffers[which][:count], self.free[which])))


def _idle_if_creator_was() -> bool:
    """In a run's thread: a thread inherits its creator's policy, so the run of a slot thread (or process) on
    ``SCHED_IDLE`` is on it too; it is then watched by the starvation guard like the slot's thread
    (:func:`gpu_mm.sched.set_idle_policy` applies it again and registers the thread)."""
    try:
        inherited = os.sched_getscheduler(0) == os.SCHED_IDLE
    except (AttributeError, OSError):  # not Linux
        return False
    return inherited and set_idle_policy()
