"""Video probing (from the container's packets, before any decoding), the decoder protocol every backend
meets, and decoded-frame helpers. Backends live one per module beside this one."""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Sequence
from fractions import Fraction
from typing import Any, Protocol

import numpy as np
import torch

from ...errors import DecodeError, GpuMMError, LimitExceeded, UnsupportedMedia
from ...errors import describe as _describe
from ..sources import MediaLimits, Source

__all__ = ["VideoDecoder", "VideoInfo", "check_planned_indices", "frames_from_array", "in_planned_order",
           "probe_video", "rotate_frames"]


@dataclasses.dataclass(frozen=True)
class VideoInfo:
    """What a video is, from its container: header values kept apart from counted ones."""

    width: int
    height: int
    """Coded frame size, as decoders return frames (before :attr:`rotation`)."""
    codec: str
    container: str
    fps: float
    """Average frame rate (header), or measured from packet timestamps when the header has none."""
    num_frames: int
    """Frames counted from the container's packets (exact; never the header's claim)."""
    header_num_frames: int | None
    """What the header claims (0/None for WebM and others that do not say); may be wrong."""
    duration_s: float
    frame_pts: tuple[int, ...] = dataclasses.field(repr=False, default=())
    """Presentation timestamps of every frame, in presentation order (index i -> frame_pts[i]); empty when
    the stream's timestamps are missing or not distinct (then frames are counted in decode order)."""
    keyframe_pts: tuple[int, ...] = dataclasses.field(repr=False, default=())
    time_base: Fraction = Fraction(1, 1)
    rotation: int = 0
    """Display rotation in degrees counter-clockwise (0, 90, 180, 270), from the container's display
    matrix (phones tag portrait clips so). gpu-mm shows frames as a player does: rotated."""

    @property
    def display_size(self) -> tuple[int, int]:
        """(height, width) of a frame as displayed, after :attr:`rotation`."""
        return (self.width, self.height) if self.rotation in (90, 270) else (self.height, self.width)

    def timestamps_s(self, indices: Sequence[int]) -> list[float]:
        """Seconds at which the given frame indices are shown."""
        start = self.frame_pts[0] if self.frame_pts else 0
        if self.frame_pts:
            return [float((self.frame_pts[i] - start) * self.time_base) for i in indices]
        return [i / self.fps for i in indices]


def open_av(src: Source, what: str = "video") -> Any:
    """``src``'s bytes opened by PyAV; a header FFmpeg does not read is a typed error naming the item and ``what``
    it was read as."""
    import av

    try:
        return av.open(io.BytesIO(src.data or b""), mode="r")
    except av.error.InvalidDataError:
        raise UnsupportedMedia(src.item, f"not a recognised {what} container (or corrupt header)") from None
    except MemoryError:
        raise
    except Exception as exc:  # noqa: BLE001 - FFmpeg errors, and e.g. a track title that is not UTF-8
        raise DecodeError(src.item, f"cannot open {what}: {_describe(exc)}") from None


def read_av(src: Source, read: Any, *, what: str = "video", failure: str = "cannot read video") -> Any:
    """``read(container)`` on ``src``'s bytes opened by PyAV (:func:`open_av`, closed after): gpu-mm's typed errors
    pass, anything else FFmpeg or PyAV raise on a hostile or corrupt stream is a :class:`DecodeError` naming the
    item (``failure``: what could not be done)."""
    try:
        with open_av(src, what) as container:
            return read(container)
    except (GpuMMError, MemoryError):
        raise
    except Exception as exc:  # noqa: BLE001 - whatever FFmpeg or PyAV raise on a hostile container
        raise DecodeError(src.item, f"{failure}: {_describe(exc)}") from None


_ROTATION_TO_ORIENTATION = {90: 8, 180: 3, 270: 6}
"""A counter-clockwise display rotation as the EXIF orientation that shows a frame the same way."""


def rotate_frames(frames: torch.Tensor, rotation: int) -> torch.Tensor:
    """Show ``[..., H, W]`` frames as displayed for a counter-clockwise ``rotation`` (any device)."""
    from ..image import apply_exif_orientation

    orientation = _ROTATION_TO_ORIENTATION.get(rotation % 360)
    return frames if orientation is None else apply_exif_orientation(frames, orientation)


def _first_frame_rotation(packet: Any) -> int | None:
    """The display rotation of the first frame ``packet`` decodes to (None: it decoded no frame yet)."""
    for frame in packet.decode():
        angle = int(round(float(frame.rotation or 0))) % 360
        return angle if angle in (0, 90, 180, 270) else 0  # oblique matrices are shown unrotated
    return None


def probe_video(src: Source, limits: MediaLimits = MediaLimits()) -> VideoInfo:
    """Probe an encoded video: size, codec, fps, rotation, and the exact frame index from its packets.

    Raises:
        UnsupportedMedia: not a container, no video stream, or no decoder for its codec.
        LimitExceeded: too long, too many frames or too many pixels per frame (checked before decoding).
        DecodeError: the container is corrupt or holds no frames.
    """
    if src.kind != "encoded":
        raise UnsupportedMedia(src.item, "probe_video needs encoded bytes")
    info: VideoInfo = read_av(src, lambda container: _probe(container, src, limits))
    return info


def _probe(container: Any, src: Source, limits: MediaLimits) -> VideoInfo:
    import av

    if not container.streams.video:
        raise UnsupportedMedia(src.item, "container has no video stream")
    stream = container.streams.video[0]
    ctx = stream.codec_context
    if ctx is None:
        raise UnsupportedMedia(src.item, "no decoder for the video stream's codec")
    width, height = int(ctx.width or 0), int(ctx.height or 0)
    if width * height > limits.max_video_pixels:
        raise LimitExceeded(
            src.item, f"{width}x{height} frames are over max_video_pixels={limits.max_video_pixels}"
        )
    duration_hdr = None
    if stream.duration is not None and stream.time_base is not None:
        duration_hdr = float(stream.duration * stream.time_base)
    elif container.duration is not None:
        duration_hdr = container.duration / 1e6
    if duration_hdr is not None and duration_hdr > limits.max_duration_s:
        raise LimitExceeded(
            src.item, f"header duration {duration_hdr:.0f} s is over max_duration_s={limits.max_duration_s:.0f}"
        )
    header_frames = int(stream.frames or 0) or None
    if header_frames is not None and header_frames > limits.max_frames * 4:
        raise LimitExceeded(src.item, f"header claims {header_frames} frames; max_frames={limits.max_frames}")
    pts: list[int] = []
    keys: list[int] = []
    missing_pts = False
    rotation: int | None = None
    try:
        for packet in container.demux(stream):
            if packet.size == 0:
                continue  # flush packet
            if packet.pts is None:
                missing_pts = True
                pts.append(len(pts))
            else:
                pts.append(int(packet.pts))
            if packet.is_keyframe:
                keys.append(pts[-1])
            if len(pts) > limits.max_frames:
                raise LimitExceeded(src.item, f"more than max_frames={limits.max_frames} frames")
            if rotation is None and len(pts) <= 32:
                # The display matrix reaches frames, not PyAV's stream object: decode until the first frame.
                try:
                    rotation = _first_frame_rotation(packet)
                except av.error.FFmpegError:
                    rotation = 0
    except av.error.FFmpegError as exc:
        if not pts:
            raise DecodeError(src.item, f"corrupt video stream: {exc}") from None
        # A damaged tail: keep the frames before it (decoding will confirm them).
    if not pts:
        raise DecodeError(src.item, "video stream holds no frames")
    if width < 1 or height < 1:
        raise DecodeError(src.item, "video stream has no frame size")
    tb = Fraction(stream.time_base) if stream.time_base is not None else Fraction(1, 1)
    span = (max(pts) - min(pts)) if not missing_pts else 0
    if len(set(pts)) != len(pts):
        # Frames that share a timestamp (a rate finer than the container's clock, a zero stts delta): the
        # timestamps cannot say which frame is which, so frames are counted in decode order instead.
        missing_pts = True
    if missing_pts:
        keys = []  # cannot seek by timestamp: decode sequentially
    pts.sort()
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    if rate and 0 < float(rate) < float("inf"):
        fps = float(rate)
    elif len(pts) > 1 and span > 0:
        fps = (len(pts) - 1) / float(span * tb)
    elif len(pts) == 1:
        fps = 1.0  # one frame: any rate gives the same plan
    else:
        raise DecodeError(src.item, "cannot determine the frame rate (no header rate, no distinct timestamps)")
    duration = len(pts) / fps
    if duration > limits.max_duration_s:
        raise LimitExceeded(src.item, f"{duration:.0f} s is over max_duration_s={limits.max_duration_s:.0f}")
    return VideoInfo(
        width=width,
        height=height,
        codec=ctx.name,
        container=container.format.name,
        fps=fps,
        num_frames=len(pts),
        header_num_frames=header_frames,
        duration_s=duration,
        frame_pts=tuple(pts) if not missing_pts else (),
        keyframe_pts=tuple(sorted(set(keys))),
        time_base=tb,
        rotation=rotation or 0,
    )


def check_planned_indices(indices: Sequence[int], info: VideoInfo) -> None:
    """Reject an empty plan or indices outside the probed video (a caller's bug, not bad media).

    Raises:
        ValueError: no indices, or an index outside ``[0, info.num_frames)``.
    """
    if not indices:
        raise ValueError("no frame indices given")
    bad = [i for i in indices if not 0 <= i < info.num_frames]
    if bad:
        raise ValueError(f"frame indices {bad[:5]} out of range [0, {info.num_frames})")


def in_planned_order(frames: torch.Tensor, wanted: list[int], indices: Sequence[int]) -> torch.Tensor:
    """``frames`` decoded at ``wanted`` (the planned indices sorted, each once: what a decoder that fetches by index
    is asked for) as the plan orders them, repeats included."""
    if wanted == list(indices):
        return frames
    pos = {f: k for k, f in enumerate(wanted)}
    # Views stacked on the device: an index tensor built here would be a pageable host-to-device copy that
    # synchronizes the slot's stream.
    return torch.stack([frames[pos[int(i)]] for i in indices])


class VideoDecoder(Protocol):
    """A backend that returns the frames at given indices as uint8 ``[N, H, W, 3]``.

    ``get_frames_at`` raises :class:`UnsupportedMedia` for a codec it does not decode, so that the
    caller can fall back to another backend for that item.
    """

    name: str

    def get_frames_at(self, src: Source, info: VideoInfo, indices: Sequence[int]) -> torch.Tensor: ...


def frames_from_array(src: Source) -> torch.Tensor:
    """Already decoded frames (``T x H x W x C`` or ``T x C x H x W`` uint8) as ``[T, H, W, 3]``.

    Raises:
        UnsupportedMedia: wrong dtype, rank or channel count.
    """
    arr = src.pixels
    if isinstance(arr, torch.Tensor):
        t = arr
    else:
        a = np.asarray(arr)
        t = torch.from_numpy(a if a.flags.writeable else a.copy())
    if t.dtype != torch.uint8:
        raise UnsupportedMedia(src.item, f"video arrays must be uint8, got {t.dtype}")
    if t.ndim != 4:
        raise UnsupportedMedia(src.item, f"video arrays must be T x H x W x C, got shape {tuple(t.shape)}")
    if t.shape[-1] not in (1, 3) and t.shape[1] in (1, 3):
        t = t.permute(0, 2, 3, 1)
    if t.shape[-1] == 1:
        t = t.expand(-1, -1, -1, 3).contiguous()
    if t.shape[-1] != 3 or t.shape[0] == 0:
        raise UnsupportedMedia(src.item, f"video arrays need >= 1 frame of 1 or 3 channels, got {tuple(t.shape)}")
    return t  # in whatever memory layout it came: the resize reads any, and a copy costs more than it saves
