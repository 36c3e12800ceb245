"""PyAV (bundled FFmpeg, always installed): the decoder every other backend falls back to."""

from __future__ import annotations

import bisect
import contextlib
import threading
from collections.abc import Generator, Iterator, Sequence
from typing import Any

import numpy as np
import torch

from ...errors import DecodeError
from ..sources import Source
from .probe import VideoInfo, check_planned_indices, open_av

__all__ = ["PyAVDecoder"]


class PyAVDecoder:
    """PyAV (bundled FFmpeg): seeks to the keyframe before a wanted frame only when that frame's GOP
    lies ahead of the decode position; otherwise decodes forward, keeping only wanted frames.

    :meth:`iter_frames_at` hands the frames over one at a time, so a caller that resizes as they come
    holds a few source-size frames, not the whole clip."""

    name = "pyav"

    def __init__(self, thread_type: str | None = None, thread_count: int | None = None) -> None:
        self.thread_type = thread_type
        self.thread_count = thread_count
        """FFmpeg's decoding threads (None: its own choice, one per core; slice threads pay only for streams
        of several slices per frame)."""

    def get_frames_at(self, src: Source, info: VideoInfo, indices: Sequence[int]) -> torch.Tensor:
        order = sorted(range(len(indices)), key=lambda k: indices[k])
        out = np.empty((len(indices), info.height, info.width, 3), np.uint8)
        for k, frame in zip(order, self.iter_frames_at(src, info, [indices[k] for k in order])):
            out[k] = frame
        return torch.from_numpy(out)

    def get_frames_in_runs(self, src: Source, info: VideoInfo, indices: Sequence[int],
                           starts: Sequence[int]) -> torch.Tensor:
        """:meth:`get_frames_at` for ascending ``indices`` cut into runs that begin at positions ``starts``
        (``[0, ...]``, e.g. :func:`gpu_mm.media.video.runs.split_starts`): each run decoded at once by a decoder of its
        own (``thread_count`` FFmpeg threads each, default one: the runs are the parallelism), the first on the
        calling thread and each other on a thread it starts and joins. The same frames as one decoder.

        Raises:
            DecodeError: as :meth:`get_frames_at`, the first failing run's (the others stop at their next frame).
        """
        if list(starts[:1]) != [0] or any(b <= a for a, b in zip(starts, starts[1:])) or starts[-1] >= len(indices):
            raise ValueError(f"runs must begin at 0 and at ascending positions within the indices, got {starts}")
        out = np.empty((len(indices), info.height, info.width, 3), np.uint8)
        bounds = [*starts, len(indices)]
        stop = threading.Event()
        errors: list[BaseException] = []

        def run(a: int, b: int) -> None:
            decoder = PyAVDecoder(self.thread_type, thread_count=self.thread_count or 1)
            try:
                with contextlib.closing(decoder.iter_frames_at(src, info, indices[a:b])) as frames:
                    for k, frame in enumerate(frames):
                        if stop.is_set():
                            return
                        out[a + k] = frame
            except BaseException as exc:  # noqa: BLE001 - raised on the calling thread once every run has ended
                errors.append(exc)
                stop.set()

        threads = [threading.Thread(target=run, args=(a, b), name=f"gpu-mm-video-run-{k}", daemon=True)
                   for k, (a, b) in enumerate(zip(bounds[1:], bounds[2:]), start=1)]
        for t in threads:
            t.start()
        try:
            run(bounds[0], bounds[1])
        finally:
            for t in threads:
                t.join()
        if errors:
            raise errors[0]
        return torch.from_numpy(out)

    def iter_frames_at(self, src: Source, info: VideoInfo,
                       indices: Sequence[int]) -> Generator[np.ndarray, None, None]:
        """Yield the frame at each of ``indices`` (ascending) as uint8 ``[H, W, 3]``, in order.

        Raises:
            DecodeError: the stream is corrupt or truncated before a planned frame, or changes frame size.
            ValueError: indices outside the video or not ascending (a caller's bug).
        """
        import av

        check_planned_indices(indices, info)
        if any(b < a for a, b in zip(indices, indices[1:])):
            raise ValueError("iter_frames_at needs ascending indices")
        wanted = sorted(set(indices))
        pos = 0  # next position in ``indices`` to hand out
        try:
            with open_av(src) as container:
                stream = container.streams.video[0]
                if self.thread_type:
                    stream.thread_type = self.thread_type
                if self.thread_count is not None:
                    stream.codec_context.thread_count = self.thread_count
                found = (self._by_pts(container, stream, info, wanted) if info.frame_pts
                         else self._sequential(container, stream, wanted))
                for index, frame in found:
                    array = frame.to_ndarray(format="rgb24")
                    if array.shape != (info.height, info.width, 3):
                        raise DecodeError(
                            src.item, f"frame {index} is {array.shape[1]}x{array.shape[0]}, the stream's size is "
                            f"{info.width}x{info.height} (a stream that changes size is not supported)",
                        )
                    while pos < len(indices) and indices[pos] == index:
                        yield array
                        pos += 1
        except av.error.FFmpegError as exc:
            raise DecodeError(src.item, f"video decode failed: {exc}") from None
        if pos < len(indices):
            raise DecodeError(
                src.item,
                f"{len(wanted) - len(set(indices[:pos]))} of {len(wanted)} planned frames could not be decoded "
                f"(first: {indices[pos]}); the stream is truncated or corrupt",
            )

    @staticmethod
    def _by_pts(container: Any, stream: Any, info: VideoInfo, wanted: list[int]) -> Iterator[tuple[int, Any]]:
        pts_to_index = {info.frame_pts[i]: i for i in wanted}
        keys = info.keyframe_pts
        pos = -1  # index of the last frame decoded
        frames = None
        done = -1  # the last wanted index handed out (wanted is ascending)
        for i in wanted:
            if i <= done:
                continue
            target = info.frame_pts[i]
            k = bisect.bisect_right(keys, target) - 1
            key_pts = keys[k] if k >= 0 else info.frame_pts[0]
            key_index = bisect.bisect_left(info.frame_pts, key_pts)
            if frames is None or key_index > pos:
                if frames is not None or key_index > 0:
                    container.seek(key_pts, stream=stream, backward=True, any_frame=False)
                frames = container.decode(stream)
            for frame in frames:
                if frame.pts is None:
                    continue
                idx = pts_to_index.get(frame.pts)
                pos = max(pos, bisect.bisect_left(info.frame_pts, frame.pts))
                if idx is not None and idx > done:
                    done = idx
                    yield idx, frame
                if frame.pts >= target:
                    break
            if done < i:
                return  # the stream ended before frame i: the caller reports it

    @staticmethod
    def _sequential(container: Any, stream: Any, wanted: list[int]) -> Iterator[tuple[int, Any]]:
        want = set(wanted)
        last = wanted[-1]
        for n, frame in enumerate(container.decode(stream)):
            if n in want:
                yield n, frame
            if n >= last:
                break
