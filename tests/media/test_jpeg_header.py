"""gpu-mm's JPEG header reader (``gpu_mm.media.jpeg_header``) against Pillow's (``media.image._pillow_header``, the
reader behind transformers' ``load_image``): where it answers, the same size, mode and EXIF orientation as Pillow;
where a header is not of the common layout, or is one Pillow would refuse, it leaves the answer to Pillow."""

from __future__ import annotations

import io

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image, ImageCms

from gpu_mm import GpuMMError
from gpu_mm.media.image import ImageInfo, _pillow_header, probe_image
from gpu_mm.media.jpeg_header import read_jpeg_header
from gpu_mm.media.sources import Source

from media_helpers import exif_jpeg, make_image


def _save(img: Image.Image, **options: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", **options)
    return buf.getvalue()


def _pattern(mode: str = "RGB") -> Image.Image:
    return Image.open(io.BytesIO(make_image(40, 72, "PNG", seed=4))).convert(mode)


COMMON = {
    "4:2:0": lambda: make_image(40, 72, "JPEG", seed=1),
    "4:4:4": lambda: make_image(40, 72, "JPEG", seed=1, subsampling=0),
    "grey": lambda: _save(_pattern("L")),
    "cmyk": lambda: _save(_pattern("CMYK")),
    "progressive": lambda: _save(_pattern(), progressive=True),
    "icc profile": lambda: _save(_pattern(), icc_profile=ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))
                                 .tobytes()),
    "comment and dpi": lambda: _save(_pattern(), comment=b"made here", dpi=(300, 300)),
    "restart intervals": lambda: _save(_pattern(), restart_marker_blocks=1),
    "large": lambda: _save(Image.new("RGB", (8000, 6000))),
    **{f"exif orientation {o}": (lambda o=o: exif_jpeg(40, 72, o, seed=o)) for o in range(1, 9)},
}


def _pillows(data: bytes):
    return _pillow_header(Source("image[0]", "encoded", data=data))


def _jpeg_header(data: bytes) -> ImageInfo | None:
    """The reader's answer as the probe's ImageInfo (what it is compared with)."""
    h = read_jpeg_header(data)
    return None if h is None else ImageInfo(h.width, h.height, "JPEG", h.mode, h.orientation)


@pytest.mark.parametrize("name", COMMON)
def test_common_encodings_are_read_without_pillow_as_pillow_reads_them(name):
    data = COMMON[name]()
    assert _jpeg_header(data) is not None  # the fast reader answers: no Pillow in planning
    assert _jpeg_header(data) == _pillows(data)
    assert probe_image(Source("image[0]", "encoded", data=data)) == _pillows(data)


def test_xmp_and_multi_picture_files_are_left_to_pillow():
    """An XMP packet may carry the orientation (Pillow reads it when EXIF has none), and a multi-picture index makes
    Pillow open an MPO file: both go to Pillow, so the probe says what Pillow says."""
    xmp = (b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
           b'<rdf:Description xmlns:tiff="http://ns.adobe.com/tiff/1.0/" tiff:Orientation="6"/></rdf:RDF></x:xmpmeta>')
    with_xmp = _save(_pattern(), xmp=xmp)
    frames = [_pattern(), _pattern().rotate(90)]
    buf = io.BytesIO()
    frames[0].save(buf, "MPO", save_all=True, append_images=frames[1:])
    for data, fmt, orientation in ((with_xmp, "JPEG", 6), (buf.getvalue(), "MPO", 1)):
        assert _jpeg_header(data) is None
        info = probe_image(Source("image[0]", "encoded", data=data))
        assert info == _pillows(data) and (info.format, info.orientation) == (fmt, orientation)


_BASES = [COMMON[name]() for name in ("4:2:0", "grey", "icc profile", "comment and dpi", "restart intervals",
                                      "exif orientation 6", "exif orientation 3")]


def _segments(data: bytes) -> list[tuple[int, int]]:
    """(where its marker is, its length field) of each segment up to and including the start of scan."""
    out, pos = [], 2
    while True:
        length = int.from_bytes(data[pos + 2:pos + 4], "big")
        out.append((pos, length))
        if data[pos + 1] == 0xDA:
            return out
        pos += 2 + length


_LAYOUTS = [_segments(b) for b in _BASES]
# Edits of a header: a byte set, dropped or inserted anywhere in the first 1500 bytes or near a segment's start (its
# marker and length), a segment's payload shortened or lengthened with its length field kept true (a table or a
# frame header cut short inside well-formed segments), or the bytes cut off there.
_EDITS = st.lists(st.one_of(
    st.tuples(st.sampled_from(["set", "delete", "insert"]), st.integers(2, 1500), st.integers(0, 255)),
    st.tuples(st.sampled_from(["set", "delete", "insert", "cut"]), st.tuples(st.integers(0, 40), st.integers(-2, 5)),
              st.integers(0, 255)),
    st.tuples(st.sampled_from(["shorten", "lengthen"]), st.integers(0, 40), st.integers(1, 140))), min_size=1,
    max_size=3)


def _edited(base: int, edits: list) -> bytes:
    data = bytearray(_BASES[base])
    layout = _LAYOUTS[base]
    for op, at, value in edits:
        if op in ("shorten", "lengthen"):
            pos, length = layout[at % len(layout)]
            value = min(value, length - 2) if op == "shorten" else value
            end = pos + 2 + length
            if op == "shorten":
                del data[end - value:end]
            else:
                data[end:end] = bytes(value)
            data[pos + 2:pos + 4] = (length - value if op == "shorten" else length + value).to_bytes(2, "big")
            return bytes(data)  # the layout moved: one such edit per header
        if isinstance(at, tuple):  # near a segment's start
            at = layout[at[0] % len(layout)][0] + at[1]
        at = max(2, min(at, len(data) - 1))
        if op == "cut":
            return bytes(data[:at])
        if op == "set":
            data[at] = value
        elif op == "delete":
            del data[at]
        else:
            data.insert(at, value)
    return bytes(data)


@settings(max_examples=2000, deadline=None)
@given(base=st.sampled_from(range(len(_BASES))), edits=_EDITS)
def test_a_damaged_header_is_read_as_pillow_reads_it_or_left_to_pillow(base, edits):
    """Whenever the fast reader answers for a damaged header, Pillow reads it to the same answer: it neither
    refuses the header nor reads something else from it."""
    raw = _edited(base, edits)
    fast = _jpeg_header(raw)
    if fast is None:
        return
    try:
        assert fast == _pillows(raw)
    except GpuMMError as exc:
        raise AssertionError(f"the fast reader read {fast}; Pillow refused the header: {exc}") from None
