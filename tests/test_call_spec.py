"""A call's own settings (``spec=``): one preprocessor (its slots, memory budget and cache) computes a call by
another spec of its family exactly as a preprocessor built with that spec does, in every API and worker mode, with
cache entries kept apart by spec."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest
import torch

import gpu_mm
from gpu_mm import InvalidRequest, Qwen2VLConfig, Qwen3VLConfig

from media_helpers import clip, make_image

IMAGE, VIDEO = make_image(300, 420, "JPEG", seed=4), clip("h264", 24, 96, 128)
OTHER = Qwen2VLConfig(image_max_pixels=128 * 28 * 28, video_max_pixels=64 * 28 * 28, output_dtype=torch.uint8,
                      sampling="sglang", video_resample="bilinear")


def _equal(a, b):
    a, b = a.to_dict(), b.to_dict()
    return set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


def test_a_call_by_another_spec_equals_a_preprocessor_of_that_spec():
    want = gpu_mm.Qwen2VLPreprocessor("cpu", config=OTHER)(images=[IMAGE], videos=[VIDEO])
    pre = gpu_mm.Qwen2VLPreprocessor("cpu")
    own = pre(images=[IMAGE], videos=[VIDEO])
    got = pre(images=[IMAGE], videos=[VIDEO], spec=OTHER)
    assert _equal(got, want) and not _equal(got, own)
    assert [r.cache for r in got.items] == ["miss", "miss"]  # not the entries of the preprocessor's own spec
    again = pre(images=[IMAGE], videos=[VIDEO], spec=dataclasses.replace(OTHER))
    assert [r.cache for r in again.items] == ["hit", "hit"] and _equal(again, want)


@pytest.mark.parametrize("workers", ["threads", "processes"])
def test_the_async_api_and_slot_processes_compute_by_the_calls_spec(workers):
    want = gpu_mm.Qwen2VLPreprocessor("cpu", config=OTHER)(images=[IMAGE], videos=[VIDEO])

    async def main():
        pre = gpu_mm.Qwen2VLPreprocessor("cpu", workers=workers, num_slots=1, cache_bytes=0)
        try:
            own, other = await asyncio.gather(pre.preprocess(images=[IMAGE], videos=[VIDEO]),
                                              pre.preprocess(images=[IMAGE], videos=[VIDEO], spec=OTHER))
            return own, other
        finally:
            await pre.aclose()

    own, other = asyncio.run(main())
    assert _equal(other, want) and other.pixel_values.dtype == torch.uint8
    assert own.pixel_values.dtype == torch.float32


def test_a_spec_of_another_family_or_an_invalid_one_is_refused():
    pre = gpu_mm.Qwen2VLPreprocessor("cpu")
    with pytest.raises(InvalidRequest, match="Qwen2VLConfig"):
        pre(images=[IMAGE], spec=Qwen3VLConfig())
    with pytest.raises(InvalidRequest, match="sampling"):
        pre(images=[IMAGE], spec=dataclasses.replace(OTHER, sampling="nope"))
