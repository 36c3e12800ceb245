"""torchvision's JPEG decoder as gpu-mm calls it (its registered ops, without the deprecated Python wrapper's warning),
and a torchvision without its image codecs (0.29 deprecated them for removal): JPEGs are then decoded by Pillow to
the same pixels, batches included, and CUDA has no nvJPEG (``image_decoder="auto"`` decodes on the CPU, ``"nvjpeg"``
is refused with a typed error). Simulated by taking ``decode_jpeg`` out of ``torchvision.io``."""

from __future__ import annotations

import warnings

import pytest
import torch
import torchvision.io

from gpu_mm import BackendUnavailable
from gpu_mm.media import image
from gpu_mm.media.image import decode_image, decode_jpegs, jpeg_codec, probe_image
from gpu_mm.media.sources import Source
from gpu_mm.pipeline.devices import choose_image_decoder
from gpu_mm.pipeline.families import Qwen2VLPreprocessor

from media_helpers import exif_jpeg, make_image

JPEGS = [make_image(56, 84, "JPEG", seed=1), make_image(56, 84, "JPEG", seed=2, subsampling=0),
         make_image(56, 84, "JPEG", seed=3, mode="L"), *(exif_jpeg(40, 72, o, seed=o) for o in range(1, 9))]


@pytest.fixture
def without_codecs(monkeypatch):
    monkeypatch.delattr(torchvision.io, "decode_jpeg")


def _items():
    srcs = [Source(f"image[{k}]", "encoded", data=b) for k, b in enumerate(JPEGS)]
    return [(s, probe_image(s)) for s in srcs]


def test_torchvisions_ops_decode_as_its_wrapper_does_and_warn_nothing():
    """The registered ops (what gpu-mm calls) against torchvision's public decode_jpeg, one file and a batch; the
    deprecation warning the wrapper gives on every call is not given (silencing it per call was not thread-safe)."""
    from torchvision.io import ImageReadMode
    from torchvision.io import decode_jpeg as public

    assert None not in image._registered_jpeg_ops()  # the installed torchvision's schemas are the known ones
    data = [torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in JPEGS]
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        one, batch = jpeg_codec()(data[0], "cpu"), jpeg_codec()(data, "cpu")
    assert not seen
    wrapper = image._decode_through_wrapper(public, ImageReadMode.RGB, data, "cpu")
    assert all(torch.equal(a, b) for a, b in zip(batch, wrapper)) and torch.equal(one, wrapper[0])
    # A torchvision whose ops are not the known ones: the wrapper decodes (under its filter), the same pixels.
    through = image._decode(None, None, lambda d, dev: image._decode_through_wrapper(public, ImageReadMode.RGB, d, dev),
                            data, "cpu")
    assert all(torch.equal(a, b) for a, b in zip(batch, through))


def test_jpegs_decode_to_the_same_pixels_through_pillow(request):
    with_codecs = [decode_image(s, info=i) for s, i in _items()]
    batched = decode_jpegs(_items())
    features = Qwen2VLPreprocessor("cpu", image_batch=4, cache_bytes=0)(images=JPEGS).pixel_values
    request.getfixturevalue("without_codecs")
    assert jpeg_codec() is None
    for got, want in zip([decode_image(s, info=i) for s, i in _items()], with_codecs):
        assert torch.equal(got, want)
    for got, want in zip(decode_jpegs(_items()), batched):
        assert torch.equal(got, want)
    assert torch.equal(Qwen2VLPreprocessor("cpu", image_batch=4, cache_bytes=0)(images=JPEGS).pixel_values, features)


def test_cuda_decodes_with_torchvisions_nvjpeg_while_it_has_codecs():
    assert choose_image_decoder("auto", "cuda") == "nvjpeg" and choose_image_decoder("nvjpeg", "cuda:1") == "nvjpeg"


def test_cuda_has_no_nvjpeg_without_codecs(without_codecs):
    assert choose_image_decoder("auto", "cuda") == "cpu"
    with pytest.raises(BackendUnavailable, match="decode_jpeg"):
        choose_image_decoder("nvjpeg", "cuda")
    assert choose_image_decoder("auto", "cpu") == "cpu"
