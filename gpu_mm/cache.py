"""A feature cache keyed by content, bounded in bytes.

Serving traffic repeats media (the same photo in many chats, every earlier image of a conversation sent
again). :class:`FeatureCache` keeps each item's finished features (its rows and what its report says) under
a key made of the media's bytes and of every option that changes the features, evicting the least recently
used entries past ``max_bytes``. (Requests for a key still being computed wait for that one computation:
see ``Qwen2VLPreprocessor``, which counts them here with :meth:`FeatureCache.coalesced`.)

The key is BLAKE3 (``blake3`` package; SHA-256 from the standard library where it is missing) over the
bytes and the options: a cryptographic 256-bit hash, so neither chance nor a client crafting media can make
two different inputs share an entry (with a non-cryptographic hash such as xxHash a client could forge a
collision and have its features served for someone else's image).

Hits share the cached tensors: treat features as read-only (gpu-mm's server, plug-ins and hand-off never
write them; ``copy_on_hit=True`` gives each hit its own copy).
"""

from __future__ import annotations

import atexit
import collections
import dataclasses
import hashlib
import threading
import weakref
from collections.abc import Callable
from typing import Any

import torch

__all__ = ["CacheStatistics", "FeatureCache", "content_key"]

_hasher: Callable[[], Any]
try:  # pragma: no cover - which one depends on the environment
    from blake3 import blake3

    _hasher, HASH = blake3, "blake3"
except ImportError:  # pragma: no cover
    _hasher, HASH = hashlib.sha256, "sha256"


def content_key(data: Any, *parts: Any) -> bytes:
    """A 32-byte key for ``data`` (bytes-like, or a CPU numpy array / torch tensor, hashed with its dtype
    and shape) and ``parts`` (options; their ``repr`` must be stable)."""
    h = _hasher()
    if isinstance(data, torch.Tensor):
        data = data.detach().contiguous().numpy()
    if hasattr(data, "dtype") and hasattr(data, "shape"):  # numpy
        import numpy as np

        arr = np.ascontiguousarray(data)
        h.update(f"array {arr.dtype} {arr.shape}".encode())
        data = arr.data.cast("B")
    h.update(memoryview(data))
    for part in parts:
        h.update(b"\x00" + repr(part).encode())
    return h.digest()


@dataclasses.dataclass(frozen=True)
class CacheStatistics:
    """A snapshot of a :class:`FeatureCache`."""

    max_bytes: int
    bytes: int
    entries: int
    hits: int
    misses: int
    coalesced: int
    """Requests that waited for a computation of the same key already in flight."""
    evictions: int
    hash: str


@dataclasses.dataclass
class Entry:
    """One item's finished features and what its report needs."""

    rows: torch.Tensor
    value: Any
    nbytes: int


def holds_more(rows: torch.Tensor) -> bool:
    """Whether ``rows`` keep more memory alive than their own elements (a slice of a larger tensor)."""
    return rows.untyped_storage().nbytes() > rows.numel() * rows.element_size()


class FeatureCache:
    """LRU by bytes over finished items; thread-safe (planning threads look up, the loop inserts).

    Args:
        max_bytes: bytes of features kept; 0 keeps nothing (the cache is off).
        copy_on_hit: give each hit its own copy of the rows (default: share them, read-only by contract).
    """

    def __init__(self, max_bytes: int, *, copy_on_hit: bool = False) -> None:
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0, got {max_bytes!r}")
        self.max_bytes = max_bytes
        self.copy_on_hit = copy_on_hit
        self._entries: collections.OrderedDict[bytes, Entry] = collections.OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self._hits = self._misses = self._coalesced = self._evictions = 0
        _LIVE.add(self)

    def __deepcopy__(self, memo: dict[int, Any]) -> FeatureCache:
        return self  # thread-safe: copies of a preprocessor (one per worker thread) share one cache

    def __getstate__(self) -> dict[str, Any]:
        return {"max_bytes": self.max_bytes, "copy_on_hit": self.copy_on_hit}  # a pickled copy starts empty

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["max_bytes"], copy_on_hit=state["copy_on_hit"])  # type: ignore[misc]

    @property
    def enabled(self) -> bool:
        return self.max_bytes > 0

    def get(self, key: bytes) -> Entry | None:
        """The entry for ``key`` (now the most recently used), or None; counts a hit or a miss."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                self._misses += 1
                return None
            self._entries.move_to_end(key)
            self._hits += 1
        if self.copy_on_hit:
            return dataclasses.replace(entry, rows=entry.rows.clone())
        return entry

    def put(self, key: bytes, rows: torch.Tensor, value: Any) -> None:
        """Keep ``rows`` and ``value`` under ``key``, evicting least recently used entries past ``max_bytes``;
        an item larger than the whole cache is not kept."""
        nbytes = rows.numel() * rows.element_size()
        if not self.enabled or nbytes > self.max_bytes:
            return
        if holds_more(rows):
            # A slice of a larger tensor would keep all of it alive, uncounted: keep a copy of its own (the
            # pipeline gives the rows it keeps their own storage on the slot's thread; this guards other callers).
            rows = rows.clone()
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._bytes -= old.nbytes
            self._entries[key] = Entry(rows, value, nbytes)
            self._bytes += nbytes
            while self._bytes > self.max_bytes:
                _, evicted = self._entries.popitem(last=False)
                self._bytes -= evicted.nbytes
                self._evictions += 1

    def coalesced(self) -> None:
        with self._lock:
            self._coalesced += 1

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._bytes = 0

    def statistics(self) -> CacheStatistics:
        with self._lock:
            return CacheStatistics(self.max_bytes, self._bytes, len(self._entries), self._hits, self._misses,
                                   self._coalesced, self._evictions, HASH)


_LIVE: weakref.WeakSet[FeatureCache] = weakref.WeakSet()


@atexit.register
def _clear_at_exit() -> None:
    """Free cached tensors while torch is whole: left to interpreter teardown, they would be freed after
    native libraries have begun shutting down."""
    for cache in list(_LIVE):
        cache.clear()
