"""Features handed to clients on the same node as shared blocks, each held for its client until it is done.

``gpu-mm serve --uds PATH`` answers a request asking for handles (``?format=handles``, over the Unix socket only)
by copying the features into a block of a :class:`gpu_mm.FeaturePool` (POSIX shared memory on the CPU, CUDA IPC on
a GPU) and sending the block's :class:`gpu_mm.FeatureHandle`: the client maps the block (:class:`FeatureReceiver`)
and its tensors view it, with no bytes on the socket and no copy in the client. :class:`HandleLeases` keeps each
block's lease for the client process that asked, which the socket's peer credentials name (``SO_PEERCRED``), and
gives the block back to the pool when that client releases it, when the client process is gone (its pid no longer
runs the process that started then), or when the lease has been held ``lease_s`` seconds: a client that dies or
forgets costs a block for at most that long, and the pool (``max_blocks``) bounds what all clients hold.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import struct
import threading
import time
from collections.abc import Iterable, Mapping
from typing import Any

import torch

from ._lifecycle import Closeable
from .errors import InvalidRequest
from .handoff import FeatureHandle, FeaturePool

__all__ = ["HandleLeases", "LeaseStatistics", "Peer", "peer_of"]


@dataclasses.dataclass(frozen=True)
class Peer:
    """The process at the other end of a Unix socket: its pid and uid, and when that pid's process started (so
    that a reused pid is not mistaken for it)."""

    pid: int
    uid: int
    started: int | None

    def alive(self) -> bool:
        return _start_time(self.pid) == self.started if self.started is not None else _pid_exists(self.pid)


def peer_of(sock: Any) -> Peer | None:
    """The peer of a connected Unix socket (``SO_PEERCRED``, Linux), or None for any other socket."""
    if sock is None or getattr(sock, "family", None) != socket.AF_UNIX or not hasattr(socket, "SO_PEERCRED"):
        return None
    pid, uid, _ = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))
    return Peer(pid, uid, _start_time(pid))


def _start_time(pid: int) -> int | None:
    """Field 22 of ``/proc/<pid>/stat``: when the process started, in clock ticks since boot (None: no such
    process, or no /proc)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    return int(stat[stat.rindex(b")") + 2 :].split()[19])  # the name may hold spaces: fields after its ')'


def _pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclasses.dataclass(frozen=True)
class LeaseStatistics:
    outstanding: int
    granted: int
    released: int
    reclaimed_expired: int
    """Leases given back because they were held past ``lease_s``."""
    reclaimed_gone: int
    """Leases given back because their client process had ended."""
    blocks: int
    """Pool blocks that exist (each holds one answer's features while leased)."""


@dataclasses.dataclass
class _Lease:
    peer: Peer
    expires: float


class HandleLeases(Closeable):
    """A :class:`FeaturePool` whose blocks are leased to client processes (see the module's docstring).

    Args:
        device: where the blocks are (``"cpu"``: shared memory; ``"cuda:N"``: CUDA IPC), the features' device.
        max_blocks: blocks that may exist at once, over all clients; an answer beyond them is
            :class:`gpu_mm.Overloaded` (503) until a block comes back.
        lease_s: the longest a client may hold a block.
    """

    def __init__(self, device: str = "cpu", *, max_blocks: int = 16, lease_s: float = 60.0) -> None:
        if not lease_s > 0:
            raise ValueError(f"lease_s must be > 0, got {lease_s!r}")
        self.pool = FeaturePool(max_blocks, device=device)
        self.lease_s = lease_s
        self._leases: dict[int, _Lease] = {}
        self._lock = threading.Lock()
        self._counts = {"granted": 0, "released": 0, "expired": 0, "gone": 0}

    def grant(self, tensors: Mapping[str, torch.Tensor], peer: Peer) -> FeatureHandle:
        """``tensors`` copied into a block leased to ``peer``; its handle.

        Raises:
            Overloaded: every block is leased.
        """
        handle = self.pool.put(tensors)  # on a GPU, the copy has finished when it returns
        with self._lock:
            self._leases[handle.lease_id] = _Lease(peer, time.monotonic() + self.lease_s)
            self._counts["granted"] += 1
        return handle

    def release(self, lease_ids: Iterable[int], peer: Peer) -> int:
        """Give back ``peer``'s leases among ``lease_ids``; returns how many were outstanding.

        Raises:
            InvalidRequest: a lease another user's process holds (a client may release only its own user's).
        """
        done = 0
        with self._lock:
            for lease_id in lease_ids:
                lease = self._leases.get(lease_id)
                if lease is None:
                    continue  # already released or reclaimed: releasing is idempotent
                if lease.peer.uid != peer.uid:
                    raise InvalidRequest("leases", f"lease {lease_id} is not this user's")
                del self._leases[lease_id]
                self.pool.release(lease_id)
                self._counts["released"] += 1
                done += 1
        return done

    def reap(self, now: float | None = None) -> int:
        """Give back leases held past ``lease_s`` and those of client processes that have ended; returns how many.
        Bookkeeping only (a /proc read per client process holding a lease): cheap enough for an event loop."""
        now = time.monotonic() if now is None else now
        with self._lock:
            alive: dict[Peer, bool] = {}
            gone = []
            for lease_id, lease in self._leases.items():
                if lease.expires <= now:
                    gone.append((lease_id, "expired"))
                elif not alive.setdefault(lease.peer, lease.peer.alive()):
                    gone.append((lease_id, "gone"))
            for lease_id, why in gone:
                del self._leases[lease_id]
                self.pool.release(lease_id)
                self._counts[why] += 1
        return len(gone)

    def statistics(self) -> LeaseStatistics:
        with self._lock:
            c = self._counts
            return LeaseStatistics(len(self._leases), c["granted"], c["released"], c["expired"], c["gone"],
                                   self.pool.statistics().blocks)

    def close(self) -> None:
        with self._lock:
            self._leases.clear()
        self.pool.close()
