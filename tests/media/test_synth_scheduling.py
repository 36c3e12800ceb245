"""Encoding test media must not change how the encoding thread is scheduled."""

from __future__ import annotations

import os

import pytest

from gpu_mm.media.synth import make_video


def test_an_av1_encode_leaves_the_thread_on_its_own_scheduling_policy():
    """SVT-AV1 sets the thread that opens it to SCHED_FIFO 99 where allowed (root): the suite's main thread then
    outran everything else on the machine. make_video puts the policy back."""
    before = os.sched_getscheduler(0), os.sched_getparam(0)
    try:
        make_video(4, 64, 64, codec="av1")
    except Exception as e:  # noqa: BLE001 - a PyAV build without libsvtav1
        pytest.skip(f"no AV1 encoder here: {e}")
    assert (os.sched_getscheduler(0), os.sched_getparam(0)) == before
