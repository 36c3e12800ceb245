"""A short CPU time slice for the event loop's thread, so that it runs as soon as it wakes.

On a machine whose cores are all busy with preprocessing (torch's threads, decoders), a thread that wakes (the
event loop, after a 1 ms sleep or a socket event) waits for a running thread's time slice to end: with Linux's
EEVDF scheduler the default slice is ~3 ms, and that, not the GIL, is most of the loop lag measured on 2 cores
(``benchmarks/PROFILE.md``). Since Linux 6.12 a thread may ask for a shorter slice (``sched_setattr``'s
``sched_runtime`` for a normal thread); a waking thread with a shorter slice than the running one preempts it.
Nothing else changes: no priority, no policy, no other thread's share (lowering the workers' priority instead,
to ``SCHED_IDLE``, cuts the lag further but can starve them behind other processes, and a worker starved while
holding the GIL would stall the loop too).

Measured here (``benchmarks/PROFILE.md``): with two threads preprocessing on two cores, the loop's lag p99 fell
from 2.2-3.6 to 1.3-1.4 ms; through a server under 16 concurrent video uploads /health's p99 did not move (the
loop's own work is preempted sooner too). So it is opt-in: ``gpu-mm serve --loop-slice``, or
:func:`set_thread_slice` from an engine's own loop thread. Elsewhere (other systems, older kernels, seccomp) the
request is refused or ignored, :func:`set_thread_slice` says so, and nothing else happens.
"""

from __future__ import annotations

import ctypes
import functools
import os
import platform
import struct

__all__ = ["LOOP_SLICE_S", "reset_inherited_slice", "set_idle_policy", "set_thread_slice", "thread_slice"]

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
    """Put the calling thread on Linux's ``SCHED_IDLE`` policy: it runs only on CPU time no normal thread wants,
    and any waking normal thread (the event loop) preempts it at once. For the slot threads of a machine that
    does nothing but preprocess (``Preprocessor(idle_workers=True)``, ``gpu-mm serve --idle-workers``): there it
    took the loop's lag p99 from 2-3.5 ms to 0.6-0.7 ms at the same throughput. Elsewhere it is a risk: any
    other busy process on the machine takes the CPU from these threads (they may starve), and a starved one
    holding the GIL or a lock stalls whoever waits for it. Returns whether the policy was set."""
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except (AttributeError, OSError):
        return False
    return True
