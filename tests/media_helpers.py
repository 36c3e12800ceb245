"""Reference decoding for tests: every frame of a clip through PyAV, sequentially (no seeking)."""

from __future__ import annotations

import functools
import io

import av
import numpy as np

from gpu_mm.media.synth import make_image, make_video  # noqa: F401 - re-exported for tests


def all_frames(data: bytes) -> np.ndarray:
    """Decode every frame of ``data`` in presentation order as uint8 [T, H, W, 3]."""
    with av.open(io.BytesIO(data)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])


def exif_jpeg(h: int, w: int, orientation: int, seed: int = 0, **save: object) -> bytes:
    """A JPEG of the test pattern (``h`` x ``w`` as stored) whose EXIF says ``orientation`` (1-8); ``save``: more
    of Pillow's JPEG options (``quality=95``)."""
    from PIL import Image

    img = Image.open(io.BytesIO(make_image(h, w, "PNG", seed=seed))).convert("RGB")
    exif = img.getexif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    img.save(buf, "JPEG", exif=exif.tobytes(), **save)
    return buf.getvalue()


@functools.lru_cache(maxsize=None)
def clip(codec: str = "h264", frames: int = 48, h: int = 96, w: int = 128, gop: int = 12, bframes: int = 0,
         fps: int = 24) -> bytes:
    """A cached small test clip."""
    return make_video(frames, h, w, codec=codec, gop=gop, bframes=bframes, fps=fps)
