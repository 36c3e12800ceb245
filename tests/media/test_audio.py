"""Audio decode (gpu_mm.media.audio) against independent references: a 16 kHz mono WAV's samples are its PCM values /
32768 exactly (PyAV's own decode of the same bytes); any other rate and channel count comes out as the analytic tone
that was encoded, within the resampler's error (measured 2e-5 to 4e-5 for a 1 kHz tone from 8 to 96 kHz; 1e-4 allowed,
int16 quantization being 1.5e-5); lossy codecs keep the tone (correlation) and the length. Hostile audio gets typed
errors naming the item, and no item holds more than max_audio_s of samples."""

from __future__ import annotations

import io

import av
import numpy as np
import pytest

from gpu_mm import DecodeError, LimitExceeded, SourceError, UnsupportedMedia
from gpu_mm.media.audio import SAMPLE_RATE, decode_audio
from gpu_mm.media.sources import MediaLimits, load_source
from gpu_mm.media.synth import make_audio

from media_helpers import make_image


def _decode(data: bytes, limits: MediaLimits = MediaLimits()):
    return decode_audio(load_source(data, "audio[0]", limits), limits)


def test_a_16khz_mono_wav_passes_through_exactly():
    data = make_audio(1.3)
    pcm = np.concatenate([f.to_ndarray().reshape(-1) for f in av.open(io.BytesIO(data)).decode(audio=0)])
    clip = _decode(data)
    assert clip.samples.dtype == np.float32 and np.array_equal(clip.samples, pcm.astype(np.float32) / 32768)
    assert (clip.source_rate, clip.channels, clip.codec) == (16000, 1, "pcm_s16le")


@pytest.mark.parametrize("rate", [8000, 22050, 44100, 48000, 96000])
@pytest.mark.parametrize("channels", [1, 2])
def test_other_rates_and_channels_give_the_encoded_tone_at_16khz(rate, channels):
    """Resampled per channel, then the channels averaged (librosa's mono): the second channel is 0.8 of the first,
    so the mono tone's amplitude is 0.3 * 0.9. The first and last 20 ms (the filter's edges) are left out."""
    clip = _decode(make_audio(1.0, rate=rate, channels=channels, freq=1000.0, noise=0.0))
    assert len(clip.samples) == SAMPLE_RATE
    t = np.arange(SAMPLE_RATE) / SAMPLE_RATE
    amplitude = 0.3 if channels == 1 else 0.3 * 0.9
    error = clip.samples[320:-320] - amplitude * np.sin(2 * np.pi * 1000.0 * t[320:-320])
    assert np.abs(error).max() < 1e-4


@pytest.mark.parametrize(("codec", "fmt", "rate"), [("flac", "flac", 44100), ("libmp3lame", "mp3", 44100),
                                                    ("aac", "adts", 48000), ("aac", "mp4", 48000),
                                                    ("libopus", "ogg", 48000)])
def test_compressed_formats_keep_the_tone_and_the_length(codec, fmt, rate):
    """Lossless FLAC is the tone as WAV is; lossy codecs keep it (correlation > 0.99 after the codec's delay, found
    by cross-correlation) and the length to within the codec's priming (AAC: 1024 samples at the source rate)."""
    clip = _decode(make_audio(2.0, rate=rate, codec=codec, fmt=fmt, freq=1000.0, noise=0.0))
    assert abs(len(clip.samples) - 2 * SAMPLE_RATE) <= 2048 * SAMPLE_RATE // rate + 1
    t = np.arange(4000) / SAMPLE_RATE
    ref = 0.3 * np.sin(2 * np.pi * 1000.0 * t)
    middle = clip.samples[8000:12000]
    best = max(float(np.corrcoef(middle, np.roll(ref, k))[0, 1]) for k in range(16))
    assert best > 0.99


def test_hostile_audio_gets_typed_errors_naming_the_item():
    wav = make_audio(2.0)
    with pytest.raises(UnsupportedMedia) as err:  # an image: no audio stream (or not a container FFmpeg reads)
        _decode(make_image(32, 32, "PNG"))
    assert err.value.item.startswith("audio[0]")
    with pytest.raises(SourceError, match="empty"):  # zero-length bytes: refused when read, before FFmpeg
        _decode(b"")
    with pytest.raises((UnsupportedMedia, DecodeError)):  # garbage
        _decode(b"RIFF" + bytes(range(256)) * 8)
    huge = bytearray(wav)  # a WAV header claiming 10 MHz
    huge[24:28] = (10_000_000).to_bytes(4, "little")
    huge[28:32] = (20_000_000).to_bytes(4, "little")
    with pytest.raises(UnsupportedMedia, match="sample rate"):
        _decode(bytes(huge))


def test_truncated_audio_decodes_what_is_there_or_is_a_typed_error():
    for data in (make_audio(2.0, rate=44100, codec="flac", fmt="flac"), make_audio(2.0, codec="libmp3lame", fmt="mp3"),
                 make_audio(2.0)):
        try:
            clip = _decode(data[: len(data) // 2])
        except (DecodeError, UnsupportedMedia) as exc:
            assert exc.item.startswith("audio[0]")
        else:
            assert 0 < len(clip.samples) < 2 * SAMPLE_RATE + 2048


def test_no_item_holds_more_than_max_audio_s():
    """From the container's declared length before decoding (WAV), and counted while decoding where the container
    declares none (raw ADTS AAC)."""
    limits = MediaLimits(max_audio_s=1.0)
    with pytest.raises(LimitExceeded, match="max_audio_s"):
        _decode(make_audio(2.0), limits)
    with pytest.raises(LimitExceeded, match="max_audio_s"):
        _decode(make_audio(2.0, rate=48000, codec="aac", fmt="adts"), limits)
    assert len(_decode(make_audio(0.9), limits).samples) == int(0.9 * SAMPLE_RATE)
