"""Typed errors raised by gpu_mm.

Every error a caller can meet is a subclass of :class:`GpuMMError`, so a server can map the whole
family at once (``Overloaded`` -> HTTP 503, ``ProcessingTimeout`` -> 504, ``MediaError`` -> 400).
"""

from __future__ import annotations

__all__ = [
    "BackendUnavailable",
    "DecodeError",
    "GpuMMError",
    "InvalidRequest",
    "ItemError",
    "LimitExceeded",
    "MediaError",
    "MemoryExhausted",
    "Overloaded",
    "ProcessingTimeout",
    "ProcessorClosed",
    "ServiceUnavailable",
    "SourceError",
    "UnsupportedMedia",
]


class GpuMMError(Exception):
    """Base class of every error raised by gpu_mm.

    ``status_code`` is the HTTP status a server should answer with (SGLang's HTTP server reads it).
    """

    status_code = 500


class Overloaded(GpuMMError):
    """Raised at once when a call would exceed the in-flight plus queued bound (HTTP 503)."""

    status_code = 503


class ProcessingTimeout(GpuMMError, TimeoutError):
    """Raised when a call's deadline passes; its work may still be running (HTTP 504)."""

    status_code = 504


class ProcessorClosed(GpuMMError, RuntimeError):
    """Raised for calls made, or still queued, after ``shutdown()``."""

    status_code = 503


class ServiceUnavailable(GpuMMError, ConnectionError):
    """Raised by :class:`gpu_mm.Client` when the service cannot be reached or the connection breaks mid-call."""

    status_code = 503


class BackendUnavailable(GpuMMError, RuntimeError):
    """Raised when a requested backend (CUDA, DALI, decord, ...) is not installed or usable."""


class ItemError(GpuMMError):
    """Base class of errors about one item of a call: ``item`` names it, ``reason`` says why; the message is both."""

    def __init__(self, item: str, reason: str) -> None:
        self.item = item
        self.reason = reason
        super().__init__(f"{item}: {reason}")

    def __reduce__(self) -> tuple[type, tuple[str, str]]:
        # Rebuilt from (item, reason), not from args (the joined message): pickling (Ray, multiprocessing) and
        # copy.copy (web frameworks' error handlers) need it.
        return type(self), (self.item, self.reason)


class MemoryExhausted(ItemError, MemoryError):
    """Raised for a call whose work ran out of memory on its device (or the host) although its plan fitted the
    budget: the device holds more than the budget assumed (an engine's own memory grew, or the budget is set
    above what is free). Nothing of the call is kept and its slot is free again; a later retry may pass, or lower
    ``memory_budget_bytes`` (HTTP 503)."""

    status_code = 503


class MediaError(ItemError, ValueError):
    """Base class of errors about one input item; the message names the item and the reason."""

    status_code = 400


class SourceError(MediaError):
    """Raised when an item's bytes cannot be obtained (bad path, bad base64, URL not allowed)."""


class LimitExceeded(MediaError):
    """Raised when an item exceeds a configured limit (bytes, pixels, frames, duration)."""


class UnsupportedMedia(MediaError):
    """Raised when an item is of a format or codec no available backend decodes."""


class DecodeError(MediaError):
    """Raised when an item is corrupt, truncated or empty and cannot be decoded."""


class InvalidRequest(GpuMMError, ValueError):
    """Raised when a request option has the wrong type or an out-of-range value (HTTP 400)."""

    status_code = 400

    def __reduce__(self) -> tuple[type, tuple[str, str]]:
        return type(self), (self.field, self.reason)

    def __init__(self, field: str, reason: str) -> None:
        self.field = field
        self.reason = reason
        super().__init__(f"{field}: {reason}")


def first_line(exc: BaseException) -> str:
    """The first line of ``exc``'s message (what a decoder library says), or its type's name when it says nothing."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def describe(exc: BaseException) -> str:
    """``TypeName: first line of the message`` (at most 200 characters), for an error that names its item."""
    return f"{type(exc).__name__}: {first_line(exc)}"[:200] if str(exc).strip() else type(exc).__name__
