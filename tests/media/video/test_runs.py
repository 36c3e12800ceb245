"""Keyframe runs (gpu_mm.media.video.runs.split_starts): where a video's planned frames are cut so that each part
decodes from its own keyframe. Pure arithmetic on a probe: checked on made-up keyframe layouts, and on a real
clip's probe."""

from __future__ import annotations

import bisect

from hypothesis import given, settings
from hypothesis import strategies as st

from gpu_mm.media.sources import load_source
from gpu_mm.media.video import VideoInfo, probe_video
from gpu_mm.media.video.runs import keyframe_positions, runs_for, split_starts

from media_helpers import make_video


def _info(frames: int, keys: list[int]) -> VideoInfo:
    """A probe of ``frames`` frames (pts = 10 * index) whose keyframes are at ``keys``."""
    return VideoInfo(64, 64, "h264", "mp4", 30.0, frames, frames, frames / 30,
                     frame_pts=tuple(range(0, 10 * frames, 10)), keyframe_pts=tuple(10 * k for k in keys))


def _key_of(keys: list[int], frame: int) -> int:
    return keys[bisect.bisect_right(keys, frame) - 1]


def _uniform(frames: int, n: int) -> list[int]:
    return [round(i * (frames - 1) / (n - 1)) for i in range(n)]


def test_uniform_samples_of_many_gops_split_into_equal_runs():
    keys = list(range(0, 900, 60))  # 30 s at 30 fps, a keyframe every 2 s
    indices = _uniform(900, 60)
    starts = split_starts(_info(900, keys), indices, 4, 2)
    assert len(starts) == 4
    spans = [indices[b - 1] + 1 - _key_of(keys, indices[a]) for a, b in zip(starts, [*starts[1:], 60])]
    assert max(spans) <= 1.2 * 900 / 4  # about a quarter of the clip each
    # Each run begins with a keyframe's GOP of its own: no frame is decoded twice.
    for p in starts[1:]:
        assert _key_of(keys, indices[p]) > indices[p - 1]


def test_no_split_without_timestamps_within_one_gop_or_for_one_part():
    indices = _uniform(300, 20)
    assert split_starts(_info(300, [0]), indices, 4, 2) == [0]  # one GOP
    assert split_starts(_info(300, [0, 100, 200]), indices, 1, 2) == [0]
    no_pts = VideoInfo(64, 64, "h264", "mp4", 30.0, 300, 300, 10.0)
    assert keyframe_positions(no_pts) == []
    assert split_starts(no_pts, indices, 4, 2) == [0]
    assert split_starts(_info(300, [0, 100, 200]), [0, 150], 4, 2) == [0]  # fewer frames than two steps


def test_a_gop_boundary_inside_a_temporal_step_moves_to_the_step():
    """Frames 0-2 in the first GOP, 3-7 in the second: with steps of 2 the run begins at position 4 (a whole step),
    sharing the second GOP's first frames with the run before."""
    starts = split_starts(_info(8, [0, 3]), list(range(8)), 2, 2)
    assert starts == [0, 4]


def test_a_real_clips_probe_gives_keyframes_and_runs():
    data = make_video(96, 64, 96, gop=24, bframes=2)
    info = probe_video(load_source(data, "clip"))
    assert keyframe_positions(info) == [0, 24, 48, 72]
    assert split_starts(info, list(range(0, 96, 2)), 4, 2) == [0, 12, 24, 36]


@settings(max_examples=300, deadline=None)
@given(frames=st.integers(2, 400), data=st.data(), parts=st.integers(1, 8), step=st.sampled_from([1, 2]))
def test_runs_are_whole_steps_each_beginning_in_a_later_gop(frames, data, parts, step):
    keys = sorted({0, *data.draw(st.lists(st.integers(1, frames - 1), max_size=20))}) if frames > 1 else [0]
    indices = sorted(data.draw(st.lists(st.integers(0, frames - 1), min_size=1, max_size=80)))
    starts = split_starts(_info(frames, keys), indices, parts, step)
    assert starts[0] == 0 and len(starts) <= max(parts, 1)
    assert starts == sorted(set(starts)) and all(0 < p < len(indices) for p in starts[1:])
    for p in starts[1:]:
        assert p % step == 0
        assert _key_of(keys, indices[p]) > _key_of(keys, indices[p - step])


def test_runs_for_keeps_the_planned_runs_with_a_decoder_each_else_splits_into_fewer():
    info = _info(240, list(range(0, 240, 24)))
    indices = _uniform(240, 40)
    planned = split_starts(info, indices, 4, 2)
    assert len(planned) == 4
    assert runs_for([0, 10, 20, 30], info, indices, 4, 2) == [0, 10, 20, 30]  # a decoder for each: as planned
    assert runs_for(planned, info, indices, 2, 2) == split_starts(info, indices, 2, 2)
    assert runs_for(planned, info, indices, 1, 2) == [0]
