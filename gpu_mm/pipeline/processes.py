"""Slot processes (``workers="processes"``): each CPU slot's jobs run by the same :class:`Executor` in a child
process of its own (:mod:`gpu_mm._procslots`), the rows coming back in shared memory."""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable
from typing import Any

import torch

from .._procslots import ShmArena, SlotProcess, choose_workers, process_threads

__all__ = ["SlotProcesses", "choose_workers", "close_slot_process", "ready_slot_process", "weakly"]
from ..slots import Slot
from .execute import Executor
from .plan import Item
from .types import Decoded


class SlotProcesses:
    """The slot processes of one preprocessor: started by each slot's thread as it starts, closed as it exits."""

    def __init__(self, executor: Executor, *, memory_budget_bytes: int, idle: bool, cores: int, slots: int,
                 stop_abandoned_after_s: float | None) -> None:
        self.executor = executor
        self.memory_budget_bytes = memory_budget_bytes
        self.idle = idle
        self.cores, self.slots = cores, slots
        self.stop_abandoned_after_s = stop_abandoned_after_s
        self._arena: ShmArena | None = None
        self._procs: list[SlotProcess] = []
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        # A copy (deepcopy, pickle) starts processes of its own, never shares these.
        state = {**self.__dict__, "_arena": None, "_procs": []}
        state.pop("_lock")
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def run(self, slot: Slot, group: list[Item], config: Any = None) -> list[tuple[torch.Tensor, Decoded]]:
        """:meth:`Executor.run` in the slot's process, from the slot's thread: the items' plans go (frozen,
        picklable), each item's rows come back in shared memory, its stage timings with them. ``config``: the
        call's own family spec, when it has one."""
        proc = slot.state.get("process")
        if proc is None:
            proc = self.start(slot)
        cfg = self.executor.config if config is None else config
        shapes = [cfg.item_shape(item.plan.grid) for item in group]
        out = []
        results = proc.run([item.plan for item in group], shapes, cfg.output_dtype,
                           abandoned_since=lambda: slot.abandoned_at, stop_after_s=self.stop_abandoned_after_s,
                           config=config)
        for item, (rows, (decoded, stages)) in zip(group, results):
            item.timer.stages.update(stages)
            out.append((self.executor.place(slot, item, rows), decoded))
        return out

    def start(self, slot: Slot) -> SlotProcess:
        """The slot's process, started (on the slot's thread, as it starts: the child imports meanwhile)."""
        with self._lock:
            if self._arena is None:
                # Free output blocks kept for reuse: a quarter of the working-memory budget (2 GiB by default).
                self._arena = ShmArena(max_free_bytes=self.memory_budget_bytes // 4)
            proc = SlotProcess({"class": Executor, "kwargs": dict(vars(self.executor))}, self._arena, idle=self.idle,
                               threads=process_threads(self.cores, self.slots),
                               name=f"gpu-mm-slot-process-{slot.index}")
            self._procs.append(proc)
        slot.state["process"] = proc
        proc.start()
        return proc

    def counts(self) -> dict[str, Any]:
        """:class:`PreprocessorStatistics`' ``process_*`` fields."""
        procs = list(self._procs)
        return {"process_starts": sum(p.starts for p in procs),
                "process_pids": tuple(p.pid for p in procs if p.running and p.pid is not None),
                "process_stops": sum(p.stopped for p in procs),
                "process_blocks": 0 if self._arena is None else self._arena.blocks_created}

    def close(self) -> None:
        """Release the shared-memory blocks kept for reuse (the slot threads close their processes as they exit)."""
        if self._arena is not None:
            self._arena.close()


def weakly(method: Callable[[Slot], Any]) -> Callable[[Slot], Any]:
    """``method`` for a slot hook without keeping its object alive: the slot threads hold their hooks, and a
    preprocessor dropped without close() must still be collected (its slot pool then lets the threads exit)."""
    ref = weakref.WeakMethod(method)

    def call(slot: Slot) -> Any:
        bound = ref()
        return None if bound is None else bound(slot)

    return call


def ready_slot_process(slot: Slot) -> None:
    """On a slot's thread: wait until its process has built its executor (started if it is not running)."""
    proc = slot.state.get("process")
    if proc is not None:
        proc.ensure_ready()


def close_slot_process(slot: Slot) -> None:
    """``slot_exit``: a slot's thread, as it exits, stops its process (if it has one) and drops the rest of its
    state (its decoders: a DALI pipeline or an NVDEC session holds device memory until it is dropped)."""
    proc = slot.state.pop("process", None)
    if proc is not None:
        proc.close()
    slot.state.clear()
