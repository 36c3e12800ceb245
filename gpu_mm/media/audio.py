"""Audio decode: any container and codec FFmpeg reads (wav, flac, mp3, m4a/aac, ogg/opus, a video's audio track)
to 16 kHz mono float32 samples, the input of the Whisper front end (:mod:`gpu_mm.audio`).

The resampler is FFmpeg's ``swresample`` with its defaults (PyAV's ``AudioResampler``, a windowed-sinc filter; a
1 kHz tone comes out within 4e-5 of the analytic one from 8 to 96 kHz), each channel on its own; channels are then
averaged to mono, as ``librosa.load(..., mono=True)`` does (what transformers' examples and the engines' audio
loaders use; FFmpeg's own downmix would weight them by -3 dB instead). vLLM's and SGLang's loaders resample with
other libraries, so a clip at another rate gives features differing by what the resamplers differ; a 16 kHz mono
clip passes through untouched (its samples are the PCM values / 32768 exactly). Limits are checked from the
container before decoding (:attr:`MediaLimits.max_audio_s`, bytes) and again while decoding, so that a container
understating its length cannot make an item hold more than the limit's samples.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from ..audio import SAMPLE_RATE
from ..errors import DecodeError, LimitExceeded, UnsupportedMedia
from .sources import MediaLimits, Source
from .video.probe import read_av

__all__ = ["AudioClip", "AudioInfo", "MAX_SOURCE_RATE", "SAMPLE_RATE", "decode_audio", "probe_audio"]

MAX_SOURCE_RATE = 768_000
"""The highest source sample rate accepted (FFmpeg's own limit for most codecs); anything above is refused."""


@dataclasses.dataclass(frozen=True)
class AudioClip:
    """A decoded clip: ``samples`` (1-D float32 at 16 kHz, mono) and what the source was."""

    samples: np.ndarray
    source_rate: int
    channels: int
    codec: str

    @property
    def seconds(self) -> float:
        return len(self.samples) / SAMPLE_RATE


@dataclasses.dataclass(frozen=True)
class AudioInfo:
    """An audio stream's header, read before decoding."""

    source_rate: int
    channels: int
    codec: str
    seconds: float | None
    """The stream's (else the container's) declared duration; None when neither says."""

    def working_bytes(self, limits: MediaLimits) -> int:
        """The most memory decoding it may hold: its 16 kHz float32 samples twice (the decoded pieces, then
        joined), from the declared duration plus a second, or ``limits.max_audio_s`` (what decoding enforces)."""
        seconds = limits.max_audio_s if self.seconds is None else min(self.seconds + 1.0, limits.max_audio_s)
        return 2 * 4 * int(seconds * SAMPLE_RATE) + (1 << 20)


def probe_audio(src: Source, limits: MediaLimits = MediaLimits(), *, required: bool = True) -> AudioInfo | None:
    """The first audio stream's header (nothing decoded), its rate and declared length checked against
    ``limits``. Without ``required``, a container with no audio stream gives None (a silent video's track).

    Raises:
        UnsupportedMedia, LimitExceeded, DecodeError: as :func:`decode_audio` raises them for the header.
    """
    if src.kind != "encoded":
        raise UnsupportedMedia(src.item, "audio must be encoded bytes (a file, bytes, a data URI, base64)")
    def read(container: Any) -> AudioInfo | None:
        return None if not container.streams.audio and not required else _header(container, src, limits)

    info: AudioInfo | None = read_av(src, read, what="audio or video", failure="cannot read the audio header")
    return info


def decode_audio(src: Source, limits: MediaLimits = MediaLimits()) -> AudioClip:
    """The first audio stream of an encoded item, as 16 kHz mono float32.

    Raises:
        UnsupportedMedia: not a container FFmpeg reads, no audio stream, no decoder, or a sample rate out of range.
        LimitExceeded: longer than ``limits.max_audio_s`` (from the container, or counted while decoding).
        DecodeError: the stream is corrupt or holds no samples.
    """
    if src.kind != "encoded":
        raise UnsupportedMedia(src.item, "audio must be encoded bytes (a file, bytes, a data URI, base64)")
    clip: AudioClip = read_av(src, lambda container: _decode(container, src, limits), what="audio or video",
                              failure="cannot decode audio")
    return clip


def _header(container: Any, src: Source, limits: MediaLimits) -> AudioInfo:
    if not container.streams.audio:
        raise UnsupportedMedia(src.item, "the container has no audio stream")
    stream = container.streams.audio[0]
    ctx = stream.codec_context
    if ctx is None:
        raise UnsupportedMedia(src.item, "no decoder for the audio stream's codec")
    rate, channels = int(ctx.sample_rate or 0), int(ctx.channels or 0)
    if not 0 < rate <= MAX_SOURCE_RATE:
        raise UnsupportedMedia(src.item, f"sample rate {rate} Hz is outside 1..{MAX_SOURCE_RATE}")
    declared = _declared_seconds(container, stream)
    if declared is not None and declared > limits.max_audio_s:
        raise LimitExceeded(src.item, f"{declared:.1f} s of audio is over max_audio_s={limits.max_audio_s:g}")
    return AudioInfo(rate, channels, str(ctx.name), declared)


def _decode(container: Any, src: Source, limits: MediaLimits) -> AudioClip:
    import av

    info = _header(container, src, limits)
    stream = container.streams.audio[0]
    budget = int(limits.max_audio_s * SAMPLE_RATE)
    resampler = av.AudioResampler(format="fltp", rate=SAMPLE_RATE)  # planar, the source's channels
    chunks: list[np.ndarray] = []
    total = 0

    def take(frames: list[Any]) -> None:
        nonlocal total
        for f in frames:
            planes = f.to_ndarray()  # (channels, samples) float32
            arr = planes[0] if planes.shape[0] == 1 else planes.mean(axis=0, dtype=np.float32)
            total += arr.size
            if total > budget:
                raise LimitExceeded(src.item, f"more than max_audio_s={limits.max_audio_s:g} s of audio "
                                              "(counted while decoding)")
            chunks.append(arr)

    for frame in container.decode(stream):
        take(resampler.resample(frame))
    take(resampler.resample(None))  # the resampler's delayed tail
    if total == 0:
        raise DecodeError(src.item, "the audio stream holds no samples")
    samples = np.concatenate(chunks).astype(np.float32, copy=False)
    return AudioClip(samples, info.source_rate, info.channels, info.codec)


def _declared_seconds(container: Any, stream: Any) -> float | None:
    """The stream's (else the container's) declared duration, None when neither says."""
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return float(container.duration) / 1_000_000
    return None
