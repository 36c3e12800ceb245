"""gpu_mm.ops against transformers / qwen-vl-utils: smart_resize, frame sampling, resize, normalize,
patchify (one class per op), plus hypothesis properties for the size and sampling invariants."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gpu_mm import ops

hf_img = pytest.importorskip("transformers.models.qwen2_vl.image_processing_qwen2_vl")
qvu = pytest.importorskip("qwen_vl_utils.vision_process")

sides = st.integers(min_value=1, max_value=20000)


class TestSmartResize:
    @settings(max_examples=400, deadline=None)
    @given(h=sides, w=sides, min_px=st.sampled_from([3136, 100352, 28 * 28]),
           max_px=st.sampled_from([1003520, 602112, 12845056, 28 * 28 * 4]))
    def test_matches_transformers(self, h, w, min_px, max_px):
        try:
            ref = hf_img.smart_resize(h, w, 28, min_px, max_px)
        except ValueError:
            with pytest.raises(ValueError):
                ops.smart_resize(h, w, 28, min_px, max_px)
            return
        assert ops.smart_resize(h, w, 28, min_px, max_px) == ref

    @settings(max_examples=400, deadline=None)
    @given(h=sides, w=sides)
    def test_invariants(self, h, w):
        if max(h, w) / min(h, w) > 200:
            with pytest.raises(ValueError, match="aspect ratio"):
                ops.smart_resize(h, w)
            return
        rh, rw = ops.smart_resize(h, w)
        assert rh % 28 == 0 and rw % 28 == 0 and rh >= 28 and rw >= 28
        assert rh * rw <= 28 * 28 * 1280 or min(rh, rw) == 28  # only the one-patch floor may exceed
        assert rh * rw >= 56 * 56

    def test_rejects_empty(self):
        with pytest.raises(ValueError, match=">= 1"):
            ops.smart_resize(0, 10)


class TestSampling:
    @settings(max_examples=300, deadline=None)
    @given(total=st.integers(2, 20000), fps_in=st.sampled_from([1.0, 5.0, 23.976, 25.0, 30.0, 60.0, 120.0]),
           fps=st.sampled_from([0.5, 1.0, 2.0, 4.0]))
    def test_nframes_and_indices_match_qwen_vl_utils(self, total, fps_in, fps):
        ele = {"fps": fps}
        try:
            ref_n = qvu.smart_nframes(ele, total_frames=total, video_fps=fps_in)
        except ValueError:
            with pytest.raises(ValueError):
                ops.nframes_qwen_vl_utils(total, fps_in, fps=fps)
            return
        n = ops.nframes_qwen_vl_utils(total, fps_in, fps=fps)
        assert n == ref_n
        idx = ops.sample_indices_qwen_vl_utils(0, total - 1, n)
        assert idx == torch.linspace(0, total - 1, ref_n).round().long().tolist()
        # Invariants: even count within bounds, sorted, inside the video.
        assert n % 2 == 0 and 2 <= n <= min(768, total)
        assert idx == sorted(idx) and 0 <= idx[0] and idx[-1] <= total - 1

    @settings(max_examples=100, deadline=None)
    @given(total=st.integers(4, 5000), nframes=st.integers(2, 400))
    def test_explicit_nframes(self, total, nframes):
        ele = {"nframes": nframes}
        try:
            ref = qvu.smart_nframes(ele, total_frames=total, video_fps=30)
        except ValueError:
            with pytest.raises(ValueError):
                ops.nframes_qwen_vl_utils(total, 30, nframes=nframes)
            return
        assert ops.nframes_qwen_vl_utils(total, 30, nframes=nframes) == ref

    @pytest.mark.parametrize("nframes", [2, 4, 60, 768])
    def test_per_frame_pixel_cap(self, nframes):
        ref = max(min(768 * 28 * 28, 128000 * 28 * 28 * 0.9 / nframes * 2), int(128 * 28 * 28 * 1.05))
        assert ops.video_max_pixels_qwen_vl_utils(nframes) == ref

    @settings(max_examples=200, deadline=None)
    @given(total=st.integers(2, 20000), data=st.data())
    def test_sglang_indices_truncate_the_exact_linspace(self, total, data):
        from fractions import Fraction

        n = data.draw(st.integers(1, min(total, 768)))
        idx = ops.sample_indices_sglang(0, total - 1, n)
        if n == 1:
            assert idx == [0]
            return
        # SGLang's rule is numpy's float linspace truncated to int64 (so 47.99999 -> 47 where the exact value
        # is 48): equal to the float computation, within one frame of the exact floor, never merging frames.
        assert idx == np.linspace(0, total - 1, n).astype(np.int64).tolist()
        exact = [math.floor(Fraction(i * (total - 1), n - 1)) for i in range(n)]
        assert all(0 <= e - i <= 1 for i, e in zip(idx, exact))
        assert len(set(idx)) == n and idx == sorted(idx)

    def test_hf_rule_matches_transformers(self):
        from transformers import Qwen2VLVideoProcessor
        from transformers.video_utils import VideoMetadata

        vp = Qwen2VLVideoProcessor()
        for total, fps_in, fps in [(300, 30.0, 2.0), (97, 24.0, 1.0), (1000, 25.0, 4.0)]:
            meta = VideoMetadata(total_num_frames=total, fps=fps_in)
            ref = vp.sample_frames(meta, fps=fps).tolist()
            n = ops.nframes_hf(total, fps_in, fps=fps)
            assert ops.sample_indices_hf(total, n) == ref
        assert ops.sample_indices_hf(7, None) == list(range(7))


class TestResize:
    def test_noop_returns_input(self):
        x = torch.zeros(3, 56, 56, dtype=torch.uint8)
        assert ops.resize(x, (56, 56)) is x

    def test_uint8_stays_uint8_and_batches(self):
        x = torch.randint(0, 256, (4, 3, 50, 70), dtype=torch.uint8)
        y = ops.resize(x, (28, 56))
        assert y.dtype == torch.uint8 and y.shape == (4, 3, 28, 56)
        # Batched resize equals per-frame resize (exactly: same kernel).
        assert torch.equal(y[2], ops.resize(x[2], (28, 56)))

    def test_bilinear_is_within_one_level_of_sglangs_call(self):
        """SGLang resizes video frames with torchvision's v1 ``resize(..., BILINEAR)`` (float kernel); gpu-mm
        uses the v2 uint8 kernel, which rounds differently by at most one level."""
        import torchvision.transforms.functional as v1
        from torchvision.transforms import InterpolationMode

        x = torch.randint(0, 256, (3, 3, 120, 160), dtype=torch.uint8)
        for size in [(280, 392), (56, 84), (119, 161)]:
            ref = v1.resize(x, list(size), interpolation=InterpolationMode.BILINEAR)
            ours = ops.resize(x, size, "bilinear")
            assert ours.dtype == torch.uint8 and ours.shape == ref.shape
            assert (ours.int() - ref.int()).abs().max() <= 1

    def test_unknown_interpolation_is_refused(self):
        with pytest.raises(ValueError, match="interpolation"):
            ops.resize(torch.zeros(3, 8, 8, dtype=torch.uint8), (4, 4), "nearest")


class TestNormalizePatchify:
    def test_normalize_matches_transformers_fused_math(self):
        x = torch.randint(0, 256, (2, 3, 28, 28), dtype=torch.uint8)
        proc = hf_img.Qwen2VLImageProcessor()
        ref = proc.rescale_and_normalize(x, True, 1 / 255, True, ops.OPENAI_CLIP_MEAN, ops.OPENAI_CLIP_STD)
        # Identical float32 operations: exact.
        assert torch.equal(ops.normalize(x), ref)

    def test_patchify_image_matches_transformers(self):
        x = torch.randn(1, 3, 56, 84)
        proc = hf_img.Qwen2VLImageProcessor()
        ref, gh, gw = proc.patchify(x, patch_size=14, merge_size=2, temporal_patch_size=2)
        pv, grid = ops.patchify(x)
        assert grid == (1, gh, gw) and torch.equal(pv, ref[0])

    @pytest.mark.parametrize("t", [1, 2, 3, 5, 8])
    def test_patchify_video_matches_transformers_incl_odd_frames(self, t):
        from transformers import Qwen2VLVideoProcessor

        x = torch.randn(1, t, 3, 56, 28)
        ref, gt, gh, gw = Qwen2VLVideoProcessor().patchify(x, patch_size=14, merge_size=2, temporal_patch_size=2)
        pv, grid = ops.patchify(x[0])
        assert grid == (gt, gh, gw) == (math.ceil(t / 2), 4, 2)
        assert torch.equal(pv, ref[0])

    def test_patchify_rejects_bad_size(self):
        with pytest.raises(ValueError, match="multiple of 28"):
            ops.patchify(torch.zeros(1, 3, 30, 28))

    @pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
    def test_device_agnostic(self, device):
        x = torch.randint(0, 256, (3, 3, 56, 56), dtype=torch.uint8)
        ref, grid = ops.normalize_patchify(x)
        out, grid2 = ops.normalize_patchify(x.to(device))
        assert grid == grid2 and out.device.type == device
        # CPU vs CUDA float32 division may differ in the last ulp.
        torch.testing.assert_close(out.cpu(), ref, rtol=1e-6, atol=1e-6)


def test_normalization_constants_are_made_once_per_device():
    """On CUDA, building them per call is a host-to-device copy that synchronizes the slot's stream."""
    x = torch.zeros(1, 3, 28, 28, dtype=torch.uint8)
    m1, s1 = ops._mean_std(x, ops.OPENAI_CLIP_MEAN, ops.OPENAI_CLIP_STD)
    m2, s2 = ops._mean_std(x, list(ops.OPENAI_CLIP_MEAN), list(ops.OPENAI_CLIP_STD))
    assert m1 is m2 and s1 is s2
    assert torch.equal(m1, torch.tensor(ops.OPENAI_CLIP_MEAN) * (1.0 / (1 / 255)))


@pytest.mark.parametrize("frames", [1, 2, 3, 5])
@pytest.mark.parametrize("patch", [14, 16])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_normalize_patchify_is_bit_identical_to_normalize_then_patchify(frames, patch, layout, monkeypatch):
    """The fast path (patches laid out while uint8, then converted per block) against the plain formulation
    transformers uses (normalize the whole float frames, then lay out the patches): identical bits, for
    images, odd frame counts (last frame repeated), both patch sizes, any memory layout, and into ``out``."""
    monkeypatch.setattr(ops, "_CACHE_BLOCK_BYTES", 4 * 3 * 2 * patch * patch * 5)  # blocks of 5 rows, one ragged
    g = torch.Generator().manual_seed(frames * patch)
    x = torch.randint(0, 256, (frames, 3, 4 * patch, 6 * patch), dtype=torch.uint8, generator=g)
    if layout == "channels_last":
        x = x.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    plain, grid = ops.patchify(ops.normalize(x, mean, std), patch)
    fast, grid2 = ops.normalize_patchify(x, mean, std, patch_size=patch)
    assert grid == grid2 and torch.equal(fast, plain)
    out = torch.full_like(plain, float("nan"))
    ops.normalize_patchify(x, mean, std, patch_size=patch, out=out)
    assert torch.equal(out, plain)


@pytest.mark.parametrize("frames", [1, 3, 4])
@pytest.mark.parametrize("patch", [14, 16])
def test_uint8_output_is_the_patch_layout_of_the_raw_pixels(frames, patch):
    """``dtype=uint8`` (vLLM's ``mm_device_do_normalize``): the same patch order as :func:`ops.patchify`, on the
    pixels as they are; no rescale, no normalization; ``out`` receives them in place."""
    g = torch.Generator().manual_seed(frames + patch)
    x = torch.randint(0, 256, (frames, 3, 4 * patch, 2 * patch), dtype=torch.uint8, generator=g)
    plain, grid = ops.patchify(x.float(), patch)
    rows, grid2 = ops.normalize_patchify(x, patch_size=patch, dtype=torch.uint8)
    assert grid == grid2 and rows.dtype == torch.uint8 and torch.equal(rows.float(), plain)
    out = torch.zeros_like(rows)
    assert ops.normalize_patchify(x, patch_size=patch, dtype=torch.uint8, out=out)[0] is out
    assert torch.equal(out, rows)
    with pytest.raises(ValueError, match="uint8"):
        ops.patch_rows(x.float(), patch)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.uint8])
@pytest.mark.parametrize("kernel", ["c", "torch"])
def test_items_of_one_size_are_their_rows_one_after_another(dtype, kernel, monkeypatch):
    """``[B, T, C, H, W]`` (a batch of same-size images, as the pipeline resizes them together): each item's rows
    after the previous item's, the bits of one call per item, with the C kernel and with torch ops."""
    if kernel == "torch":
        monkeypatch.setattr(ops, "_cpu_patch", None)
    elif not ops.cpu_kernel_available():
        pytest.skip("the C kernel is not built here")
    g = torch.Generator().manual_seed(7)
    x = torch.randint(0, 256, (3, 1, 3, 56, 84), dtype=torch.uint8, generator=g)
    rows, grid = ops.normalize_patchify(x, dtype=dtype)
    each = [ops.normalize_patchify(x[k], dtype=dtype) for k in range(3)]
    assert grid == each[0][1] == (1, 4, 6)
    assert torch.equal(rows, torch.cat([r for r, _ in each]))
    out = torch.zeros_like(rows)
    assert ops.normalize_patchify(x, dtype=dtype, out=out)[0] is out and torch.equal(out, rows)
    with pytest.raises(ValueError, match="out must be"):
        ops.normalize_patchify(x, dtype=dtype, out=out[:-1])
