"""Per-request options, parsed and checked once at the edge (Python API, ``gpu-mm serve``, plug-ins)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

from .errors import InvalidRequest

__all__ = ["RequestOptions"]

MAX_FPS = 240.0
"""Sampling faster than this is not a meaningful request (and ``fps=1e308`` would overflow the plan)."""
MAX_PIXELS = 2**31
MAX_SECONDS = 7 * 24 * 3600.0


@dataclasses.dataclass(frozen=True)
class RequestOptions:
    """Options one request may set; ``None`` leaves the preprocessor's config in charge.

    Build it with :meth:`parse` from anything a client sent: every value is type- and range-checked, and a
    bad one raises :class:`gpu_mm.InvalidRequest` naming the field (HTTP 400).
    """

    fps: float | None = None
    """Frames sampled per second of video, in (0, 240]."""
    nframes: int | None = None
    """Frames sampled per video (overrides ``fps``), >= 1."""
    video_start: float | None = None
    """Start of the time window to sample, in seconds (>= 0)."""
    video_end: float | None = None
    """End of the time window to sample, in seconds (> ``video_start``)."""
    min_pixels: int | None = None
    max_pixels: int | None = None
    total_pixels: int | None = None
    do_pan_and_scan: bool | None = None
    """Gemma 3: cut an image of a marked aspect ratio into crops beside the whole image (transformers' name)."""
    use_audio_in_video: bool | None = None
    """Omni families: each video's own audio track becomes an audio item too (after the request's audios, in video
    order; a video without one adds none), as the Omni processors' ``use_audio_in_video`` loads it."""

    @classmethod
    def parse(cls, values: Mapping[str, Any] | RequestOptions | None) -> RequestOptions:
        """Check ``values`` (e.g. a request's JSON fields) and return the options.

        Raises:
            InvalidRequest: an unknown option, a value of the wrong type, or one out of range.
        """
        if values is None:
            return cls()
        if isinstance(values, RequestOptions):
            return values
        if not isinstance(values, Mapping):
            raise InvalidRequest("options", f"must be a mapping, got {type(values).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(str(k) for k in values if k not in known)
        if unknown:
            raise InvalidRequest(unknown[0], f"unknown per-request option; known: {sorted(known)}")
        fps = _number(values, "fps", lo=0.0, hi=MAX_FPS, open_lo=True)
        nframes = _integer(values, "nframes", lo=1, hi=1_000_000)
        start = _number(values, "video_start", lo=0.0, hi=MAX_SECONDS)
        end = _number(values, "video_end", lo=0.0, hi=MAX_SECONDS)
        if start is not None and end is not None and end <= start:
            raise InvalidRequest("video_end", f"must be after video_start={start}, got {end}")
        min_pixels = _integer(values, "min_pixels", lo=1, hi=MAX_PIXELS)
        max_pixels = _integer(values, "max_pixels", lo=1, hi=MAX_PIXELS)
        total_pixels = _integer(values, "total_pixels", lo=1, hi=2**40)
        if min_pixels is not None and max_pixels is not None and min_pixels > max_pixels:
            raise InvalidRequest("min_pixels", f"must be <= max_pixels={max_pixels}, got {min_pixels}")
        pan_and_scan = values.get("do_pan_and_scan")
        if pan_and_scan is not None and not isinstance(pan_and_scan, bool):
            raise InvalidRequest("do_pan_and_scan", f"must be a boolean, got {type(pan_and_scan).__name__}")
        audio_in_video = values.get("use_audio_in_video")
        if audio_in_video is not None and not isinstance(audio_in_video, bool):
            raise InvalidRequest("use_audio_in_video", f"must be a boolean, got {type(audio_in_video).__name__}")
        return cls(fps, nframes, start, end, min_pixels, max_pixels, total_pixels, pan_and_scan, audio_in_video)

    def as_dict(self) -> dict[str, Any]:
        """The options that are set, by name."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if getattr(self, f.name) is not None}


def _number(values: Mapping[str, Any], name: str, *, lo: float, hi: float, open_lo: bool = False) -> float | None:
    value = values.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidRequest(name, f"must be a number, got {type(value).__name__} {str(value)[:40]!r}")
    value = float(value)
    if not math.isfinite(value) or value > hi or value < lo or (open_lo and value == lo):
        bound = f"({lo}, {hi}]" if open_lo else f"[{lo}, {hi}]"
        raise InvalidRequest(name, f"must be in {bound}, got {value}")
    return value


def _integer(values: Mapping[str, Any], name: str, *, lo: int, hi: int) -> int | None:
    value = values.get(name)
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRequest(name, f"must be an integer, got {type(value).__name__} {str(value)[:40]!r}")
    if not lo <= value <= hi:
        raise InvalidRequest(name, f"must be in [{lo}, {hi}], got {value}")
    return value
