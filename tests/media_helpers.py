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


@functools.lru_cache(maxsize=None)
def clip(codec: str = "h264", frames: int = 48, h: int = 96, w: int = 128, gop: int = 12, bframes: int = 0,
         fps: int = 24) -> bytes:
    """A cached small test clip."""
    return make_video(frames, h, w, codec=codec, gop=gop, bframes=bframes, fps=fps)
