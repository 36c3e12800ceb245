"""Decoded pixels from a process of the node to its gpu-mm service, through shared memory (Linux).

An engine's front end that decoded the media itself (vLLM hands its processors frames; SGLang's GLM and Gemma paths
too) sends the service an item ``{"shm": NAME, "shape": [...], "dtype": "uint8"}`` instead of encoded bytes: the
client wrote the array into a POSIX shared-memory object ``/dev/shm/NAME`` it created (:func:`put`, mode 0600).
The service takes such items only over its Unix socket, whose peer it knows (``SO_PEERCRED``), and only an object
that peer's user owns, a regular file named as gpu-mm names them, of exactly the array's size, within the item
byte bound (:func:`take`). It maps the object copy-on-write (nothing is copied; the service never writes the
client's pages) and unlinks it at once, so nothing is left behind if the client dies; the client unlinks it too
once it has the answer (:func:`discard`), for a request refused before the service looked at it.
"""

from __future__ import annotations

import math
import mmap
import os
import re
import stat
import uuid
from collections.abc import Mapping
from typing import Any

import numpy as np

from .errors import InvalidRequest, LimitExceeded, SourceError

__all__ = ["PREFIX", "discard", "is_upload", "put", "take"]

SHM_DIR = "/dev/shm"
PREFIX = "gpu-mm-px-"
_NAME = re.compile(r"^gpu-mm-px-[0-9a-f]{32}$")
_DTYPES = {"uint8": np.uint8}
_KEYS = {"shm", "shape", "dtype"}


def is_upload(obj: Any) -> bool:
    """Whether a request item is a shared-memory upload (a mapping with ``shm``)."""
    return isinstance(obj, Mapping) and "shm" in obj


def put(array: Any) -> dict[str, Any]:
    """Write a uint8 array (numpy, or a torch tensor on any device) into a new shared-memory object of this user
    (0600) and return the request item naming it."""
    if type(array).__module__.startswith("torch"):
        array = array.detach().cpu().numpy()
    arr = np.ascontiguousarray(array)
    if arr.dtype != np.uint8 or arr.size == 0:
        raise ValueError(f"uploads are non-empty uint8 arrays, got {arr.dtype} of shape {arr.shape}")
    name = PREFIX + uuid.uuid4().hex
    fd = os.open(os.path.join(SHM_DIR, name), os.O_CREAT | os.O_EXCL | os.O_RDWR | os.O_CLOEXEC, 0o600)
    try:
        os.ftruncate(fd, arr.nbytes)
        with mmap.mmap(fd, arr.nbytes) as mm:
            np.frombuffer(mm, dtype=np.uint8)[:] = arr.reshape(-1)  # the view is gone before the mapping closes
    except BaseException:
        os.unlink(os.path.join(SHM_DIR, name))
        raise
    finally:
        os.close(fd)
    return {"shm": name, "shape": list(arr.shape), "dtype": "uint8"}


def discard(item: Mapping[str, Any]) -> None:
    """Unlink an upload's object (gone already when the service took it)."""
    name = str(item.get("shm", ""))
    if _NAME.match(name):
        try:
            os.unlink(os.path.join(SHM_DIR, name))
        except FileNotFoundError:
            pass


def take(obj: Mapping[str, Any], item: str, peer_uid: int | None, max_bytes: int) -> np.ndarray:
    """The array an upload item names, mapped (copy-on-write) and its object unlinked.

    Raises:
        InvalidRequest: not over the service's Unix socket (``peer_uid`` None), or a malformed item.
        LimitExceeded: more than ``max_bytes``.
        SourceError: no such object, not a regular file, not the peer's user's, or not the array's size.
    """
    if peer_uid is None:
        raise InvalidRequest(item, "decoded pixels in shared memory are taken only over the service's Unix socket")
    if set(obj) != _KEYS:
        raise InvalidRequest(item, f"an upload has exactly the keys {sorted(_KEYS)}, got {sorted(map(str, obj))}")
    name, shape, dtype = obj["shm"], obj["shape"], obj["dtype"]
    if not isinstance(name, str) or not _NAME.match(name):
        raise InvalidRequest(item, "not a gpu-mm shared-memory name")
    if dtype not in _DTYPES:
        raise InvalidRequest(item, f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
    if (not isinstance(shape, list) or len(shape) not in (3, 4)
            or not all(isinstance(d, int) and not isinstance(d, bool) and 0 < d < 2**31 for d in shape)):
        raise InvalidRequest(item, "shape must be 3 or 4 positive integers (H x W x C, or T x H x W x C)")
    nbytes = math.prod(shape) * np.dtype(_DTYPES[dtype]).itemsize
    if nbytes > max_bytes:
        raise LimitExceeded(item, f"{nbytes} bytes of pixels is over max_bytes={max_bytes}")
    path = os.path.join(SHM_DIR, name)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise SourceError(item, "no such shared-memory object (gone, or never made)") from None
    except OSError as exc:
        raise SourceError(item, f"cannot open the shared-memory object: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise SourceError(item, "the shared-memory object is not a regular file")
        if st.st_uid != peer_uid:
            raise SourceError(item, "the shared-memory object is not the client's user's")
        if st.st_size != nbytes:
            raise SourceError(item, f"the shared-memory object holds {st.st_size} bytes, the shape says {nbytes}")
        mm = mmap.mmap(fd, nbytes, access=mmap.ACCESS_COPY)
    finally:
        os.close(fd)
    try:
        os.unlink(path)
    except OSError:  # the client's to remove then (discard)
        pass
    return np.frombuffer(mm, dtype=_DTYPES[dtype]).reshape(shape)
