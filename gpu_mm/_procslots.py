"""Slot processes: a CPU slot's pixel work in a child process of its own (``Preprocessor(workers="processes")``).

Why: with the work in threads of the caller's process, the caller's event loop shares its interpreter lock with
them. Measured on 2 cores (64 concurrent 1080p JPEG requests, slot threads on ``SCHED_IDLE``), the loop's lag
p99 stayed 2.7-3.3 ms (medians of two runs): a slot thread preempted while holding the GIL keeps it until it runs
again. With the same work in ``SCHED_IDLE`` child processes the loop has its interpreter to itself: p99 1.3-1.4 ms,
at 117-120 images/s instead of 98-102 (``benchmarks/slot_processes.py``).

Each slot thread owns one child (a fresh interpreter, never forked from a process with threads) and drives it
synchronously: it sends the slot job (the items' plans: source bytes and decisions, no tensors), the child runs the
preprocessor's own executor (:class:`gpu_mm.pipeline.execute.Executor`) on them and writes each item's rows
straight into a block of shared memory, and the thread waits for the answer without the GIL. So the slot's
semantics are the thread's: the slot is busy, and quarantined past a deadline, until the child has answered. A
child that dies (a decoder crashing on hostile input, the OOM killer) fails only the items it had taken, with
:class:`gpu_mm.DecodeError` naming them; the slot starts a new child for its next job. Unlike a thread, a child can
be stopped: with ``stop_after_s`` a job whose callers have been gone that long has its child killed, which frees
the slot.

The blocks are ``memfd`` files (no ``/dev/shm`` size limit, nothing left behind by a crash), passed to the child
once as file descriptors and mapped on both sides (populated in the child, which writes them; mapped lazily in the
caller's process, whose mmap lock populating would hold). The caller's tensor is a view of that mapping; when the
last view dies, the block goes back to :class:`ShmArena` and is reused, so pages are allocated once.
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import logging
import math
import mmap
import os
import socket
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from multiprocessing import reduction
from multiprocessing.connection import Connection
from typing import Any, Literal

import torch

from .errors import BackendUnavailable, DecodeError, GpuMMError, ProcessingTimeout

__all__ = ["ShmArena", "SlotProcess", "choose_workers", "process_threads"]

logger = logging.getLogger(__name__)
_GRAIN = 2 << 20
"""Blocks are whole multiples of this many bytes, so that close sizes share blocks."""


def choose_workers(requested: str, device: str) -> Literal["threads", "processes"]:
    """``threads`` or ``processes`` for ``requested`` (``auto``, ``threads``, ``processes``) on ``device`` (resolved:
    ``cpu``, ``cuda``, ``cuda:N``). ``auto``: processes on the CPU where Linux's ``memfd_create`` is (measured on 2
    cores, 64 concurrent 1080p JPEGs: the loop's lag p99 1.3 ms instead of 2.7 with idle slot threads, at 117
    instead of 102 images/s; ``benchmarks/slot_processes.py``), threads on CUDA (a slot is a stream of the
    process that owns the device) and elsewhere."""
    if requested not in ("auto", "threads", "processes"):
        raise ValueError(f"workers must be 'auto', 'threads' or 'processes', got {requested!r}")
    if requested == "threads":
        return "threads"
    if requested == "processes":
        return "processes"
    return "processes" if device == "cpu" and hasattr(os, "memfd_create") else "threads"


def process_threads(cores: int, processes: int) -> int:
    """torch's intra-op threads in each of ``processes`` slot processes on ``cores`` cores: the cores shared out,
    at least one (measured on 2 cores, two processes: one thread each matched two slot threads' throughput,
    two each oversubscribed the cores, 30% slower)."""
    return max(1, cores // max(1, processes))


class _Block:
    __slots__ = ("block_id", "size", "fd", "map")

    def __init__(self, block_id: int, size: int) -> None:
        self.block_id = block_id
        self.size = size
        self.fd = os.memfd_create(f"gpu-mm-block-{block_id}", os.MFD_CLOEXEC)
        try:
            os.ftruncate(self.fd, size)
            # No MAP_POPULATE here, in the caller's process: populating holds the process's mmap lock while it
            # zero-fills the pages, and the event loop's own allocations then wait behind it (a 66 ms loop stall
            # measured in a burst of new 23 MB blocks). The child populates its mapping (the pages are allocated
            # there, in its own address space); here they are mapped at first read, without zero-filling.
            self.map = mmap.mmap(self.fd, size)
        except BaseException:
            os.close(self.fd)
            raise

    def close(self) -> None:
        try:
            self.map.close()
        except BufferError:  # pragma: no cover - a view still alive: the mapping goes with it
            pass
        os.close(self.fd)


class ShmArena:
    """Reusable shared-memory blocks for slot processes' outputs.

    :meth:`tensor` gives a tensor on a block (a new one, or a free one of the right size); when the last view of
    that tensor dies the block is free again. Free blocks beyond ``max_free_bytes`` are closed, and the
    children unmap them with their next job (those they mapped that are no longer :meth:`open_ids`)."""

    def __init__(self, max_free_bytes: int = 512 << 20) -> None:
        self.max_free_bytes = max_free_bytes
        self._lock = threading.Lock()
        self._free: list[_Block] = []
        self._returned: collections.deque[_Block] = collections.deque()  # appended by finalizers, any thread
        self._open: set[int] = set()
        self._ids = itertools.count()
        self._closed = False
        self.blocks_created = 0

    def tensor(self, shape: tuple[int, ...], dtype: torch.dtype) -> tuple[torch.Tensor, _Block]:
        """A tensor of ``shape`` and ``dtype`` on a shared block, and the block (to send to a child)."""
        numel = math.prod(shape)
        nbytes = max(1, numel * dtype.itemsize)
        block = self._take(nbytes)
        view = memoryview(block.map)[:nbytes]
        weakref.finalize(view, self._give_back, block)
        out = torch.frombuffer(view, dtype=dtype, count=numel).view(shape) if numel else torch.empty(shape, dtype=dtype)
        return out, block

    def _give_back(self, block: _Block) -> None:
        """The last view of ``block`` died (on whichever thread dropped it): free it, or, once the arena is closed,
        close it (unless this thread holds the lock already: then whoever holds it drains)."""
        self._returned.append(block)
        if self._closed and self._lock.acquire(blocking=False):
            try:
                self._drain()
            finally:
                self._lock.release()

    def open_ids(self) -> frozenset[int]:
        """The ids of the blocks not closed (in use or free)."""
        with self._lock:
            return frozenset(self._open)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._drain()
            for block in self._free:
                self._close_block(block)
            self._free = []

    def __del__(self) -> None:
        # Reached only when no tensor of its blocks lives (each block's finalizer holds the arena).
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter teardown
            pass

    def _take(self, nbytes: int) -> _Block:
        with self._lock:
            if self._closed:
                raise RuntimeError("ShmArena is closed")
            self._drain()
            fits = [b for b in self._free if nbytes <= b.size <= 2 * nbytes + _GRAIN]
            if fits:
                block = min(fits, key=lambda b: b.size)
                self._free.remove(block)
                return block
            size = -(-nbytes // _GRAIN) * _GRAIN
            block = _Block(next(self._ids), size)
            self._open.add(block.block_id)
            self.blocks_created += 1
            return block

    def _drain(self) -> None:
        while self._returned:
            block = self._returned.popleft()
            if self._closed:
                self._close_block(block)
            else:
                self._free.append(block)
        self._trim()

    def _trim(self) -> None:
        """Close the longest-free blocks until at most ``max_free_bytes`` are free."""
        free = sum(b.size for b in self._free)
        while self._free and free > self.max_free_bytes:
            block = self._free.pop(0)
            free -= block.size
            self._close_block(block)

    def _close_block(self, block: _Block) -> None:
        block.close()
        self._open.discard(block.block_id)


@dataclasses.dataclass
class _Child:
    process: Any
    conn: Any
    mapped: set[int] = dataclasses.field(default_factory=set)
    ready: bool = False


class SlotProcess:
    """One slot's child process, driven by that slot's thread only (not thread-safe by design)."""

    START_TIMEOUT_S = 120.0
    """How long a slot waits for a new child to import torch and gpu-mm (a cold start takes seconds)."""

    def __init__(self, spec: dict[str, Any], arena: ShmArena, *, idle: bool, threads: int, name: str) -> None:
        self._spec = spec
        self._arena = arena
        self._idle = idle
        self._threads = threads
        self._name = name
        self._child: _Child | None = None
        self.starts = 0
        self.stopped = 0
        """Jobs stopped (their child killed) after their caller gave up."""
        self.pid: int | None = None

    @property
    def running(self) -> bool:
        """A child has been started and not yet seen to end."""
        return self._child is not None

    def start(self) -> None:
        """Start the child now if none runs (it imports in the background; :meth:`run` waits for it).

        A fresh interpreter (``python -c``), not ``multiprocessing``'s spawn: that re-imports the caller's main
        module in the child, which a script without an ``if __name__ == "__main__"`` guard would run again. It
        finds gpu-mm where this process does (``sys.path``) and talks over a socket pair; when this process
        ends, the child's next read ends and it exits."""
        if self._child is not None:
            return
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
        try:
            proc = subprocess.Popen(
                [sys.executable, "-c", "import gpu_mm._procslots as m; m._child_entry()", str(theirs.fileno())],
                pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL, env=env)
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        conn = Connection(ours.detach())
        conn.send((self._spec, self._idle, self._threads, self._name))
        self._child = _Child(proc, conn)
        self.starts += 1
        self.pid = proc.pid

    def run(self, plans: list[Any], shapes: Sequence[tuple[int, ...]], dtype: torch.dtype, *,
            abandoned_since: Callable[[], float | None] = lambda: None,
            stop_after_s: float | None = None, config: Any = None) -> list[tuple[torch.Tensor, Any]]:
        """Run one slot job in the child: each plan's rows (of ``shapes[i]``) land in a fresh shared tensor.
        Returns ``[(rows, (decoded, stages))]``; raises what the child raised, or :class:`DecodeError` naming
        the items if the child died. With ``stop_after_s``, a job whose caller gave up (``abandoned_since()``, a
        ``time.monotonic()`` instant) that long ago has its child killed: :class:`ProcessingTimeout`. ``config``:
        the family spec for this job instead of the executor's own (a call with its own settings)."""
        outs = [self._arena.tensor(shape, dtype) for shape in shapes]
        items = ", ".join(p.src.item for p in plans)
        for attempt in (1, 2):
            child = self._ready_child()
            try:
                self._send(child, plans, outs, dtype, config)
                if stop_after_s is not None:
                    self._wait_unless_abandoned(child, items, abandoned_since, stop_after_s)
                child.conn.recv_bytes()  # the child has the job: from here on, its death is the job's
            except (EOFError, OSError) as exc:
                # It died before it took the job (killed between jobs, a death not yet reaped): nothing of this
                # job had a part in that. Once more on a new child; a second such death is not chance.
                reason = self._died(exc)
                if attempt == 2:
                    raise BackendUnavailable(
                        f"slot process {self._name} died twice before taking a job: {reason}") from None
                continue
            try:
                if stop_after_s is not None:
                    self._wait_unless_abandoned(child, items, abandoned_since, stop_after_s)
                reply = child.conn.recv()
            except (EOFError, OSError) as exc:
                raise DecodeError(items, self._died(exc)) from None
            break
        if reply[0] == "error":
            raise reply[1]
        return [(t, extra) for (t, _), extra in zip(outs, reply[1])]

    POLL_S = 0.05
    """How often a slot thread whose job may be stopped looks at its caller (the wait releases the GIL)."""

    def _wait_unless_abandoned(self, child: _Child, items: str, abandoned_since: Callable[[], float | None],
                               stop_after_s: float) -> None:
        """Wait for the child's answer; kill it once the job's caller has been gone ``stop_after_s``."""
        while not child.conn.poll(self.POLL_S):
            since = abandoned_since()
            if since is not None and time.monotonic() - since >= stop_after_s:
                child.process.kill()
                self._died(None)
                self.stopped += 1
                raise ProcessingTimeout(f"{items}: stopped {stop_after_s:g} s after its caller's deadline (its slot "
                                        "process was killed; the slot's next job starts a new one)")

    def ensure_ready(self) -> None:
        """Start the child if none runs and wait until it has built its executor (raises
        :class:`gpu_mm.BackendUnavailable` if it cannot)."""
        self._ready_child()

    def _ready_child(self) -> _Child:
        """The running child, ready for a job (a new one if there is none or it has exited)."""
        if self._child is not None and self._child.process.poll() is not None:
            self._died(None)
        self.start()
        child = self._child
        assert child is not None
        if not child.ready:
            self._wait_ready(child)
        return child

    def _send(self, child: _Child, plans: list[Any], outs: list[tuple[torch.Tensor, _Block]],
              dtype: torch.dtype, config: Any = None) -> None:
        """The job, then the descriptors of blocks the child has not mapped yet; blocks it mapped that the arena
        has closed since are named for it to unmap."""
        new = [b for _, b in outs if b.block_id not in child.mapped]
        retired = child.mapped - self._arena.open_ids()
        child.conn.send({
            "plans": plans,
            "dests": [(b.block_id, tuple(t.shape)) for t, b in outs],
            "dtype": str(dtype).removeprefix("torch."),
            "new": [(b.block_id, b.size) for b in new],
            "retired": sorted(retired),
            "config": config,
        })
        for b in new:
            reduction.send_handle(child.conn, b.fd, child.process.pid)  # SCM_RIGHTS: the child gets a copy
            child.mapped.add(b.block_id)
        child.mapped -= retired

    def _wait_ready(self, child: _Child) -> None:
        """The child's first word: it has built its executor, or why it could not (then no job is sent)."""
        try:
            if not child.conn.poll(self.START_TIMEOUT_S):
                raise TimeoutError(f"no word within {self.START_TIMEOUT_S:.0f} s")
            word = child.conn.recv()
        except (EOFError, OSError, TimeoutError) as exc:
            raise BackendUnavailable(f"slot process {self._name} did not start: {self._died(exc)}") from None
        if word[0] != "ready":
            self.close()
            raise BackendUnavailable(f"slot process {self._name} could not build its executor: {word[1]}")
        child.ready = True

    def close(self, timeout_s: float = 5.0) -> None:
        """Ask the child to exit and wait for it (then kill it)."""
        child, self._child = self._child, None
        if child is None:
            return
        try:
            child.conn.send(None)
        except (OSError, ValueError):
            pass
        try:
            child.process.wait(timeout_s)
        except subprocess.TimeoutExpired:  # pragma: no cover - a child stuck in native code
            child.process.kill()
            child.process.wait()
        child.conn.close()

    def _died(self, exc: BaseException | None) -> str:
        child, self._child = self._child, None
        assert child is not None
        child.conn.close()
        try:
            code = child.process.wait(5.0)
        except subprocess.TimeoutExpired:  # it closed its end but lives on: not a slot process any more
            child.process.kill()
            code = child.process.wait()
        how = (f"was killed by signal {-code}" if code is not None and code < 0 else
               f"exited with status {code}" if code is not None else f"stopped answering ({exc!r})")
        logger.warning("slot process %s (pid %s) %s; the next job starts a new one", self._name, child.process.pid, how)
        return f"the slot process working on it {how}"


def _map(fd: int, size: int) -> mmap.mmap:
    """The child's mapping of a block, its pages allocated and mapped at once (``MAP_POPULATE``, Linux): one call
    instead of a page fault per 4 KiB page at first write (5,600 for a 1080p image's 23 MB of rows)."""
    flags = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)
    return mmap.mmap(fd, size, flags=flags)


def _child_entry() -> None:
    """``python -c`` entry of a slot process: the socket's descriptor is the first argument."""
    conn = Connection(int(sys.argv[1]))
    try:
        spec, idle, threads, name = conn.recv()
    except Exception as exc:  # noqa: BLE001 - e.g. the executor's class cannot be imported here
        conn.send(("failed", f"{type(exc).__name__}: {exc}"))
        return
    try:
        import ctypes

        ctypes.CDLL(None).prctl(15, name[:15].encode(), 0, 0, 0)  # PR_SET_NAME: ``top`` shows the slot
    except (OSError, AttributeError):  # pragma: no cover - not Linux
        pass
    _child_main(conn, spec, idle, threads)


def _child_main(conn: Any, spec: dict[str, Any], idle: bool, threads: int) -> None:
    """The child: build the executor once, then run slot jobs until told to stop or the parent is gone."""
    try:
        if idle:
            from .sched import set_idle_policy

            set_idle_policy()  # before torch starts its threads: they inherit it
        torch.set_num_threads(threads)
        from .runtime import tune_allocator
        from .slots import Slot

        tune_allocator()
        executor = spec["class"](**spec["kwargs"])
        slot = Slot(-1, "cpu")
    except Exception as exc:  # noqa: BLE001 - told to the parent, which raises BackendUnavailable
        conn.send(("failed", f"{type(exc).__name__}: {exc}"))
        return
    conn.send(("ready", os.getpid()))
    maps: dict[int, mmap.mmap] = {}
    while True:
        try:
            job = conn.recv()
        except (EOFError, OSError):
            return  # the parent is gone
        if job is None:
            return
        for block_id, size in job["new"]:
            fd = reduction.recv_handle(conn)
            try:
                maps[block_id] = _map(fd, size)
            finally:
                os.close(fd)
        for block_id in job["retired"]:
            m = maps.pop(block_id, None)
            if m is not None:
                try:
                    m.close()
                except BufferError:  # pragma: no cover - a view still alive: the mapping goes with it
                    pass
        conn.send_bytes(b"got")
        dtype = getattr(torch, job["dtype"])
        outs = []
        for block_id, shape in job["dests"]:
            numel = math.prod(shape)
            outs.append(torch.frombuffer(maps[block_id], dtype=dtype, count=numel).view(shape) if numel else None)
        try:
            runner = executor if job.get("config") is None else dataclasses.replace(executor, config=job["config"])
            reply: tuple[Any, ...] = ("ok", runner.run_plans(slot, job["plans"], outs))
        except Exception as exc:  # noqa: BLE001 - every failure goes back to the caller, typed where it was
            reply = ("error", exc if _picklable(exc) else RuntimeError(f"{type(exc).__name__}: {exc}"))
        del outs  # the views of the shared blocks go before a block can be retired
        conn.send(reply)


def _picklable(exc: BaseException) -> bool:
    import pickle

    try:
        pickle.loads(pickle.dumps(exc))
    except Exception:  # noqa: BLE001 - any failure means: send a description instead
        return False
    return isinstance(exc, GpuMMError) or type(exc).__module__ in ("builtins",)
