"""nvImageCodec as the JPEG decoder: its CPU backend (libjpeg-turbo) here, bit for bit against torchvision's decode
with gpu-mm's EXIF handling, batched and one by one, through the preprocessor; its CUDA backends under ``cuda``."""

from __future__ import annotations

import sys

import pytest
import torch

from gpu_mm import BackendUnavailable, DecodeError
from gpu_mm.media.image import decode_jpegs, probe_image
from gpu_mm.media.sources import load_source
from gpu_mm.pipeline.families import Qwen2VLPreprocessor

from media_helpers import exif_jpeg, make_image

pytest.importorskip("nvidia.nvimgcodec")
from gpu_mm.media.nvimgcodec import NvImageCodecDecoder  # noqa: E402

JPEGS = [make_image(100, 200, "JPEG", seed=1), make_image(64, 64, "JPEG", seed=2, subsampling=0),
         make_image(70, 70, "JPEG", seed=5, mode="L"), *(exif_jpeg(80, 50, o, seed=o) for o in range(1, 9))]


def _items(datas: list[bytes]):
    out = []
    for i, data in enumerate(datas):
        src = load_source(data, f"image[{i}]")
        out.append((src, probe_image(src)))
    return out


def test_cpu_backend_is_torchvisions_decode_with_exif_bit_for_bit():
    items = _items(JPEGS)
    got = NvImageCodecDecoder("cpu").decode(items)
    ref = decode_jpegs(items, "cpu")
    for (src, info), a, b in zip(items, got, ref):
        assert a.shape == (3, info.height, info.width) and a.dtype == torch.uint8
        assert torch.equal(a, b), src.item


def test_corrupt_jpegs_are_named():
    data = make_image(64, 96, "JPEG", seed=9)
    truncated = data[: data.index(b"\xff\xda") + 40]
    items = _items([JPEGS[0], truncated, JPEGS[1]])
    with pytest.raises(DecodeError, match=r"^image\[1\].*nvImageCodec could not decode"):
        NvImageCodecDecoder("cpu").decode(items)


def test_the_preprocessor_with_it_equals_libjpeg_turbo_batched_and_alone():
    images = [*JPEGS[:4], make_image(60, 90, "PNG", seed=2), JPEGS[6]]
    ref = Qwen2VLPreprocessor("cpu", cache_bytes=0)(images=images)
    batched = Qwen2VLPreprocessor("cpu", image_decoder="nvimgcodec", cache_bytes=0)
    assert batched.image_decoder == "nvimgcodec"
    feats = batched(images=images)
    assert torch.equal(feats.pixel_values, ref.pixel_values)
    assert torch.equal(feats.image_grid_thw, ref.image_grid_thw)
    jpegs = [it.decoder for i, it in enumerate(feats.items) if i != 4]
    assert jpegs == ["nvimgcodec, batch of 5"] * 5 and feats.items[4].decoder == "cpu (libjpeg-turbo/pillow)"
    alone = Qwen2VLPreprocessor("cpu", image_decoder="nvimgcodec", image_batch=1, cache_bytes=0)(images=images)
    assert torch.equal(alone.pixel_values, ref.pixel_values)
    assert alone.items[0].decoder == "nvimgcodec"


async def test_async_slots_each_build_their_decoder():
    pre = Qwen2VLPreprocessor("cpu", image_decoder="nvimgcodec", workers="threads", num_slots=2, cache_bytes=0)
    try:
        feats = await pre.preprocess(images=JPEGS)
    finally:
        await pre.aclose()
    assert torch.equal(feats.pixel_values, Qwen2VLPreprocessor("cpu", cache_bytes=0)(images=JPEGS).pixel_values)


def test_unavailable_is_said_when_the_preprocessor_is_built(monkeypatch):
    monkeypatch.setitem(sys.modules, "nvidia.nvimgcodec", None)
    with pytest.raises(BackendUnavailable, match="nvidia-nvimgcodec-cu13"):
        Qwen2VLPreprocessor("cpu", image_decoder="nvimgcodec")
    with pytest.raises(ValueError, match="image_decoder must be one of"):
        Qwen2VLPreprocessor("cpu", image_decoder="turbo")


@pytest.mark.cuda
def test_cuda_backends_match_nvjpeg_on_444_and_stay_within_its_420_tolerance():
    """On a card: 4:4:4 JPEGs decode close to libjpeg-turbo (torchvision's nvJPEG CUDA decoder gave 0 levels of
    difference on an H200; a hardware JPEG engine has an IDCT of its own, so a level or two is allowed here until a
    card measures it); 4:2:0 within nvJPEG's chroma upsampling bounds (tests/test_cuda_path.py)."""
    from test_cuda_path import NVJPEG_420, _levels, _within

    exact = [make_image(720, 1280, "JPEG", subsampling=0, seed=s) for s in range(3)]
    items = _items(exact)
    got = NvImageCodecDecoder("cuda").decode(items)
    assert all(g.is_cuda for g in got)
    for a, b in zip(got, decode_jpegs(items, "cpu")):
        d = (a.cpu().int() - b.int()).abs()
        assert a.shape == b.shape and float(d.float().mean()) < 0.5 and int(d.max()) <= 8, (
            float(d.float().mean()), int(d.max()))
    common = [make_image(1080, 1920, "JPEG", seed=s) for s in range(4)]
    feats = Qwen2VLPreprocessor("cuda", image_decoder="nvimgcodec", cache_bytes=0)(images=common)
    cpu = Qwen2VLPreprocessor("cpu", cache_bytes=0)(images=common)
    assert feats.items[0].decoder == "nvimgcodec, batch of 4"
    _within(_levels(feats.pixel_values, cpu.pixel_values), NVJPEG_420)


_CORRUPT = """
import sys
sys.path.insert(0, "tests")
from media_helpers import exif_jpeg, make_image
import gpu_mm
data = make_image(64, 96, "JPEG", seed=9)
try:
    gpu_mm.Qwen2VLPreprocessor("cpu", image_decoder="nvimgcodec")(images=[data[: data.index(b"\\xff\\xda") + 40]])
except gpu_mm.DecodeError as exc:
    print("typed:", exc.item)
"""


@pytest.mark.parametrize("verbosity,quiet", [(None, True), ("2", False)])
def test_corrupt_input_does_not_flood_the_output_unless_the_operator_asks(verbosity, quiet):
    """nvImageCodec's library prints an ERROR and a WARNING line per corrupt image; gpu-mm quiets it (each is a
    typed error already) unless ``PYNVIMGCODEC_VERBOSITY`` says otherwise."""
    import os
    import subprocess

    env = {k: v for k, v in os.environ.items() if k != "PYNVIMGCODEC_VERBOSITY"}
    if verbosity is not None:
        env["PYNVIMGCODEC_VERBOSITY"] = verbosity
    proc = subprocess.run([sys.executable, "-c", _CORRUPT], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "typed: image[0]" in proc.stdout
    printed = proc.stdout + proc.stderr
    assert ("Could not decode jpeg" not in printed) is quiet, printed[-2000:]
