"""A short CPU time slice for the event loop's thread, so that it runs as soon as it wakes.

On a machine whose cores are all busy with preprocessing (torch's threads, decoders), a thread that wakes (the
event loop, after a 1 ms sleep or a socket event) waits for a running thread's time slice to end: with Linux's
EEVDF scheduler the default slice is ~3 ms, and that, not the GIL, is most of the loop lag measured on 2 cores
(``benchmarks/PROFILE.md``). Since Linux 6.12 a thread may ask for a shorter slice (``sched_setattr``'s
``sched_runtime`` for a normal thread); a waking thread with a shorter slice than the running one preempts it.
Nothing else changes: no priority, no policy, no other thread's share (lowering the workers' priority instead,
to ``SCHED_IDLE``, cuts the lag further, :func:`set_idle_policy`, with :class:`StarvationGuard` putting a worker
that other processes starve back on the normal policy).

Measured here (``benchmarks/PROFILE.md``): with two threads preprocessing on two cores, the loop's lag p99 fell
from 2.2-3.6 to 1.3-1.4 ms; through a server under 16 concurrent video uploads /health's p99 moved little (median
8.6 -> 7.6 ms over seven interleaved runs, 5.0-10.3 ms: the loop's own work is preempted sooner too). So it is
opt-in: ``gpu-mm serve --loop-slice``, or
:func:`set_thread_slice` from an engine's own loop thread. Elsewhere (other systems, older kernels, seccomp) the
request is refused or ignored, :func:`set_thread_slice` says so, and nothing else happens.
"""

from __future__ import annotations

import ctypes
import dataclasses
import functools
import logging
import os
import platform
import struct
import threading
import time
from collections.abc import Callable

__all__ = ["LOOP_SLICE_S", "StarvationGuard", "leave_idle_policy", "reset_inherited_slice", "set_idle_policy",
           "set_thread_slice", "thread_slice"]

logger = logging.getLogger(__name__)

LOOP_SLICE_S = 1e-4
"""The shortest slice Linux grants (0.1 ms)."""

# struct sched_attr, first version (56 bytes): size, policy, flags, nice, priority, runtime, deadline, period,
# util_min, util_max.
_ATTR = struct.Struct("=IIQiIQQQII")
_SYSCALLS = {"x86_64": (314, 315), "aarch64": (274, 275)}  # sched_setattr, sched_getattr
_SCHED_OTHER = 0


@functools.cache  # every gpu-mm worker thread asks at its start
def _calls() -> tuple[ctypes.CDLL, int, int] | None:
    numbers = _SYSCALLS.get(platform.machine())
    if os.name != "posix" or platform.system() != "Linux" or numbers is None:
        return None
    return ctypes.CDLL(None, use_errno=True), *numbers


def _get(tid: int = 0) -> tuple[int, ...] | None:
    calls = _calls()
    if calls is None:
        return None
    libc, _, getattr_nr = calls
    buf = ctypes.create_string_buffer(_ATTR.size)
    if libc.syscall(getattr_nr, tid, buf, _ATTR.size, 0) != 0:
        return None
    return _ATTR.unpack(buf.raw)


def thread_slice(tid: int = 0) -> float | None:
    """A thread's CPU time slice in seconds, as the kernel reports it (None: not reported); ``tid``: a native
    thread id (``threading.get_native_id()``), 0 for the calling thread."""
    attr = _get(tid)
    if attr is None or attr[1] != _SCHED_OTHER or attr[5] == 0:
        return None
    return attr[5] / 1e9


def set_thread_slice(seconds: float | None = LOOP_SLICE_S) -> bool:
    """Ask for a CPU time slice of ``seconds`` for the calling thread (None: the kernel's default again).

    Only for a normal (``SCHED_OTHER``) thread; its nice value is kept. Returns True when the kernel reports
    the slice asked for (Linux 6.12 or later), False otherwise, changing nothing then.
    """
    if seconds is not None and not 1e-4 <= seconds <= 0.1:
        raise ValueError(f"a slice must be within [0.1 ms, 100 ms], got {seconds!r} s")
    calls, attr = _calls(), _get()
    if calls is None or attr is None or attr[1] != _SCHED_OTHER:
        return False
    libc, setattr_nr, _ = calls
    runtime = 0 if seconds is None else round(seconds * 1e9)
    buf = ctypes.create_string_buffer(_ATTR.pack(_ATTR.size, _SCHED_OTHER, 0, attr[3], 0, runtime, 0, 0, 0, 0))
    if libc.syscall(setattr_nr, 0, buf, 0) != 0:
        return False
    now = thread_slice()
    return seconds is None or (now is not None and abs(now - seconds) < 1e-9)


def reset_inherited_slice() -> None:
    """In a new worker thread: drop the short slice it inherited from a loop thread that asked for one (Linux
    copies scheduling attributes to the threads a thread starts), so that only the loop preempts. gpu-mm's slot,
    worker, IO and parse threads call this first."""
    if thread_slice() == LOOP_SLICE_S:
        set_thread_slice(None)


def set_idle_policy() -> bool:
    """Put the calling thread on Linux's ``SCHED_IDLE`` policy, watched by the process's :class:`StarvationGuard`:
    it runs on CPU time no normal thread wants, and any waking normal thread (the event loop) preempts it at once.
    For slot threads (``Preprocessor(idle_workers=True)``, ``gpu-mm serve --idle-workers``): with two slots on
    two cores the loop's lag p99 fell from 2-3.5 ms to 0.6-0.7 ms at the same throughput, /health's p99 under 16
    video uploads from 7.6-12 to 3.2-7.5 ms. Where other processes keep every core busy such a thread would get no
    CPU at all; the guard puts it back on the normal policy when it has waited, runnable, for most of a window.

    Only where the thread can leave ``SCHED_IDLE`` again (root, ``CAP_SYS_NICE``, or an ``RLIMIT_NICE`` that allows
    nice 0: an unprivileged thread may not raise its priority) and its wait can be read
    (``/proc/self/task/<tid>/schedstat``): elsewhere nothing changes and this returns False."""
    if not _idle_is_reversible():
        return False
    with StarvationGuard._shared_lock:
        if StarvationGuard._shared is None:  # started before this thread turns idle: threads inherit the policy
            StarvationGuard._shared = StarvationGuard()
        try:
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
        except OSError:
            return False
        StarvationGuard._shared.watch(threading.get_native_id())
    return True


def leave_idle_policy() -> None:
    """In a thread that :func:`set_idle_policy` put on ``SCHED_IDLE``, as it exits: the guard stops watching it,
    and its own thread ends with the last one it watched (so that a closed preprocessor leaves no thread)."""
    with StarvationGuard._shared_lock:
        guard = StarvationGuard._shared
        if guard is not None and guard.unwatch(threading.get_native_id()) == 0:
            guard.stop()
            StarvationGuard._shared = None


def _schedstat(tid: int, pid: int | str = "self") -> tuple[int, int] | None:
    """How long (ns) thread ``tid`` of process ``pid`` (this one by default) has run, and waited on a run queue
    (runnable), since it started; None when it has exited (or the kernel does not say)."""
    try:
        with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
            run, wait = f.read().split()[:2]
        return int(run), int(wait)
    except (OSError, ValueError):
        return None


@functools.cache
def _idle_is_reversible() -> bool:
    """Whether a thread of this process can go on ``SCHED_IDLE`` and come back (tried once, on a scratch thread),
    and the guard can read its wait."""
    if not hasattr(os, "SCHED_IDLE") or _schedstat(threading.get_native_id()) is None:
        return False
    ok: list[bool] = []

    def attempt() -> None:
        try:
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
            os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
            ok.append(True)
        except OSError:
            ok.append(False)

    t = threading.Thread(target=attempt, name="gpu-mm-sched-probe", daemon=True)
    t.start()
    t.join()
    return ok == [True]


@dataclasses.dataclass
class _Watched:
    """What the guard knows of one thread."""

    last: tuple[int, int] | None
    """(run ns, wait ns) at the last look."""
    at: float
    """When the guard last looked (``time.monotonic()``; when it began watching, before its first look)."""
    normal_until: float | None = None
    """While on the normal policy: when it goes back on ``SCHED_IDLE``."""
    starved: int = 0
    """Starved windows in a row."""
    held: float = 0.0
    """How long (s) it was last held on the normal policy."""
    back_at: float | None = None
    """When it last went back on ``SCHED_IDLE``."""


class StarvationGuard:
    """Watches ``SCHED_IDLE`` threads: one that in ``windows`` consecutive windows of ``window_s`` waited on a run
    queue, runnable, for more than ``starved_fraction`` of each and ran for less than ``min_run_fraction`` (other
    processes took every core) goes back on ``SCHED_OTHER`` for ``hold_s``, then on ``SCHED_IDLE`` again; starved
    again within ``10 * hold_s`` of going back, it stays twice as long each time, up to ``max_hold_s`` (on a machine
    that stays busy it then spends at most a starved 1 s per ``max_hold_s`` on ``SCHED_IDLE``). A thread
    that still gets some CPU is not starved: under gpu-mm's own load (the loop, IO threads, a client on the same
    cores) idle slot threads wait 26-38 ms of every 50 and still run, and a single window of 4 ms run in 100 was
    seen during a burst of uploads. Ten windows (1 s), not two: under a flood of hostile requests on the same cores
    the slot processes starve for 0.2 s at a time, and a two-window guard put them on the normal policy in six of
    sixteen rounds, where the loop's wait for a core and /health's p99 rose with them (interleaved rounds,
    2026-11-28: /health p99 median 4.4 vs 4.9 ms over twenty-four, no promotion in sixteen with ten windows;
    ``benchmarks/PROFILE.md``). A late look (the guard's own thread waits too, for a core or for the interpreter
    lock the starved thread holds) counts as every window it spans. A thread that has exited is dropped. One guard
    per process (:meth:`shared`, made by :func:`set_idle_policy`, ended by :func:`leave_idle_policy` with the last
    thread it watched), a daemon thread of its own that wakes every ``window_s``; ``read`` and ``set_policy`` are
    the kernel's unless a test passes its own."""

    _shared: StarvationGuard | None = None
    _shared_lock = threading.Lock()

    def __init__(self, window_s: float = 0.1, starved_fraction: float = 0.5, min_run_fraction: float = 0.05,
                 windows: int = 10, hold_s: float = 2.0, max_hold_s: float = 60.0, *,
                 read: Callable[[int], tuple[int, int] | None] = _schedstat,
                 set_policy: Callable[[int, int], None] | None = None, start: bool = True) -> None:
        self.window_s, self.starved_fraction, self.hold_s = window_s, starved_fraction, hold_s
        self.min_run_fraction, self.windows, self.max_hold_s = min_run_fraction, windows, max_hold_s
        self._read = read
        self._set = set_policy or (lambda tid, policy: os.sched_setscheduler(tid, policy, os.sched_param(0)))
        self._lock = threading.Lock()
        self._threads: dict[int, _Watched] = {}
        self.promotions = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if start:
            self._thread = threading.Thread(target=self._run, name="gpu-mm-idle-guard", daemon=True)
            self._thread.start()

    @classmethod
    def shared(cls) -> StarvationGuard | None:
        """The process's guard, while it watches any thread."""
        with cls._shared_lock:
            return cls._shared

    def watch(self, tid: int) -> None:
        with self._lock:
            self._threads[tid] = _Watched(self._read(tid), time.monotonic())  # a late first look spans from here

    def unwatch(self, tid: int) -> int:
        """Stop watching ``tid``; returns how many threads are still watched."""
        with self._lock:
            self._threads.pop(tid, None)
            return len(self._threads)

    def watching(self) -> list[int]:
        with self._lock:
            return list(self._threads)

    def check(self, now: float) -> None:
        """One look at every watched thread (the guard's thread calls this every ``window_s``)."""
        with self._lock:
            for tid, w in list(self._threads.items()):
                stat = self._read(tid)
                if stat is None:  # the thread has exited
                    del self._threads[tid]
                    continue
                try:
                    if w.normal_until is not None:
                        if now >= w.normal_until:
                            self._set(tid, os.SCHED_IDLE)
                            w.normal_until, w.back_at = None, now
                    elif w.last is not None:
                        ran, waited = stat[0] - w.last[0], stat[1] - w.last[1]
                        # A late look spans several windows and counts as all of them: the guard's own thread can
                        # wait too, for a core or for the interpreter lock that the starved thread holds (seen:
                        # 1.3 s between looks behind two spinning processes, which made ten windows take 13 s).
                        span = max(now - w.at, self.window_s)
                        span_ns = span * 1e9
                        starved = waited > self.starved_fraction * span_ns and ran < self.min_run_fraction * span_ns
                        w.starved = w.starved + round(span / self.window_s) if starved else 0  # span >= a window
                        if w.starved >= self.windows:
                            self._set(tid, os.SCHED_OTHER)
                            again = w.back_at is not None and now - w.back_at < 10 * self.hold_s
                            hold = min(2 * w.held, self.max_hold_s) if again else self.hold_s
                            w.normal_until, w.starved, w.held = now + hold, 0, hold
                            self.promotions += 1
                            logger.info("slot thread %d starved on SCHED_IDLE (ran %.1f ms, waited %.0f ms of %.0f): "
                                        "back on the normal policy for %.0f s", tid, ran / 1e6, waited / 1e6,
                                        span * 1e3, hold)
                except OSError:  # gone between the read and the change
                    del self._threads[tid]
                    continue
                w.last, w.at = stat, now

    def _run(self) -> None:
        while not self._stop.wait(self.window_s):
            self.check(time.monotonic())

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
