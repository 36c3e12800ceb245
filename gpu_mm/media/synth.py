"""Synthetic test media made in-process (no downloads): images with Pillow, videos with PyAV."""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Iterator
from fractions import Fraction
from typing import Any

import numpy as np

__all__ = ["make_image", "make_video", "pattern"]


def pattern(height: int, width: int, seed: int = 0, t: int = 0) -> np.ndarray:
    """A deterministic RGB uint8 picture with gradients, edges and texture (moves with ``t``)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    phase = rng.uniform(0, 2 * np.pi, size=3)
    r = 127.5 + 127.5 * np.sin(xx / (7.0 + seed % 5) + phase[0] + t * 0.3)
    g = 127.5 + 127.5 * np.cos(yy / (11.0 + seed % 3) + phase[1] - t * 0.2)
    b = ((xx + yy + 4 * t) % 64) * 4.0
    img = np.stack([r, g, b], axis=-1)
    # A moving square with hard edges.
    s = max(2, min(height, width) // 5)
    y0 = (t * 3 + seed * 7) % max(1, height - s)
    x0 = (t * 5 + seed * 11) % max(1, width - s)
    img[y0 : y0 + s, x0 : x0 + s] = (255.0, 32.0, 200.0)
    noise = rng.normal(0, 6, size=img.shape)
    return np.clip(img + noise, 0, 255).astype(np.uint8)


def make_image(
    height: int, width: int, fmt: str = "JPEG", mode: str = "RGB", seed: int = 0, quality: int = 90, **save_kw
) -> bytes:
    """Encode a :func:`pattern` as ``fmt`` (JPEG, PNG, WEBP, ...) in Pillow ``mode``."""
    from PIL import Image

    img = Image.fromarray(pattern(height, width, seed))
    if mode == "RGBA":
        alpha = Image.fromarray(np.tile(np.linspace(0, 255, width, dtype=np.uint8), (height, 1)))
        img = img.convert("RGBA")
        img.putalpha(alpha)
    elif mode == "I;16":
        arr = np.asarray(img.convert("L")).astype(np.uint16) * 257
        img = Image.fromarray(arr)  # uint16 -> mode I;16
    elif mode != "RGB":
        img = img.convert(mode)
    buf = io.BytesIO()
    if fmt.upper() == "JPEG":
        save_kw.setdefault("quality", quality)
    img.save(buf, format=fmt, **save_kw)
    return buf.getvalue()


def make_video(
    num_frames: int,
    height: int,
    width: int,
    *,
    codec: str = "h264",
    fps: int = 30,
    gop: int = 30,
    bframes: int = 0,
    container: str | None = None,
    bit_rate: int | None = None,
    seed: int = 0,
    pix_fmt: str | None = None,
    rotation: int = 0,
    audio_rate: int | None = None,
    single_slice: bool = False,
    open_gop: bool = False,
) -> bytes:
    """Encode ``num_frames`` moving :func:`pattern` frames with PyAV and return the container bytes.

    ``codec``: h264 (libx264), hevc (libx265), vp9 (libvpx-vp9), av1 (libsvtav1), mjpeg, mpeg4.
    ``rotation``: a display-matrix rotation in degrees, counter-clockwise (as phones tag portrait clips).
    ``audio_rate``: add an AAC track as long as the video at this rate (:func:`make_audio`'s signal, stereo).
    ``single_slice``: H.264 with one slice per frame, as phones, cameras and ``ffmpeg``'s x264 write it (x264's
    frame threads). By default PyAV runs x264 with slice threads, one slice per thread of the encoding machine,
    and FFmpeg's slice threads then decode such a clip on several cores.
    ``open_gop``: H.264 with open GOPs (B-frames shown before a keyframe refer to the GOP before it, as broadcast
    encoders write them); x265 writes HEVC with open GOPs already.
    """
    encoder = {"h264": "libx264", "hevc": "libx265", "vp9": "libvpx-vp9", "av1": "libsvtav1"}.get(codec, codec)
    if container is None:
        container = {"vp9": "webm", "mjpeg": "avi"}.get(codec, "mp4")
    with _keeps_scheduling():
        return _encode(num_frames, height, width, encoder, codec, fps, gop, bframes, container, bit_rate, seed,
                       pix_fmt, rotation, audio_rate, single_slice, open_gop)


@contextlib.contextmanager
def _keeps_scheduling() -> Iterator[None]:
    """SVT-AV1 (libsvtav1) switches the thread that opens it to real-time ``SCHED_FIFO`` priority 99 where it is
    allowed to (as root): a test or benchmark thread that encoded an AV1 clip would then run ahead of everything
    else on the machine, the event loop and the kernel's own threads included. Put the thread's policy back."""
    try:
        policy, param = os.sched_getscheduler(0), os.sched_getparam(0)
    except (AttributeError, OSError):  # not Linux
        yield
        return
    try:
        yield
    finally:
        if os.sched_getscheduler(0) != policy or os.sched_getparam(0) != param:
            os.sched_setscheduler(0, policy, param)


def _encode(num_frames: int, height: int, width: int, encoder: str, codec: str, fps: int, gop: int, bframes: int,
            container: str, bit_rate: int | None, seed: int, pix_fmt: str | None, rotation: int,
            audio_rate: int | None = None, single_slice: bool = False, open_gop: bool = False) -> bytes:
    import av

    buf = io.BytesIO()
    with av.open(buf, mode="w", format=container) as out:
        stream: Any = out.add_stream(encoder, rate=Fraction(fps))  # a VideoStream (typed as any stream)
        stream.width, stream.height = width, height
        stream.pix_fmt = pix_fmt or ("yuvj420p" if codec == "mjpeg" else "yuv420p")
        if rotation:
            stream.set_display_rotation(rotation)
        if codec not in ("mjpeg",):
            stream.codec_context.gop_size = gop
        if bit_rate:
            stream.bit_rate = bit_rate
        if single_slice:
            stream.codec_context.thread_type = "FRAME"
        opts: dict[str, Any] = {}
        if encoder == "libx264":
            opts = {"preset": "ultrafast" if not bframes else "veryfast", "bf": str(bframes)}
            if not bframes:
                opts["tune"] = "zerolatency"
            if open_gop:
                opts["x264-params"] = "open-gop=1"
        elif encoder == "libx265":
            opts = {"preset": "ultrafast", "x265-params": f"log-level=error:keyint={gop}:bframes={bframes}"}
        elif encoder == "libvpx-vp9":
            opts = {"deadline": "realtime", "cpu-used": "8", "lag-in-frames": "0"}
        elif encoder == "libsvtav1":
            opts = {"preset": "12"}
        stream.options = opts
        sound = _audio_stream(out, "aac", audio_rate, 2) if audio_rate else None  # streams go in before muxing
        base = pattern(height, width, seed)
        for t in range(num_frames):
            img = np.roll(base, shift=(t * 3, t * 5), axis=(0, 1))
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
        if sound is not None and audio_rate:
            _encode_audio(out, sound, _tone(num_frames / fps, audio_rate, 2, 440.0, 0.01, seed), audio_rate)
    return buf.getvalue()


def _tone(seconds: float, rate: int, channels: int, freq: float, noise: float, seed: int) -> np.ndarray:
    """``(channels, samples)`` float in [-1, 1]: a ``freq`` Hz tone of amplitude 0.3 plus white noise, the second
    channel at 0.8 of the first."""
    n = int(round(seconds * rate))
    t = np.arange(n) / rate
    rng = np.random.default_rng(seed)
    tone = 0.3 * np.sin(2 * np.pi * freq * t) + noise * rng.standard_normal(n)
    return np.clip(np.stack([tone * (1 - 0.2 * c) for c in range(channels)]), -1, 1)


def _audio_stream(out: Any, codec: str, rate: int, channels: int) -> Any:
    return out.add_stream(codec, rate=rate, layout="mono" if channels == 1 else "stereo")


def _encode_audio(out: Any, stream: Any, pcm: np.ndarray, rate: int) -> None:
    """``pcm`` (channels, samples) encoded into ``stream`` of the open container ``out``."""
    import av

    fmt_in = "s16p" if stream.codec_context.name == "pcm_s16le" else "fltp"
    data: Any = (pcm * 32767).astype(np.int16) if fmt_in == "s16p" else pcm.astype(np.float32)
    frame_size = stream.codec_context.frame_size or 1024
    for start in range(0, pcm.shape[1], frame_size):
        chunk = np.ascontiguousarray(data[:, start : start + frame_size])
        frame = av.AudioFrame.from_ndarray(chunk, format=fmt_in, layout=stream.layout.name)
        frame.sample_rate = rate
        frame.pts = start
        for packet in stream.encode(frame):
            out.mux(packet)
    for packet in stream.encode(None):
        out.mux(packet)


def make_audio(seconds: float, rate: int = 16000, *, codec: str = "pcm_s16le", fmt: str = "wav", channels: int = 1,
               freq: float = 440.0, noise: float = 0.01, seed: int = 0) -> bytes:
    """An encoded clip: a ``freq`` Hz tone of amplitude 0.3 plus white noise of std ``noise`` (``seed``),
    ``channels`` channels at ``rate`` (the second at 0.8 of the first), in ``fmt`` (wav, flac, mp3, adts, ogg, mp4,
    ...) with ``codec``."""
    import av

    buf = io.BytesIO()
    with av.open(buf, mode="w", format=fmt) as out:
        _encode_audio(out, _audio_stream(out, codec, rate, channels), _tone(seconds, rate, channels, freq, noise, seed),
                      rate)
    return buf.getvalue()
