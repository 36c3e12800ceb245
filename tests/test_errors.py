"""gpu-mm's errors survive what servers and clusters do with exceptions: pickling (Ray, multiprocessing) and
copying (web frameworks' error handlers), keeping their type, fields and message."""

from __future__ import annotations

import copy
import pickle

import pytest

import gpu_mm
from gpu_mm import errors

ALL = [
    errors.DecodeError("video[0] (bytes, 5 B)", "corrupt stream"),
    errors.UnsupportedMedia("image[1]", "not an image"),
    errors.LimitExceeded("video[2]", "too many frames"),
    errors.SourceError("image[0]", "bad base64"),
    errors.InvalidRequest("fps", "must be > 0"),
    errors.Overloaded("at the bound"),
    errors.ProcessingTimeout("not done within 1 s"),
    errors.ProcessorClosed("closed"),
    errors.BackendUnavailable("no DALI"),
]


@pytest.mark.parametrize("exc", ALL, ids=lambda e: type(e).__name__)
@pytest.mark.parametrize("how", ["pickle", "copy"])
def test_errors_round_trip(exc, how):
    back = pickle.loads(pickle.dumps(exc)) if how == "pickle" else copy.copy(exc)
    assert type(back) is type(exc) and str(back) == str(exc) and back.status_code == exc.status_code
    for field in ("item", "reason", "field"):
        assert getattr(back, field, None) == getattr(exc, field, None)
    assert isinstance(back, gpu_mm.GpuMMError)
