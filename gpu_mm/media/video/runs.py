"""A video's keyframe runs: where its planned frames can be cut so that each part decodes on its own, from its own
keyframe (:mod:`gpu_mm.pipeline.split_decode` decodes the parts at once). Pure arithmetic on the probe."""

from __future__ import annotations

import bisect
from collections.abc import Sequence

from .probe import VideoInfo

__all__ = ["keyframe_positions", "runs_for", "split_starts"]


def keyframe_positions(info: VideoInfo) -> list[int]:
    """The frame index of each keyframe (empty when the stream's timestamps are unknown: no split)."""
    if not info.frame_pts:
        return []
    return [bisect.bisect_left(info.frame_pts, pts) for pts in info.keyframe_pts]


def split_starts(info: VideoInfo, indices: Sequence[int], parts: int, step: int) -> list[int]:
    """Positions in ``indices`` (ascending frame indices) where up to ``parts`` runs begin, ``[0, ...]``.

    A run begins at a multiple of ``step`` (the temporal patch: a run's frames fill whole rows) whose frame lies
    in a later GOP than the frame ``step`` positions before, so that the runs share at most the part of one GOP
    before a boundary that falls inside it. The boundaries are the candidates nearest to equal shares of the
    frames to decode (from the first planned frame's keyframe to the last planned frame); ``[0]`` when the
    timestamps are unknown, ``parts < 2``, or every planned frame lies in one GOP."""
    keys = keyframe_positions(info)
    n = len(indices)
    if parts < 2 or not keys or n < 2 * step:
        return [0]

    def key_of(frame: int) -> int:
        k = bisect.bisect_right(keys, frame) - 1
        return keys[k] if k >= 0 else 0

    candidates = [p for p in range(step, n, step) if key_of(indices[p]) > key_of(indices[p - step])]
    if not candidates:
        return [0]
    first = key_of(indices[0])
    span = indices[-1] + 1 - first
    starts = [0]
    for j in range(1, parts):
        ideal = first + j * span / parts
        later = [p for p in candidates if p > starts[-1]]
        if not later:
            break
        best = min(later, key=lambda p: abs(key_of(indices[p]) - ideal))
        if abs(key_of(indices[best]) - ideal) < span / parts / 2 or best == later[0]:
            starts.append(best)
    return starts


def runs_for(planned: Sequence[int], info: VideoInfo, indices: Sequence[int], parts: int, step: int) -> list[int]:
    """Where the runs begin when ``parts`` decoders are at hand: the ``planned`` runs when there is one for each,
    else :func:`split_starts` into ``parts`` (fewer decoders than planned)."""
    return list(planned) if parts == len(planned) else split_starts(info, indices, parts, step)
