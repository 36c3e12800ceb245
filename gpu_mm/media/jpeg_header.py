"""A JPEG's size, mode and EXIF orientation from its markers, as Pillow reports them, in microseconds.

Pillow's JPEG header parse reads every quantization table in Python: most of what planning an image took
(``benchmarks/plan_cost.py``, figures in docs/benchmarks.md). This reader walks the segments up to the start of scan and
reads only the frame header and the first Exif directory's orientation. It answers only for the common layout and
for what Pillow would read to the same answer; for anything else it returns None and the caller asks Pillow, with
its own rules and errors. Every read is bounded by the bytes at hand (the input is hostile). Held to Pillow by
``tests/media/test_jpeg_header.py``: 17 common encodings, and a property test on damaged headers.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

__all__ = ["JpegHeader", "read_jpeg_header"]


class JpegHeader(NamedTuple):
    width: int
    height: int
    """As displayed: after the EXIF orientation (transposing orientations swap the stored sides)."""
    mode: str
    """Pillow's mode for the frame's components: ``L``, ``RGB`` or ``CMYK``."""
    orientation: int
    """EXIF orientation (1-8; 1 = as stored, or no tag)."""


_FRAMES = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC} | {0xDE}  # what Pillow reads as a frame header
_SEGMENTS = _FRAMES | {0xC4, 0xCC, 0xDA, 0xDB, 0xDC, 0xDD, 0xDF, 0xFE} | frozenset(range(0xE0, 0xF0))
"""Markers up to the scan's that Pillow reads by their length (the rest it scans past byte by byte)."""


_SOF_MODES = {1: "L", 3: "RGB", 4: "CMYK"}
_SOF = (0xC0, 0xC1, 0xC2)  # baseline, extended and progressive Huffman-coded frames


def _exif_orientation(exif: bytes) -> int | None:
    """The orientation tag of an APP1 Exif segment's first image directory, read as Pillow reads it (1 when the
    directory has none); None for anything but a well-formed classic TIFF directory with the tag, if present,
    stored once as one SHORT: Pillow then reads it (and judges what is malformed)."""
    tiff = exif[6:]
    order = {b"II*\x00": "<", b"MM\x00*": ">"}.get(tiff[:4])
    if order is None or len(tiff) < 8:
        return None
    (ifd,) = struct.unpack_from(order + "I", tiff, 4)
    if ifd < 8 or ifd + 2 > len(tiff):
        return None
    (count,) = struct.unpack_from(order + "H", tiff, ifd)
    if ifd + 2 + 12 * count + 4 > len(tiff):  # the entries and the next directory's offset
        return None
    found = []
    for k in range(count):
        tag, kind, n = struct.unpack_from(order + "HHI", tiff, ifd + 2 + 12 * k)
        if tag == 0x0112:
            if kind != 3 or n != 1:
                return None
            found.append(struct.unpack_from(order + "H", tiff, ifd + 2 + 12 * k + 8)[0])
    if len(found) > 1:
        return None
    return found[0] if found else 1


def read_jpeg_header(data: bytes) -> JpegHeader | None:
    """``data``'s size, mode and EXIF orientation, read from its markers up to the start of scan; None for anything
    but the common layout (well-formed segments, one 8-bit baseline/extended/progressive frame of 1, 3 or 4
    components, at most one Exif segment, no XMP, no multi-picture index, no padding) and for what Pillow's parse
    would refuse (short JFIF/Adobe/ICC segments, incomplete quantization tables or component entries, a scan header
    past the end)."""
    size = len(data)
    pos, frame, exif = 2, None, None
    while pos + 4 <= size:
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker not in _SEGMENTS:
            return None  # a marker Pillow does not skip by its length, or junk
        (length,) = struct.unpack_from(">H", data, pos + 2)
        end = pos + 2 + length
        if length < 2 or end > size:
            return None
        if marker == 0xDA:  # the start of scan's own header read: the header is complete
            break
        segment = data[pos + 4:end]
        if marker in _FRAMES:
            if frame is not None or marker not in _SOF or len(segment) < 6 or (len(segment) - 6) % 3 or segment[0] != 8:
                return None  # Pillow reads whole 3-byte component entries
            frame = segment
        elif marker == 0xDB and not _tables_whole(segment):
            return None
        elif marker == 0xE1 and segment.startswith(b"Exif\x00\x00"):
            if exif is not None:
                return None  # Pillow joins them
            exif = segment
        elif _refused_or_rare(marker, segment):
            return None
        pos = end
    else:
        return None  # no scan
    if frame is None:
        return None
    height, width = struct.unpack_from(">HH", frame, 1)
    mode = _SOF_MODES.get(frame[5])
    if mode is None or width == 0 or height == 0:
        return None
    orientation = 1 if exif is None else _exif_orientation(exif)
    if orientation is None:
        return None
    if orientation in (5, 6, 7, 8):  # transposed: height and width swap
        width, height = height, width
    return JpegHeader(width, height, mode, orientation if orientation in (2, 3, 4, 5, 6, 7, 8) else 1)


def _tables_whole(segment: bytes) -> bool:
    """Whether a DQT segment holds whole quantization tables (Pillow refuses the image otherwise)."""
    while segment:
        n = 1 + (1 if segment[0] < 16 else 2) * 64
        if len(segment) < n:
            return False
        segment = segment[n:]
    return True


def _refused_or_rare(marker: int, segment: bytes) -> bool:
    """Application segments that Pillow refuses when short, or that change what it reports: XMP (it may carry the
    orientation), a multi-picture index (an MPO file), Photoshop resources."""
    if marker == 0xE0 and segment.startswith(b"JFIF") or marker == 0xEE and segment.startswith(b"Adobe"):
        return len(segment) < 12
    if marker == 0xE2 and segment.startswith(b"ICC_PROFILE\x00"):
        return len(segment) < 14
    return (marker == 0xE1 and segment.startswith(b"http://ns.adobe.com/xap/1.0/\x00")) or (
        marker == 0xE2 and segment.startswith(b"MPF\x00")) or (marker == 0xED and segment.startswith(b"Photoshop"))
