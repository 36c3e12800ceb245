"""Turn loose user input (paths, URLs, base64, bytes, images, arrays) into typed items, once, at the edge."""

from __future__ import annotations

import base64
import binascii
import dataclasses
import io
import ipaddress
import os
import re
import socket
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Literal

from ..errors import LimitExceeded, SourceError

__all__ = ["MediaLimits", "Source", "load_source"]


@dataclasses.dataclass(frozen=True)
class MediaLimits:
    """Limits applied to every item before and during decoding."""

    max_bytes: int = 512 * 1024 * 1024
    max_image_pixels: int = 128 * 1024 * 1024
    """Decoded pixels per image (decompression bombs), checked from the header before decoding."""
    max_video_pixels: int = 8192 * 8192
    """Pixels per video frame, checked from the header."""
    max_frames: int = 200_000
    """Frames a container may hold (counted from its packets before any decoding)."""
    max_duration_s: float = 4 * 3600.0
    allow_urls: bool = False
    allow_private_urls: bool = False
    """Allow URLs (and redirects) that resolve to loopback, private or link-local addresses."""
    url_timeout_s: float = 10.0


@dataclasses.dataclass
class Source:
    """One item, parsed: encoded ``data`` bytes, or an already decoded ``pixels`` object."""

    item: str
    """How errors name the item, e.g. ``image[2] (bytes, 5123 B)``."""
    kind: Literal["encoded", "pil", "array"]
    data: bytes | None = None
    pixels: Any = None


_DATA_URI = re.compile(r"^data:(?P<mime>[\w/+.-]*)(?P<params>(;[\w=.-]+)*?)(?P<b64>;base64)?,", re.I)


def load_source(obj: Any, item: str, limits: MediaLimits = MediaLimits()) -> Source:
    """Parse one user item into a :class:`Source`.

    Accepts a path, ``file://`` URI, ``data:`` URI, base64 text, http(s) URL (when
    ``limits.allow_urls``), bytes-like, a binary file object, a PIL image, or a numpy/torch array.

    Raises:
        SourceError: the item cannot be read (missing file, bad base64, URL refused, unknown type).
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
        for key in ("image", "video", "url", "image_url", "video_url", "path", "data"):
            if key in obj:
                value = obj[key]
                if isinstance(value, dict) and "url" in value:
                    value = value["url"]
                return load_source(value, item, limits)
    raise SourceError(
        item,
        f"unsupported input type {type(obj).__name__}; pass a path, URL, data URI, base64 string, bytes, "
        "binary file object, PIL image, or a numpy/torch array",
    )


def _encoded(item: str, data: bytes, limits: MediaLimits) -> Source:
    if len(data) > limits.max_bytes:
        raise LimitExceeded(item, f"{len(data)} bytes is over max_bytes={limits.max_bytes}")
    if not data:
        raise SourceError(item, "empty input (0 bytes)")
    return Source(item, "encoded", data=data)


def _from_path(path: str, item: str, limits: MediaLimits) -> Source:
    label = f"{item} ({path!r})"
    try:
        size = os.path.getsize(path)
        if size > limits.max_bytes:
            raise LimitExceeded(label, f"file of {size} bytes is over max_bytes={limits.max_bytes}")
        with open(path, "rb") as f:
            data = f.read(limits.max_bytes + 1)
    except FileNotFoundError:
        raise SourceError(label, "no such file") from None
    except IsADirectoryError:
        raise SourceError(label, "is a directory") from None
    except PermissionError:
        raise SourceError(label, "permission denied") from None
    return _encoded(label, data, limits)


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
    if os.path.exists(s):
        return _from_path(s, item, limits)
    # Long strings of base64 alphabet are taken as base64 payloads.
    if len(s) >= 16 and re.fullmatch(r"[A-Za-z0-9+/=\s_-]+", s[:4096]):
        return _encoded(item + " (base64)", _b64(s, item + " (base64)"), limits)
    raise SourceError(item + f" ({s[:60]!r})", "not an existing path, URL, data URI or base64 payload")


def _b64(payload: str, item: str) -> bytes:
    try:
        cleaned = re.sub(r"\s+", "", payload)
        if "-" in cleaned or "_" in cleaned:
            return base64.urlsafe_b64decode(cleaned + "=" * (-len(cleaned) % 4))
        return base64.b64decode(cleaned + "=" * (-len(cleaned) % 4), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise SourceError(item, f"invalid base64 ({exc})") from None


def _check_host(url: str, item: str, limits: MediaLimits) -> None:
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise SourceError(item, f"only http(s) URLs are allowed, got {url[:80]!r}")
    if limits.allow_private_urls:
        return
    try:
        infos = socket.getaddrinfo(parsed.hostname, parsed.port or 0, proto=socket.IPPROTO_TCP)
    except socket.gaierror as exc:
        raise SourceError(item, f"cannot resolve {parsed.hostname!r}: {exc}") from None
    for info in infos:
        ip = ipaddress.ip_address(info[4][0])
        if ip.is_private or ip.is_loopback or ip.is_link_local or ip.is_reserved or ip.is_multicast:
            raise SourceError(
                item, f"URL host {parsed.hostname!r} resolves to non-public address {ip} (allow_private_urls=False)"
            )


class _CheckedRedirect(urllib.request.HTTPRedirectHandler):
    def __init__(self, item: str, limits: MediaLimits) -> None:
        self.item, self.limits = item, limits

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # type: ignore[no-untyped-def]
        _check_host(newurl, self.item, self.limits)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _from_url(url: str, item: str, limits: MediaLimits) -> Source:
    label = f"{item} ({url[:80]})"
    if not limits.allow_urls:
        raise SourceError(label, "URLs are disabled (MediaLimits.allow_urls=False)")
    _check_host(url, label, limits)
    opener = urllib.request.build_opener(_CheckedRedirect(label, limits))
    try:
        with opener.open(url, timeout=limits.url_timeout_s) as resp:
            length = resp.headers.get("Content-Length")
            if length is not None and int(length) > limits.max_bytes:
                raise LimitExceeded(label, f"Content-Length {length} is over max_bytes={limits.max_bytes}")
            buf = io.BytesIO()
            while chunk := resp.read(1 << 20):
                buf.write(chunk)
                if buf.tell() > limits.max_bytes:
                    raise LimitExceeded(label, f"body is over max_bytes={limits.max_bytes}")
            data = buf.getvalue()
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        raise SourceError(label, f"download failed: {exc}") from None
    return _encoded(label, data, limits)
