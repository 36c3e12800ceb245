"""RequestOptions: every value a client can send is checked once, and a bad one names its field."""

from __future__ import annotations

import pytest

from gpu_mm import InvalidRequest, RequestOptions


def test_valid_options_parse_to_numbers():
    opts = RequestOptions.parse({"fps": 1, "nframes": 8.0, "video_start": 0, "video_end": 2.5, "max_pixels": 10**6})
    assert opts == RequestOptions(fps=1.0, nframes=8, video_start=0.0, video_end=2.5, max_pixels=10**6)
    assert opts.as_dict() == {"fps": 1.0, "nframes": 8, "video_start": 0.0, "video_end": 2.5, "max_pixels": 10**6}
    assert RequestOptions.parse(None) == RequestOptions() and RequestOptions.parse(opts) is opts


@pytest.mark.parametrize("values,field", [
    ({"fps": "abc"}, "fps"), ({"fps": 0}, "fps"), ({"fps": -1}, "fps"), ({"fps": 1e308}, "fps"),
    ({"fps": float("nan")}, "fps"), ({"fps": True}, "fps"), ({"fps": [2]}, "fps"),
    ({"nframes": "x"}, "nframes"), ({"nframes": 2.5}, "nframes"), ({"nframes": 0}, "nframes"),
    ({"nframes": 10**12}, "nframes"), ({"video_start": "a"}, "video_start"), ({"video_start": -1}, "video_start"),
    ({"video_start": 3, "video_end": 2}, "video_end"), ({"min_pixels": 10, "max_pixels": 5}, "min_pixels"),
    ({"max_pixels": {}}, "max_pixels"), ({"colour": "blue"}, "colour"),
])
def test_bad_values_name_the_field(values, field):
    with pytest.raises(InvalidRequest) as ei:
        RequestOptions.parse(values)
    assert ei.value.field == field and ei.value.status_code == 400 and str(ei.value).startswith(field)
