"""Every CPU video backend returns exactly PyAV's frames for the planned indices (same FFmpeg colour
conversion), on every codec the test machine encodes; bad streams get typed errors.

decord and torchcodec load different FFmpeg builds and must not share a process (it crashed here), so
each backend's checks run in a subprocess of their own."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest

from gpu_mm import BackendUnavailable

CHECK = r'''
import json, sys, torch
from gpu_mm import MediaError, BackendUnavailable
from gpu_mm.media.sources import load_source
from gpu_mm.media.video import get_video_decoder, probe_video
from gpu_mm.pipeline.families import Qwen2VLPreprocessor
from media_helpers import all_frames, clip

backend = sys.argv[1]
try:
    decoder = get_video_decoder(backend)
except BackendUnavailable as exc:
    print(json.dumps({"unavailable": str(exc)})); sys.exit(0)
out = {}
idx = [0, 5, 17, 17, 39, 2]
for codec in ["h264", "hevc", "vp9", "av1", "mjpeg"]:
    data = clip(codec, 40, bframes=2 if codec in ("h264", "hevc") else 0)
    src = load_source(data, "video[0]")
    got = decoder.get_frames_at(src, probe_video(src), idx)
    out[codec] = got.dtype == torch.uint8 and torch.equal(got, torch.from_numpy(all_frames(data)[idx]))
data = clip("h264", 48, bframes=2)
ours = Qwen2VLPreprocessor("cpu", video_decoder=backend)(videos=[data])
ref = Qwen2VLPreprocessor("cpu", video_decoder="pyav")(videos=[data])
same = torch.equal(ours.pixel_values_videos, ref.pixel_values_videos)
out["preprocessor"] = ours.items[0].decoder == backend and same
vp9 = clip("vp9", 40)
info = probe_video(load_source(vp9, "v"))
try:
    decoder.get_frames_at(load_source(vp9[: len(vp9) // 2], "video[4]"), info, [0, 39])
    out["truncated"] = "no error"
except MediaError as exc:
    out["truncated"] = "video[4]" in str(exc)
print(json.dumps(out))
'''


@pytest.mark.parametrize("backend", ["decord", "torchcodec"])
@pytest.mark.slow
def test_backend_equals_pyav_in_its_own_process(backend):
    tests = pathlib.Path(__file__).parents[2]  # tests/, where media_helpers lives
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tests), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-W", "error::DeprecationWarning", "-c", CHECK, backend],
                          capture_output=True, text=True, timeout=240, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    if "unavailable" in result:
        pytest.skip(result["unavailable"])
    assert result == {"h264": True, "hevc": True, "vp9": True, "av1": True, "mjpeg": True,
                      "preprocessor": True, "truncated": True}


def test_decord_and_torchcodec_refuse_to_share_a_process(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchcodec", sys.modules.get("torchcodec") or object())
    from gpu_mm.media.video import get_video_decoder

    with pytest.raises(BackendUnavailable, match="clash"):
        get_video_decoder("decord")


@pytest.mark.slow
def test_torchcodec_without_ffmpeg_libraries_is_unavailable_not_every_item_bad():
    """On a machine without the system's FFmpeg libraries, ``import torchcodec`` works but decoding does not:
    the backend must say it is unavailable (so its tests skip and ``auto`` passes it by)."""
    pytest.importorskip("torchcodec")
    code = (
        "import torchcodec._internally_replaced_utils as u\n"
        "def fail():\n    raise RuntimeError('Could not load libtorchcodec. (simulated)')\n"
        "u.load_core_libraries = fail\n"
        "from gpu_mm import BackendUnavailable\n"
        "from gpu_mm.media.video import get_video_decoder\n"
        "try:\n    get_video_decoder('torchcodec')\nexcept BackendUnavailable as exc:\n    print('unavailable:', exc)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "unavailable: torchcodec is not usable (Could not load libtorchcodec" in proc.stdout


@pytest.mark.slow
def test_listing_backends_imports_none_of_them():
    """``available_video_decoders`` looks packages up without importing them: listing them must not load
    decord (after which torchcodec would be refused for the rest of the process)."""
    code = (
        "import sys\n"
        "from gpu_mm.media.video import available_video_decoders\n"
        "names = available_video_decoders()\n"
        "loaded = [m for m in ('decord', 'torchcodec', 'nvidia.dali') if m in sys.modules]\n"
        "print(names, loaded)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    names, loaded = proc.stdout.strip().rsplit("] [", 1)
    assert "'pyav'" in names and loaded == "]"


def test_a_taken_backend_name_is_refused():
    from gpu_mm.media.video import PyAVDecoder, get_video_decoder, register_video_decoder, unregister_video_decoder

    with pytest.raises(ValueError, match="already registered"):
        register_video_decoder("pyav", PyAVDecoder)
    register_video_decoder("pyav-twin-test", PyAVDecoder)
    try:
        with pytest.raises(ValueError, match="already registered"):
            register_video_decoder("pyav-twin-test", PyAVDecoder)
        register_video_decoder("pyav-twin-test", PyAVDecoder, replace=True)
        assert get_video_decoder("pyav-twin-test").name == "pyav"
    finally:
        unregister_video_decoder("pyav-twin-test")
    with pytest.raises(ValueError, match="unknown video decoder"):
        get_video_decoder("pyav-twin-test")
    with pytest.raises(ValueError, match="fallback"):
        unregister_video_decoder("pyav")
