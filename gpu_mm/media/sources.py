"""Turn loose user input (paths, URLs, base64, bytes, images, arrays) into typed items, once, at the edge.

Trust follows the entry point (ARCHITECTURE rule 8). The Python API trusts its caller: paths are read.
Anything reached over a network builds its limits with :meth:`MediaLimits.for_network`: inline media only
(base64, data URIs), plus http(s) URLs when the operator allows them, plus files inside one directory when
the operator names it. Under that policy a string is never looked up on the local disk, so the answer to a
path says nothing about the file.
"""

from __future__ import annotations

import binascii
import dataclasses
import http.client
import ipaddress
import os
import re
import socket
import ssl
import stat
import time
import urllib.parse
from typing import Any, Literal

import pybase64

from ..errors import GpuMMError, LimitExceeded, SourceError

__all__ = ["MediaLimits", "Source", "load_source"]

PILLOW_MAX_IMAGE_PIXELS = 2 * 89_478_485
"""Pillow raises ``DecompressionBombError`` above twice its ``MAX_IMAGE_PIXELS`` whatever gpu-mm allows."""


@dataclasses.dataclass(frozen=True)
class MediaLimits:
    """Limits and trust policy applied to every item before and during decoding.

    The defaults are the Python API's (it trusts its caller). Network entry points use
    :meth:`for_network`.
    """

    max_bytes: int = 512 * 1024 * 1024
    """Encoded bytes per item (files are checked from ``stat`` before reading, URLs while downloading)."""
    max_image_pixels: int = 8192 * 8192
    """Decoded pixels per image (decompression bombs), checked from the header before decoding. At most
    :data:`PILLOW_MAX_IMAGE_PIXELS` (Pillow refuses more by itself)."""
    max_video_pixels: int = 8192 * 8192
    """Pixels per video frame, checked from the header."""
    max_frames: int = 200_000
    """Frames a container may hold (counted from its packets before any decoding)."""
    max_duration_s: float = 4 * 3600.0
    max_audio_s: float = 3600.0
    """Seconds of audio per item: from the container's duration before decoding, and counted while decoding (a
    container may understate it), so that one item's samples stay under ``max_audio_s`` x 16000 x 4 bytes (230 MB for
    an hour at 16 kHz float32)."""
    allow_local_paths: bool = True
    """Read local paths (``str``/``PathLike``, ``file://``, ``{"path": ...}``). Off for network entry points."""
    local_media_root: str | None = None
    """When set, only regular files whose resolved real path lies inside this directory are read."""
    allow_urls: bool = False
    allow_private_urls: bool = False
    """Allow URLs (and redirects) whose address is not globally routable (loopback, private, link-local,
    carrier-grade NAT, and IPv6 forms that wrap such an IPv4 address)."""
    url_timeout_s: float = 10.0
    """The whole download, redirects included, must end within this time."""
    max_redirects: int = 5

    def __post_init__(self) -> None:
        for name in ("max_bytes", "max_image_pixels", "max_video_pixels", "max_frames"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"MediaLimits.{name} must be a positive int, got {value!r}")
        if self.max_image_pixels > PILLOW_MAX_IMAGE_PIXELS:
            raise ValueError(
                f"MediaLimits.max_image_pixels={self.max_image_pixels} is above what Pillow decodes "
                f"({PILLOW_MAX_IMAGE_PIXELS})"
            )
        for name in ("max_duration_s", "url_timeout_s"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and 0 < value < float("inf")):
                raise ValueError(f"MediaLimits.{name} must be a positive finite number, got {value!r}")
        if self.local_media_root is not None:
            if not os.path.isdir(self.local_media_root):
                raise ValueError(f"local_media_root {self.local_media_root!r} is not a directory")
            object.__setattr__(self, "local_media_root", os.path.realpath(self.local_media_root))
            object.__setattr__(self, "allow_local_paths", True)

    @classmethod
    def for_network(
        cls, *, allow_urls: bool = False, local_media_root: str | None = None, **overrides: Any
    ) -> MediaLimits:
        """Limits for an entry point reached over a network (``gpu-mm serve``, an engine's front end):
        inline media only, unless the operator allows URLs or names a directory of local media."""
        return cls(allow_local_paths=local_media_root is not None, local_media_root=local_media_root,
                   allow_urls=allow_urls, **overrides)


@dataclasses.dataclass
class Source:
    """One item, parsed: encoded ``data`` bytes, or an already decoded ``pixels`` object."""

    item: str
    """How errors name the item, e.g. ``image[2] (bytes, 5123 B)``."""
    kind: Literal["encoded", "pil", "array"]
    data: bytes | None = None
    pixels: Any = None


VIDEO_SUFFIXES = frozenset({".mp4", ".mkv", ".webm", ".mov", ".avi", ".m4v"})
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
AUDIO_SUFFIXES = frozenset({".wav", ".flac", ".mp3", ".m4a", ".aac", ".ogg", ".opus", ".oga", ".weba"})
"""File name suffixes of each kind of media (the command line and dataset runs sort files by them)."""


def kind_of_path(path: str) -> Literal["image", "video", "audio"]:
    """``video`` or ``audio`` by a file name's suffix, else ``image``."""
    suffix = os.path.splitext(path)[1].lower()
    return "video" if suffix in VIDEO_SUFFIXES else "audio" if suffix in AUDIO_SUFFIXES else "image"


_DATA_URI = re.compile(r"^data:(?P<mime>[\w/+.-]*)(?P<params>(;[\w=.-]+)*?)(?P<b64>;base64)?,", re.I)
_B64ISH = re.compile(r"[A-Za-z0-9+/=\s_-]+")
_MAX_NESTING = 4
"""``{"image_url": {"url": ...}}`` is two levels; anything deeper is not a media item."""


def load_source(obj: Any, item: str, limits: MediaLimits = MediaLimits(), *, _depth: int = 0) -> Source:
    """Parse one user item into a :class:`Source`.

    Accepts a ``data:`` URI, base64 text, http(s) URL (when ``limits.allow_urls``), a path or ``file://``
    URI (when ``limits.allow_local_paths``), bytes-like, a binary file object, a PIL image, a numpy/torch
    array, or a dict holding one of these under ``image``, ``video``, ``audio``, ``url``, ``image_url``,
    ``video_url``, ``audio_url``, ``input_audio``, ``path`` or ``data``.

    Raises:
        SourceError: the item cannot be read (bad base64, path or URL not allowed, unknown type).
        LimitExceeded: the item is larger than ``limits.max_bytes``.
    """
    if isinstance(obj, (bytes, bytearray, memoryview)):
        data = bytes(obj)
        return _encoded(item + f" (bytes, {len(data)} B)", data, limits)
    if isinstance(obj, os.PathLike):
        return _from_path(os.fspath(obj), item, limits)
    if isinstance(obj, str):
        return _from_string(obj, item, limits)
    if hasattr(obj, "read") and callable(obj.read):
        data = obj.read(limits.max_bytes + 1)
        if not isinstance(data, (bytes, bytearray)):
            raise SourceError(item, "file object must be opened in binary mode")
        return _encoded(item + " (file object)", bytes(data), limits)
    mod = type(obj).__module__
    if mod.startswith("PIL."):
        return Source(item + " (PIL image)", "pil", pixels=obj)
    if mod.startswith("numpy") or mod.startswith("torch"):
        return Source(item + f" ({mod.split('.')[0]} array)", "array", pixels=obj)
    if isinstance(obj, dict):
        if _depth >= _MAX_NESTING:
            raise SourceError(item, f"item nested more than {_MAX_NESTING} dicts deep")
        for key in ("image", "video", "audio", "url", "image_url", "video_url", "audio_url", "input_audio", "path",
                    "data"):
            if key in obj:
                return load_source(obj[key], item, limits, _depth=_depth + 1)
    raise SourceError(
        item,
        f"unsupported input type {type(obj).__name__}; pass {_accepted(limits)}",
    )


def _accepted(limits: MediaLimits) -> str:
    kinds = ["a data URI", "a base64 string"]
    if limits.allow_urls:
        kinds.append("an http(s) URL")
    if limits.local_media_root is not None:
        kinds.append("a path inside the allowed media directory")
    elif limits.allow_local_paths:
        kinds += ["a path", "bytes", "a binary file object", "a PIL image", "a numpy/torch array"]
    return ", ".join(kinds[:-1]) + " or " + kinds[-1]


def _encoded(item: str, data: bytes, limits: MediaLimits) -> Source:
    if len(data) > limits.max_bytes:
        raise LimitExceeded(item, f"{len(data)} bytes is over max_bytes={limits.max_bytes}")
    if not data:
        raise SourceError(item, "empty input (0 bytes)")
    return Source(item, "encoded", data=data)


# ---------------------------------------------------------------------------------------------- local files

_REFUSED_PATH = "local paths are not accepted here; send the media inline (base64 or a data URI)"


def _within(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def _in_root(path: str, root: str) -> str | None:
    """``path`` (relative to ``root``, or absolute) resolved, if its real path lies inside ``root``."""
    real = os.path.realpath(os.path.join(root, path))
    return real if _within(real, root) else None


def _from_path(path: str, item: str, limits: MediaLimits) -> Source:
    """Read a local file under the limits' trust policy: a regular file only (no FIFO, device, socket or
    directory, so nothing blocks or streams forever), its size checked from ``fstat`` before reading."""
    if not limits.allow_local_paths:
        raise SourceError(item + " (path)", _REFUSED_PATH)
    if "\x00" in path:  # no file has one; the OS calls below would raise a bare ValueError
        raise SourceError(item + " (path)", "path contains a NUL byte")
    root = limits.local_media_root
    if root is not None:
        resolved = _in_root(path, root)
        if resolved is None:
            # The same words whether or not such a file exists.
            raise SourceError(item + " (path)", "path is outside the allowed media directory")
        real = resolved
        label = f"{item} ({os.path.relpath(real, root)!r} in the media directory)"
    else:
        real = path
        label = f"{item} ({path!r})"
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0)
    if root is not None:
        flags |= getattr(os, "O_NOFOLLOW", 0)  # ``real`` has no links left; one swapped in since is refused
    try:
        fd = os.open(real, flags)
    except FileNotFoundError:
        raise SourceError(label, "no such file") from None
    except IsADirectoryError:
        raise SourceError(label, "is a directory") from None
    except PermissionError:
        raise SourceError(label, "permission denied") from None
    except OSError as exc:
        raise SourceError(label, f"cannot open: {exc.strerror or exc}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise SourceError(label, "not a regular file")
        if root is not None and not _within(_opened_path(fd, real), root):
            raise SourceError(label, "path is outside the allowed media directory")
        if st.st_size > limits.max_bytes:
            raise LimitExceeded(label, f"file of {st.st_size} bytes is over max_bytes={limits.max_bytes}")
        chunks: list[bytes] = []
        got = 0
        while got <= limits.max_bytes:  # st_size can lie (/proc, a file still growing): bound the read too
            chunk = os.read(fd, min(1 << 22, limits.max_bytes + 1 - got))
            if not chunk:
                break
            chunks.append(chunk)
            got += len(chunk)
    except OSError as exc:
        raise SourceError(label, f"cannot read: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
    return _encoded(label, b"".join(chunks), limits)


def _opened_path(fd: int, fallback: str) -> str:
    """The real path of an open file (Linux), so a directory swapped in after the check is caught."""
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return os.path.realpath(fallback)


def _from_string(s: str, item: str, limits: MediaLimits) -> Source:
    low = s[:16].lower()
    if low.startswith("data:"):
        m = _DATA_URI.match(s)
        if not m:
            raise SourceError(item + " (data URI)", "malformed data URI")
        payload = s[m.end():]
        if m.group("b64"):
            return _encoded(item + " (data URI)", _b64(payload, item + " (data URI)"), limits)
        return _encoded(item + " (data URI)", urllib.parse.unquote_to_bytes(payload), limits)
    if low.startswith("file://"):
        return _from_path(urllib.parse.unquote(urllib.parse.urlparse(s).path), item, limits)
    if low.startswith(("http://", "https://")):
        return _from_url(s, item, limits)
    if limits.allow_local_paths and len(s) < 4096 and "\x00" not in s:
        if limits.local_media_root is not None:
            real = _in_root(s, limits.local_media_root)
            if real is not None and os.path.isfile(real):
                return _from_path(s, item, limits)
        elif os.path.exists(s):
            return _from_path(s, item, limits)
    # Long strings of base64 alphabet are taken as base64 payloads.
    if len(s) >= 16 and _B64ISH.fullmatch(s[:4096]):
        return _encoded(item + " (base64)", _b64(s, item + " (base64)"), limits)
    if limits.local_media_root is not None:
        reason = "not a data URI, base64 payload, URL or file inside the allowed media directory"
    elif limits.allow_local_paths:
        reason = "not an existing path, URL, data URI or base64 payload"
    else:
        reason = "not a data URI or base64 payload (" + _REFUSED_PATH.split(";")[0] + ")"
    raise SourceError(item + f" ({s[:60]!r})", reason)


def _b64(payload: str, item: str) -> bytes:
    """Decode a base64 payload: the standard or URL-safe alphabet, whitespace anywhere (line-wrapped base64),
    '=' padding only at the end and optional.

    pybase64 decodes a ``str`` with the GIL released (30 MB: ~20-25 ms, the event loop's thread running
    meanwhile; binascii held the GIL for all of its ~120 ms). The common payload (standard alphabet, padded, one
    line) is decoded as it is; only one that fails that strict decode is normalized (whitespace removed, the
    URL-safe alphabet mapped, padding added) and decoded again.

    Raises:
        SourceError: anything else (non-ASCII text, a stray character, padding before the end).
    """
    try:
        return pybase64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        pass
    try:
        if len(payload.split(maxsplit=1)) != 1 or payload[:1].isspace() or payload[-1:].isspace():
            payload = "".join(payload.split())  # line-wrapped base64 (MIME, PEM): whitespace is not data
        if "-" in payload or "_" in payload:
            payload = payload.translate(_URL_SAFE)
        payload += "=" * (-len(payload) % 4)
        if "=" in payload[:-2]:
            raise ValueError("padding before the end")
        return pybase64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise SourceError(item, f"invalid base64 ({exc})") from None


_URL_SAFE = str.maketrans("-_", "+/")


# ---------------------------------------------------------------------------------------------- URLs

_NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))


def address_is_public(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Whether a URL may be fetched from ``ip``: globally routable unicast, and so is any IPv4 address an
    IPv6 address wraps (IPv4-mapped, 6to4, Teredo, NAT64), so ``2002:7f00:1::`` is not 127.0.0.1 let in."""
    if ip.is_multicast or not ip.is_global:
        return False
    if isinstance(ip, ipaddress.IPv6Address):
        wrapped: list[ipaddress.IPv4Address] = []
        if ip.ipv4_mapped is not None:
            wrapped.append(ip.ipv4_mapped)
        if ip.sixtofour is not None:
            wrapped.append(ip.sixtofour)
        if ip.teredo is not None:
            wrapped.extend(ip.teredo)
        if any(ip in net for net in _NAT64):
            wrapped.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
        return all(address_is_public(v4) for v4 in wrapped)
    return True


def _resolve(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to (one DNS resolution; the connection uses these, not another)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def _check_address(address: str, host: str, item: str, limits: MediaLimits) -> None:
    if limits.allow_private_urls:
        return
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if not address_is_public(ip):
        raise SourceError(item, f"URL host {host!r} is at non-public address {ip} (allow_private_urls=False)")


class _PinnedHTTPConnection(http.client.HTTPConnection):
    """Connects to an address resolved and checked beforehand, and checks the peer it actually reached."""

    def __init__(self, host: str, port: int, address: str, check: Any, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self._address, self._check = address, check

    def _pinned_socket(self) -> socket.socket:
        sock = socket.create_connection((self._address, self.port), self.timeout)
        try:
            self._check(sock.getpeername()[0])
        except BaseException:
            sock.close()
            raise
        return sock

    def connect(self) -> None:
        self.sock = self._pinned_socket()


class _PinnedHTTPSConnection(_PinnedHTTPConnection):
    def __init__(self, host: str, port: int, address: str, check: Any, timeout: float) -> None:
        super().__init__(host, port, address, check, timeout)
        self._context = ssl.create_default_context()

    def connect(self) -> None:
        self.sock = self._context.wrap_socket(self._pinned_socket(), server_hostname=self.host)


_REDIRECTS = (301, 302, 303, 307, 308)


def _from_url(url: str, item: str, limits: MediaLimits) -> Source:
    label = f"{item} ({url[:80]})"
    if not limits.allow_urls:
        raise SourceError(label, "URLs are disabled (MediaLimits.allow_urls=False)")
    deadline = time.monotonic() + limits.url_timeout_s
    try:
        for _ in range(limits.max_redirects + 1):
            status, location, data = _get_once(url, label, limits, deadline)
            if status in _REDIRECTS:
                if not location:
                    raise SourceError(label, f"HTTP {status} without a Location")
                url = urllib.parse.urljoin(url, location)
                continue
            if status != 200:
                raise SourceError(label, f"download failed: HTTP {status}")
            return _encoded(label, data, limits)
    except GpuMMError:
        raise
    except (OSError, http.client.HTTPException, ValueError) as exc:
        if time.monotonic() >= deadline:
            raise SourceError(label, f"download did not finish within url_timeout_s={limits.url_timeout_s}") from None
        raise SourceError(label, f"download failed: {type(exc).__name__}: {exc}") from None
    raise SourceError(label, f"more than max_redirects={limits.max_redirects} redirects")


def _remaining(deadline: float, label: str, limits: MediaLimits) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise SourceError(label, f"download did not finish within url_timeout_s={limits.url_timeout_s}")
    return left


def _get_once(url: str, label: str, limits: MediaLimits, deadline: float) -> tuple[int, str | None, bytes]:
    """One GET, on a connection to an address checked once and then used (no second DNS lookup)."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise SourceError(label, f"only http(s) URLs are allowed, got {url[:80]!r}")
    host = parts.hostname
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        addresses = _resolve(host, port)
    except (socket.gaierror, UnicodeError) as exc:
        raise SourceError(label, f"cannot resolve {host!r}: {exc}") from None
    if not addresses:
        raise SourceError(label, f"cannot resolve {host!r}")
    for address in addresses:  # every address the name has must be public, not only the first
        _check_address(address, host, label, limits)

    def check(peer: str) -> None:
        _check_address(peer, host, label, limits)

    cls = _PinnedHTTPSConnection if parts.scheme == "https" else _PinnedHTTPConnection
    conn = cls(host, port, addresses[0], check, timeout=_remaining(deadline, label, limits))
    resp = None
    try:
        path = urllib.parse.urlunsplit(("", "", parts.path or "/", parts.query, ""))
        conn.request("GET", path, headers={"User-Agent": "gpu-mm", "Accept-Encoding": "identity"})
        sock = conn.sock  # the response keeps reading from it after the connection lets go of it
        sock.settimeout(_remaining(deadline, label, limits))
        resp = conn.getresponse()
        if resp.status in _REDIRECTS:
            return resp.status, resp.getheader("Location"), b""
        if resp.status != 200:
            return resp.status, None, b""
        length = resp.getheader("Content-Length")
        if length is not None and length.strip().isdigit() and int(length) > limits.max_bytes:
            raise LimitExceeded(label, f"Content-Length {length} is over max_bytes={limits.max_bytes}")
        chunks: list[bytes] = []
        got = 0
        while True:
            # Each read waits at most for what is left of the whole download's time.
            sock.settimeout(_remaining(deadline, label, limits))
            chunk = resp.read1(1 << 20)
            if not chunk:
                break
            chunks.append(chunk)
            got += len(chunk)
            if got > limits.max_bytes:
                raise LimitExceeded(label, f"body is over max_bytes={limits.max_bytes}")
        return 200, None, b"".join(chunks)
    finally:
        if resp is not None:
            resp.close()
        conn.close()
