"""Hand features to another process without pickling their pixels.

A :class:`FeaturePool` owns a bounded set of reusable blocks: POSIX shared memory for CPU tensors, or
CUDA device buffers shared through CUDA IPC. The producer writes features into a block (or has them
made there directly with :meth:`FeaturePool.lease`), sends the small picklable :class:`FeatureHandle`
over any channel, and the receiver maps the block (once, cached) and gets tensors viewing it, without
a copy. Lifetimes are explicit: the receiver's tensors stay valid until the producer is told the
handle is done with (:meth:`FeaturePool.release`), after which the block is reused. Because a CUDA IPC
allocation cannot be freed while another process maps it, the fixed pool is what keeps memory bounded.

CUDA IPC reference counts (torch's): every time a block is shared, torch counts one more reference that one
receiver's open gives back (when its mapping goes, or at once if it already maps the block). So each lease
shares its block afresh, a handle is for one receiver, and :meth:`FeaturePool.handle_for_another_receiver`
shares it once more for each further receiver; a receiver that opens the same handle twice uses it once.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import os
import threading
import uuid
from collections.abc import Mapping
from typing import Any

import torch

from ._lifecycle import Closeable
from .errors import Overloaded

__all__ = ["FeatureHandle", "FeaturePool", "FeatureReceiver", "Lease", "PoolStatistics"]

_ALIGN = 64


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    """Where one tensor lies inside a block."""

    key: str
    offset: int
    shape: tuple[int, ...]
    dtype: str


@dataclasses.dataclass(frozen=True)
class FeatureHandle:
    """What crosses the process boundary: a block reference and the tensors' layout (a few hundred bytes)."""

    pool_id: str
    lease_id: int
    block_id: int
    block_ref: Any
    """Shared-memory name (CPU), or the CUDA IPC rebuild arguments of the block (CUDA)."""
    device: str
    specs: tuple[TensorSpec, ...]
    max_blocks: int = 8
    """The producer's bound, so a receiver keeps at most this many mappings of the pool."""


@dataclasses.dataclass(frozen=True)
class PoolStatistics:
    """A snapshot of a :class:`FeaturePool`."""

    blocks: int
    bytes_reserved: int
    leased: int
    allocations: int
    reuses: int


def _dtype(name: str) -> torch.dtype:
    return getattr(torch, name.replace("torch.", ""))


def _layout(items: Mapping[str, tuple[tuple[int, ...], torch.dtype]]) -> tuple[tuple[TensorSpec, ...], int]:
    specs, offset = [], 0
    for key, (shape, dtype) in items.items():
        offset = -(-offset // _ALIGN) * _ALIGN
        nbytes = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
        specs.append(TensorSpec(key, offset, tuple(int(s) for s in shape), str(dtype).replace("torch.", "")))
        offset += nbytes
    return tuple(specs), offset


def _views(buffer: torch.Tensor, specs: tuple[TensorSpec, ...]) -> dict[str, torch.Tensor]:
    out = {}
    for s in specs:
        dtype = _dtype(s.dtype)
        n = math.prod(s.shape) * torch.empty((), dtype=dtype).element_size()
        out[s.key] = buffer[s.offset : s.offset + n].view(dtype).view(s.shape)
    return out


class _Block:
    def __init__(self, block_id: int, nbytes: int, device: str) -> None:
        self.id = block_id
        self.nbytes = nbytes
        self.device = device
        self.shm: Any = None
        if device == "cpu":
            from multiprocessing import shared_memory

            self.shm = shared_memory.SharedMemory(create=True, size=nbytes, name=f"gpumm_{uuid.uuid4().hex[:16]}")
            self.buffer = torch.frombuffer(self.shm.buf, dtype=torch.uint8, count=nbytes)
        else:
            self.buffer = _cuda_buffer(nbytes, device)

    def share(self) -> Any:
        """What a receiver needs to map this block: the shared-memory name, or a fresh CUDA IPC share (torch
        counts one reference per share, given back by the one receiver that opens it)."""
        if self.shm is not None:
            return self.shm.name
        from torch.multiprocessing.reductions import reduce_tensor

        return reduce_tensor(self.buffer)

    def close(self) -> None:
        self.buffer = None  # type: ignore[assignment]
        if self.shm is not None:
            _close_shm(self.shm)
            self.shm.unlink()


def _cuda_buffer(nbytes: int, device: str) -> torch.Tensor:
    return torch.empty(nbytes, dtype=torch.uint8, device=device)


def _close_shm(shm: Any) -> None:
    try:
        shm.close()
    except BufferError:
        pass  # tensors still view it: the mapping goes when they do


@dataclasses.dataclass
class Lease:
    """A block taken from the pool: writable ``tensors`` inside it and the ``handle`` to send."""

    handle: FeatureHandle
    tensors: dict[str, torch.Tensor]


class FeaturePool(Closeable):
    """A bounded pool of reusable shared blocks on ``device`` ("cpu": shared memory; "cuda": CUDA IPC).

    Args:
        max_blocks: blocks that may exist at once; a lease beyond them raises :class:`Overloaded`.
        min_block_bytes: the smallest block made; blocks are sized in powers of two.
    """

    def __init__(self, max_blocks: int = 8, *, device: str = "cpu", min_block_bytes: int = 1 << 20) -> None:
        if max_blocks < 1:
            raise ValueError(f"max_blocks must be >= 1, got {max_blocks!r}")
        self.id = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.device = str(device)
        self.max_blocks = max_blocks
        self.min_block_bytes = min_block_bytes
        self._blocks: dict[int, _Block] = {}
        self._free: set[int] = set()
        self._leases: dict[int, int] = {}
        self._ids = itertools.count()
        self._lease_ids = itertools.count()
        self._lock = threading.Lock()
        self._allocations = self._reuses = 0

    def lease(self, layout: Mapping[str, tuple[tuple[int, ...], torch.dtype]]) -> Lease:
        """Take a block large enough for ``layout`` (key -> (shape, dtype)) and return views into it.

        Raises:
            Overloaded: every block is leased and no more may be made.
        """
        specs, nbytes = _layout(layout)
        nbytes = max(nbytes, 1)
        with self._lock:
            block = self._take(nbytes)
            lease_id = next(self._lease_ids)
            self._leases[lease_id] = block.id
        handle = FeatureHandle(self.id, lease_id, block.id, block.share(), self.device, specs, self.max_blocks)
        return Lease(handle, _views(block.buffer, specs))

    def handle_for_another_receiver(self, handle: FeatureHandle) -> FeatureHandle:
        """A handle to the same outstanding lease for one more receiving process (a CUDA block is shared once
        more, so torch's reference count covers that receiver too). Release the lease once, after every
        receiver is done.

        Raises:
            KeyError: the lease is not outstanding.
        """
        with self._lock:
            block_id = self._leases.get(handle.lease_id)
            if block_id is None:
                raise KeyError(f"lease {handle.lease_id} is not outstanding in pool {self.id}")
            block = self._blocks[block_id]
        return dataclasses.replace(handle, block_ref=block.share())

    def put(self, tensors: Mapping[str, torch.Tensor]) -> FeatureHandle:
        """Copy ``tensors`` into a leased block and return its handle."""
        lease = self.lease({k: (tuple(t.shape), t.dtype) for k, t in tensors.items()})
        for key, t in tensors.items():
            lease.tensors[key].copy_(t, non_blocking=self.device != "cpu")
        if self.device != "cpu":
            torch.cuda.current_stream().synchronize()  # the receiver reads on another stream/process
        return lease.handle

    def release(self, handle: FeatureHandle | int) -> None:
        """Return a handle's block to the pool: the receiver no longer uses its tensors."""
        lease_id = handle.lease_id if isinstance(handle, FeatureHandle) else int(handle)
        with self._lock:
            block_id = self._leases.pop(lease_id, None)
            if block_id is None:
                raise KeyError(f"lease {lease_id} is not outstanding in pool {self.id}")
            self._free.add(block_id)

    def _take(self, nbytes: int) -> _Block:
        fitting = [self._blocks[b] for b in self._free if self._blocks[b].nbytes >= nbytes]
        if fitting:
            block = min(fitting, key=lambda b: b.nbytes)
            self._free.discard(block.id)
            self._reuses += 1
            return block
        if len(self._blocks) >= self.max_blocks:
            if not self._free:
                raise Overloaded(f"FeaturePool: all {self.max_blocks} blocks are leased; release handles first")
            victim = self._blocks.pop(min(self._free, key=lambda b: self._blocks[b].nbytes))
            self._free.discard(victim.id)
            victim.close()
        size = max(self.min_block_bytes, 1 << (nbytes - 1).bit_length())
        block = _Block(next(self._ids), size, self.device)
        self._blocks[block.id] = block
        self._allocations += 1
        return block

    def statistics(self) -> PoolStatistics:
        with self._lock:
            return PoolStatistics(len(self._blocks), sum(b.nbytes for b in self._blocks.values()),
                                  len(self._leases), self._allocations, self._reuses)

    def close(self) -> None:
        """Free every block (shared-memory segments are unlinked)."""
        with self._lock:
            for block in self._blocks.values():
                block.close()
            self._blocks.clear()
            self._free.clear()
            self._leases.clear()



class FeatureReceiver(Closeable):
    """The receiving side: maps each block once and returns tensors that view it (no copy)."""

    def __init__(self) -> None:
        # (pool, block) -> (shared memory or None, byte buffer), least recently used first.
        self._mapped: dict[tuple[str, int], tuple[Any, torch.Tensor]] = {}
        # (pool, lease) of CUDA handles already opened here, whose share was given back (bounded).
        self._opened: dict[tuple[str, int], None] = {}

    def open(self, handle: FeatureHandle) -> dict[str, torch.Tensor]:
        """Tensors of ``handle``; valid until the producer is told to release it."""
        key = (handle.pool_id, handle.block_id)
        entry = self._mapped.pop(key, None)
        if handle.device != "cpu":
            lease = (handle.pool_id, handle.lease_id)
            if lease not in self._opened:
                # Every CUDA handle carries one share: rebuilding gives it back (torch releases the count at
                # once when this process already maps the block, else when the mapping goes).
                rebuilt = self._map(handle)
                entry = entry or rebuilt
                self._opened[lease] = None
                while len(self._opened) > 4 * handle.max_blocks:
                    self._opened.pop(next(iter(self._opened)))
        if entry is None:
            entry = self._map(handle)
            same_pool = [k for k in self._mapped if k[0] == handle.pool_id]
            for old in same_pool[: max(0, len(same_pool) + 1 - handle.max_blocks)]:
                shm, _ = self._mapped.pop(old)  # a retired block: the producer replaced it
                if shm is not None:
                    _close_shm(shm)
        self._mapped[key] = entry
        return _views(entry[1], handle.specs)

    @property
    def num_mapped(self) -> int:
        return len(self._mapped)

    @staticmethod
    def _map(handle: FeatureHandle) -> tuple[Any, torch.Tensor]:
        if handle.device == "cpu":
            import mmap

            # Map the segment directly rather than through multiprocessing.shared_memory, whose
            # resource tracker (shared with the producer by multiprocessing children) would take the
            # producer's ownership record: the producer alone creates and unlinks segments.
            fd = os.open(f"/dev/shm/{handle.block_ref.lstrip('/')}", os.O_RDWR)
            try:
                mm = mmap.mmap(fd, 0)
            finally:
                os.close(fd)
            return mm, torch.frombuffer(mm, dtype=torch.uint8, count=len(mm))
        rebuild, args = handle.block_ref
        return None, rebuild(*args)

    def close(self) -> None:
        """Unmap every block (tensors from :meth:`open` must no longer be used)."""
        for shm, _ in self._mapped.values():
            if shm is not None:
                _close_shm(shm)
        self._mapped.clear()
