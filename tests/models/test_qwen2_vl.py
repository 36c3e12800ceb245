"""Qwen2VLPreprocessor against independent references: transformers' Qwen2-VL image and video
processors (built in code, defaults) given the same decoded pixels, the PIL processor, and
qwen-vl-utils' own video pipeline. Also bad input through the whole pipeline, and the async paths."""

from __future__ import annotations

import asyncio
import io
import time

import numpy as np
import pytest
import torch
from PIL import Image

import gpu_mm
from gpu_mm import LimitExceeded, MediaError, ProcessingTimeout
from gpu_mm.pipeline.families import Qwen2VLPreprocessor

from media_helpers import all_frames, clip, exif_jpeg, make_image, make_video

transformers = pytest.importorskip("transformers")
from transformers import Qwen2VLImageProcessor, Qwen2VLImageProcessorPil, Qwen2VLVideoProcessor  # noqa: E402


@pytest.fixture(scope="module")
def pre():
    return Qwen2VLPreprocessor("cpu")


def _hf_image(data: bytes, **kw):
    img = Image.open(io.BytesIO(data))
    from PIL import ImageOps

    img = ImageOps.exif_transpose(img)
    return Qwen2VLImageProcessor(**kw)(images=[img], return_tensors="pt")


IMAGE_CASES = [
    (1080, 1920, "JPEG", "RGB"),
    (333, 517, "JPEG", "RGB"),     # odd sizes
    (10, 10, "PNG", "RGB"),        # smaller than one 28 px patch: upscaled to min_pixels
    (20, 27, "JPEG", "RGB"),
    (28, 5000, "PNG", "RGB"),      # aspect ratio 178.6: extreme but legal
    (4000, 21, "PNG", "RGB"),
    (300, 200, "PNG", "RGBA"),     # alpha composited on white
    (120, 90, "JPEG", "L"),        # grayscale
    (64, 96, "PNG", "P"),          # palette
    (2048, 2048, "JPEG", "RGB"),   # downscaled to max_pixels
]


class TestImageParity:
    @pytest.mark.parametrize("h,w,fmt,mode", IMAGE_CASES)
    def test_matches_transformers_torchvision_processor(self, pre, h, w, fmt, mode):
        data = make_image(h, w, fmt, mode=mode)
        ours = pre(images=[data])
        ref = _hf_image(data)
        assert torch.equal(ours.image_grid_thw, ref["image_grid_thw"])
        # Same decoded pixels and the same torch ops (uint8 bicubic antialias, fused normalize): exact.
        torch.testing.assert_close(ours.pixel_values, ref["pixel_values"], rtol=0, atol=0)

    @pytest.mark.parametrize("mode", ["CMYK", "I;16"])
    def test_other_modes_match_transformers_given_the_same_rgb(self, pre, mode):
        fmt = "JPEG" if mode == "CMYK" else "PNG"
        data = make_image(50, 70, fmt, mode=mode)
        ours = pre(images=[data])
        rgb = gpu_mm.media.image.decode_image(gpu_mm.media.sources.load_source(data, "i"))
        ref = Qwen2VLImageProcessor()(images=[rgb], return_tensors="pt")
        torch.testing.assert_close(ours.pixel_values, ref["pixel_values"], rtol=0, atol=0)

    @pytest.mark.parametrize("min_px,max_px", [(3136, 200704), (100352, 1003520), (784, 4 * 784)])
    def test_min_max_pixels(self, min_px, max_px):
        data = make_image(480, 640, "JPEG")
        ours = Qwen2VLPreprocessor("cpu", image_min_pixels=min_px, image_max_pixels=max_px)(images=[data])
        ref = _hf_image(data, min_pixels=min_px, max_pixels=max_px)
        assert torch.equal(ours.image_grid_thw, ref["image_grid_thw"])
        torch.testing.assert_close(ours.pixel_values, ref["pixel_values"], rtol=0, atol=0)

    def test_against_pil_processor_within_resampling_tolerance(self, pre):
        data = make_image(480, 640, "JPEG")
        ours = pre(images=[data])
        ref = Qwen2VLImageProcessorPil()(images=[Image.open(io.BytesIO(data))], return_tensors="pt")
        assert torch.equal(ours.image_grid_thw, ref["image_grid_thw"])
        # PIL's bicubic filter and torchvision's antialiased bicubic differ by a few uint8 levels at
        # edges (PIL resamples in fixed point); after /(255*std) one level is ~0.015, so a few levels
        # peak near 0.1 while the mean stays tiny.
        diff = (ours.pixel_values - ref["pixel_values"]).abs()
        assert diff.max() < 0.2 and diff.mean() < 0.01

    def test_several_images_concatenate_in_order(self, pre):
        a, b = make_image(100, 200, "JPEG", seed=1), make_image(300, 150, "PNG", seed=2)
        ours = pre(images=[a, b])
        ra, rb = _hf_image(a), _hf_image(b)
        assert ours.image_grid_thw.tolist() == ra["image_grid_thw"].tolist() + rb["image_grid_thw"].tolist()
        torch.testing.assert_close(ours.pixel_values, torch.cat([ra["pixel_values"], rb["pixel_values"]]),
                                   rtol=0, atol=0)

    def test_each_image_header_is_parsed_once(self, pre, monkeypatch):
        import gpu_mm.media.image as image_mod
        import gpu_mm.pipeline.plan as model_mod

        calls = []
        orig = image_mod.probe_image

        def counting(src, *a, **k):
            calls.append(src.item)
            return orig(src, *a, **k)

        monkeypatch.setattr(image_mod, "probe_image", counting)
        monkeypatch.setattr(model_mod, "probe_image", counting)
        Qwen2VLPreprocessor("cpu", cache_bytes=0)(images=[make_image(100, 200, "JPEG", seed=1),
                                                    make_image(60, 90, "PNG", seed=2)])
        assert [c.split(" ")[0] for c in calls] == ["image[0]", "image[1]"]

    def test_to_dict_has_model_keys_and_dtypes(self, pre):
        d = pre(images=[make_image(56, 56, "PNG")]).to_dict()
        assert set(d) == {"pixel_values", "image_grid_thw"}
        assert d["pixel_values"].dtype == torch.float32 and d["image_grid_thw"].dtype == torch.long

    def test_bfloat16_output(self):
        data = make_image(56, 84, "PNG")
        ours = Qwen2VLPreprocessor("cpu", output_dtype=torch.bfloat16)(images=[data])
        ref = _hf_image(data)["pixel_values"]
        assert ours.pixel_values.dtype == torch.bfloat16
        torch.testing.assert_close(ours.pixel_values, ref.to(torch.bfloat16), rtol=0, atol=0)

    def test_uint8_output_is_transformers_without_rescale_or_normalize(self):
        """``output_dtype=torch.uint8``: what vLLM's mm_device_do_normalize asks transformers for."""
        data = make_image(333, 517, "JPEG")
        ours = Qwen2VLPreprocessor("cpu", output_dtype=torch.uint8)(images=[data], videos=[clip("h264", 12, 96, 128)])
        ref = _hf_image(data, do_rescale=False, do_normalize=False)["pixel_values"]
        assert ours.pixel_values.dtype == ref.dtype == torch.uint8
        assert torch.equal(ours.pixel_values, ref)
        frames = all_frames(clip("h264", 12, 96, 128))[ours.items[1].frame_indices]
        ref_video = _hf_video(frames, max_pixels=768 * 28 * 28, do_rescale=False, do_normalize=False)
        assert torch.equal(ours.pixel_values_videos, ref_video["pixel_values_videos"])


def _hf_video(frames: np.ndarray, max_pixels: int, min_pixels: int = 128 * 28 * 28, **kwargs):
    vp = Qwen2VLVideoProcessor(size={"shortest_edge": min_pixels, "longest_edge": int(max_pixels)})
    return vp(videos=[torch.from_numpy(frames).permute(0, 3, 1, 2)], return_tensors="pt",
              do_sample_frames=False, cap_pixels_per_frame=False, **kwargs)


class TestVideoParity:
    @pytest.mark.parametrize("codec,h,w,bframes", [
        ("h264", 96, 128, 2), ("hevc", 96, 128, 2), ("vp9", 96, 128, 0), ("av1", 96, 128, 0),
        ("mjpeg", 96, 128, 0), ("h264", 160, 90, 0),  # portrait
    ])
    def test_matches_transformers_video_processor_given_the_same_frames(self, pre, codec, h, w, bframes):
        data = clip(codec, 48, h, w, bframes=bframes)
        ours = pre(videos=[data])
        item = ours.items[0]
        # qwen-vl-utils rule: 48 frames at 24 fps, 2 fps -> 4 frames, linspace(0, 47, 4).round().
        assert item.frame_indices == [0, 16, 31, 47]
        ref = _hf_video(all_frames(data)[item.frame_indices], max_pixels=768 * 28 * 28)
        assert torch.equal(ours.video_grid_thw, ref["video_grid_thw"])
        torch.testing.assert_close(ours.pixel_values_videos, ref["pixel_values_videos"], rtol=0, atol=0)
        assert ours.second_per_grid_ts == pytest.approx([2 / (4 / 48 * 24)])
        assert item.decoded.backend == "pyav"  # its keyframe runs at once where cores are idle (same bits)

    def test_hf_rule_with_odd_frame_count_repeats_last_frame(self):
        data = clip("h264", 7, 64, 64, gop=4)
        ours = Qwen2VLPreprocessor("cpu", sampling="hf")(videos=[data])
        assert ours.items[0].frame_indices == list(range(7))
        ref = _hf_video(all_frames(data), max_pixels=768 * 28 * 28)
        assert ours.video_grid_thw.tolist() == ref["video_grid_thw"].tolist()
        assert ours.video_grid_thw[0, 0] == 4  # 7 frames -> 4 temporal pairs
        torch.testing.assert_close(ours.pixel_values_videos, ref["pixel_values_videos"], rtol=0, atol=0)

    def test_hf_rule_with_fps(self):
        data = clip("h264", 48, gop=12)
        ours = Qwen2VLPreprocessor("cpu", sampling="hf")(videos=[data], fps=1.0)
        from transformers.video_utils import VideoMetadata

        ref_idx = Qwen2VLVideoProcessor().sample_frames(VideoMetadata(total_num_frames=48, fps=24.0), fps=1.0)
        assert ours.items[0].frame_indices == ref_idx.tolist()

    def test_per_request_nframes_and_time_window(self, pre):
        data = clip("h264", 48, gop=12)
        assert pre(videos=[data], nframes=6).items[0].frame_indices == [0, 9, 19, 28, 38, 47]
        win = pre(videos=[data], video_start=0.5, video_end=1.5).items[0]
        # Frames 12..36 (1 s at 24 fps) -> 2 frames at 2 fps, raised to the 4-frame minimum.
        assert win.frame_indices == torch.linspace(12, 36, 4).round().long().tolist()

    def test_frames_array_input(self, pre):
        """Decoded frames are taken as already sampled (as qwen-vl-utils treats a list of frames)."""
        frames = all_frames(clip("h264", 15, 56, 56))
        ours = pre(videos=[frames])
        assert ours.items[0].frame_indices == list(range(15))
        ref = _hf_video(frames, max_pixels=768 * 28 * 28)
        assert ours.video_grid_thw.tolist() == ref["video_grid_thw"].tolist()
        torch.testing.assert_close(ours.pixel_values_videos, ref["pixel_values_videos"], rtol=0, atol=0)

    def test_matches_qwen_vl_utils_fetch_video_end_to_end(self, tmp_path, monkeypatch):
        qvu = pytest.importorskip("qwen_vl_utils.vision_process")
        pytest.importorskip("decord")
        data = make_video(60, 120, 160, gop=15, bframes=2, fps=30)
        path = tmp_path / "clip.mp4"
        path.write_bytes(data)
        monkeypatch.setattr(qvu, "FORCE_QWENVL_VIDEO_READER", "decord")
        video, sample_fps = qvu.fetch_video({"video": str(path)}, return_video_sample_fps=True)
        ref = Qwen2VLVideoProcessor()(videos=[video.round().to(torch.uint8)], return_tensors="pt",
                                      do_sample_frames=False, cap_pixels_per_frame=False)
        ours = Qwen2VLPreprocessor("cpu")(videos=[data])
        assert ours.video_grid_thw.tolist() == ref["video_grid_thw"].tolist()
        assert ours.items[0].sample_fps == pytest.approx(sample_fps)
        # decord converts YUV->RGB with its own FFmpeg build and settings: a few uint8 levels
        # (~0.015 each after normalization) may differ, so compare statistically.
        diff = (ours.pixel_values_videos - ref["pixel_values_videos"]).abs()
        assert diff.mean() < 0.05


class TestBadInputThroughPipeline:
    @pytest.mark.parametrize("videos,match", [
        ([b"\x00" * 500], "video\\[0\\]"),
        ([clip("h264", 48)[:2000]], "video\\[0\\]"),
    ], ids=["zeros", "truncated"])
    def test_bad_videos_raise_media_errors(self, pre, videos, match):
        with pytest.raises(MediaError, match=match):
            pre(videos=videos)

    def test_extreme_aspect_ratio_is_a_limit_error(self, pre):
        with pytest.raises(LimitExceeded, match="aspect ratio"):
            pre(images=[make_image(4, 1000, "PNG")])

    def test_second_item_named_in_error(self, pre):
        with pytest.raises(MediaError, match="image\\[1\\]"):
            pre(images=[make_image(30, 30, "PNG"), b"garbage bytes"])

    @pytest.mark.parametrize("device", ["tpu", "cuda:x", "CPU", ""])
    def test_unknown_device_rejected_at_construction(self, device):
        with pytest.raises(ValueError, match="device must be"):
            Qwen2VLPreprocessor(device)

    def test_unknown_option_rejected(self, pre):
        with pytest.raises(gpu_mm.InvalidRequest, match="unknown per-request"):
            pre(images=[make_image(30, 30, "PNG")], colour="blue")


def _truncated_jpeg() -> bytes:
    data = make_image(64, 96, "JPEG", seed=9)
    return data[: data.index(b"\xff\xda") + 40]  # header intact, scan cut short


class TestImageBatches:
    """Plain JPEGs of one call are decoded in batches (nvJPEG's batched decoder on CUDA); forced on here
    with ``image_batch`` so the grouping, ordering, errors and leases are checked on the CPU."""

    IMAGES = [make_image(100, 200, "JPEG", seed=1), make_image(60, 90, "PNG", seed=2),
              exif_jpeg(80, 50, 6, seed=3), make_image(40, 300, "JPEG", seed=4),
              make_image(70, 70, "JPEG", seed=5, mode="L"), make_image(90, 64, "JPEG", seed=6)]

    def test_same_features_as_one_by_one_in_order(self, pre):
        batched = Qwen2VLPreprocessor("cpu", image_batch=3)
        a, b = batched(images=self.IMAGES), pre(images=self.IMAGES)
        assert torch.equal(a.image_grid_thw, b.image_grid_thw)
        assert torch.equal(a.pixel_values, b.pixel_values)
        decoders = [it.decoder for it in a.items]
        assert decoders[0] == decoders[2] == decoders[3] == "cpu (libjpeg-turbo), batch of 3"
        assert "batch" not in decoders[1]  # the PNG goes alone
        assert decoders[4] == decoders[5] == "cpu (libjpeg-turbo), batch of 2"

    async def test_async_path_batches_too(self, pre):
        batched = Qwen2VLPreprocessor("cpu", image_batch=4)
        try:
            a = await batched.preprocess(images=self.IMAGES)
        finally:
            await batched.aclose()
        b = pre(images=self.IMAGES)
        assert torch.equal(a.pixel_values, b.pixel_values)
        assert batched.statistics().slots.completed == 3  # one job of 4 JPEGs, the PNG, one of 1 JPEG

    def test_corrupt_jpeg_in_a_batch_is_named(self):
        batched = Qwen2VLPreprocessor("cpu", image_batch=8)
        images = [self.IMAGES[0], self.IMAGES[3], _truncated_jpeg(), self.IMAGES[5]]
        with pytest.raises(gpu_mm.DecodeError, match=r"^image\[2\]"):
            batched(images=images)

    def test_batches_respect_the_memory_budget(self):
        feats = Qwen2VLPreprocessor("cpu", image_batch=8, cache_bytes=0)(images=self.IMAGES)
        jpegs = [i for i, data in enumerate(self.IMAGES) if data.startswith(b"\xff\xd8")]
        sizes = [it.decoded.batch_size for it in feats.items]
        assert sizes == [len(jpegs) if i in jpegs else 1 for i in range(len(self.IMAGES))]  # one job of all JPEGs
        need = [feats.items[i].working_bytes for i in jpegs]
        budget = max(need) + 1  # room for the largest JPEG alone, never for two
        assert 2 * min(need) > budget
        feats = Qwen2VLPreprocessor("cpu", image_batch=8, cache_bytes=0, memory_budget_bytes=budget)(images=self.IMAGES)
        assert [it.decoded.batch_size for it in feats.items] == [1] * len(self.IMAGES)

    def test_failed_batch_returns_its_pool_lease(self):
        from gpu_mm.handoff import FeaturePool

        with FeaturePool(max_blocks=1) as pool:
            batched = Qwen2VLPreprocessor("cpu", image_batch=4, output_pool=pool)

            async def run():
                try:
                    with pytest.raises(gpu_mm.DecodeError):
                        await batched.preprocess(images=[self.IMAGES[0], _truncated_jpeg(), self.IMAGES[1]])
                finally:
                    await batched.aclose()

            asyncio.run(run())
            assert pool.statistics().leased == 0

    SAME = [make_image(120, 160, "JPEG", seed=s) for s in range(10, 15)]

    @staticmethod
    def _resizes(monkeypatch) -> list[tuple[int, ...]]:
        from gpu_mm import ops

        shapes: list[tuple[int, ...]] = []
        resize = ops.resize

        def spy(frames, size, interpolation="bicubic"):
            shapes.append(tuple(frames.shape))
            return resize(frames, size, interpolation)

        monkeypatch.setattr(ops, "resize", spy)
        return shapes

    def test_same_size_images_are_resized_and_normalized_together(self, pre, monkeypatch):
        """Same-size JPEGs of a batch go through one resize and one normalize+patchify: the same bits as one
        by one, whether they are all of the call's images (their rows become the call's without a copy) or
        mixed with others (rows joined in the call's order)."""
        shapes = self._resizes(monkeypatch)
        batched = Qwen2VLPreprocessor("cpu", image_batch=8, cache_bytes=0)
        alone = batched(images=self.SAME)
        assert shapes == [(5, 3, 120, 160)]
        assert torch.equal(alone.pixel_values, pre(images=self.SAME).pixel_values)
        assert [it.decoded.batch_size for it in alone.items] == [5] * 5
        shapes.clear()
        mixed = [self.SAME[0], self.IMAGES[5], *self.SAME[1:3], self.IMAGES[1], self.SAME[3]]
        a = batched(images=mixed)
        assert sorted(shapes) == sorted([(4, 3, 120, 160), (1, 3, 90, 64), (1, 3, 60, 90)])
        b = pre(images=mixed)
        assert torch.equal(a.pixel_values, b.pixel_values) and torch.equal(a.image_grid_thw, b.image_grid_thw)

    def test_same_size_images_cached_each_in_storage_of_its_own(self, pre):
        """With the cache on, each item's rows are its own tensor (made on the slot's thread), so an entry holds
        exactly the bytes it counts; hits give the same features."""
        ref = pre(images=self.SAME).pixel_values
        batched = Qwen2VLPreprocessor("cpu", image_batch=8)
        assert torch.equal(batched(images=self.SAME).pixel_values, ref)
        entries = list(batched.cache._entries.values())
        assert len(entries) == 5 and all(e.rows.untyped_storage().nbytes() == e.nbytes for e in entries)
        again = batched(images=self.SAME)
        assert [it.cache for it in again.items] == ["hit"] * 5 and torch.equal(again.pixel_values, ref)

    def test_same_size_images_into_a_pool_block_and_the_cache(self, pre):
        from gpu_mm.handoff import FeaturePool

        ref = pre(images=self.SAME).pixel_values
        with FeaturePool(max_blocks=2) as pool:
            batched = Qwen2VLPreprocessor("cpu", image_batch=8, output_pool=pool)
            feats = batched(images=self.SAME)
            assert torch.equal(feats.pixel_values, ref)
            pool.release(feats.handle)
            stats = batched.cache.statistics()
            assert stats.entries == 5 and stats.bytes == ref.numel() * ref.element_size()
            again = batched(images=self.SAME[::-1])  # every item a hit, in another order
            assert [it.cache for it in again.items] == ["hit"] * 5
            rows = ref.chunk(5)
            assert torch.equal(again.pixel_values, torch.cat(rows[::-1]))
            pool.release(again.handle)

    def test_whole_image_families_batch_too(self, monkeypatch):
        """Gemma 3 (whole normalized images): same-size images resized together, as one by one."""
        from gpu_mm import Gemma3Preprocessor

        one = Gemma3Preprocessor("cpu", cache_bytes=0)(images=self.SAME[:3])
        shapes = self._resizes(monkeypatch)
        together = Gemma3Preprocessor("cpu", image_batch=4, cache_bytes=0)(images=self.SAME[:3])
        assert shapes == [(3, 3, 120, 160)]
        assert torch.equal(together.pixel_values, one.pixel_values)
        shapes.clear()
        crops = Gemma3Preprocessor("cpu", image_batch=4, cache_bytes=0)(
            images=[make_image(300, 900, "JPEG", seed=s) for s in (1, 2)], do_pan_and_scan=True)
        assert all(s[0] == 1 for s in shapes) and crops.pixel_values.shape[0] == 8  # views: one image at a time

    def test_runs_are_cut_to_what_the_batch_reserved(self):
        from types import SimpleNamespace

        from gpu_mm.models.base import ImageView
        from gpu_mm.pipeline.execute import same_size_runs

        def item(target, views=None):
            return SimpleNamespace(plan=SimpleNamespace(kind="image", target=target, presize=None, views=views))

        tiled = (ImageView((28, 28), tile=(0, 0, 14, 14)),)
        group = [item((28, 28)), item((28, 28)), item((56, 56)), item((28, 28)), item((28, 28), views=tiled)]
        images = [torch.empty(3, 30, 30)] * 5
        assert same_size_runs(group, images, lambda it: (100, 10)) == [[0, 1, 3], [2], [4]]
        # Five items reserved 500 spare bytes in all: three holding 240 each cannot be resized together.
        assert same_size_runs(group, images, lambda it: (100, 300)) == [[0], [1], [3], [2], [4]]
        assert same_size_runs(group, images, lambda it: (100, 240)) == [[0, 1], [3], [2], [4]]

    def test_image_batch_must_be_positive(self):
        with pytest.raises(ValueError, match="image_batch"):
            Qwen2VLPreprocessor("cpu", image_batch=0)


class TestAsync:
    async def test_async_equals_sync_and_runs_on_slot_threads(self):
        pre = Qwen2VLPreprocessor("cpu", num_slots=2, cache_bytes=0)  # computed both times
        img, vid = make_image(200, 300, "JPEG"), clip("h264", 48)
        sync = pre(images=[img], videos=[vid])
        feats = await pre.preprocess(images=[img], videos=[vid])
        assert torch.equal(sync.pixel_values, feats.pixel_values)
        assert torch.equal(sync.pixel_values_videos, feats.pixel_values_videos)
        assert set(feats.items[0].timings) >= {"load", "decode", "resize", "normalize_patchify"}
        await pre.aclose()

    async def test_bad_item_fails_fast_and_frees_slots(self):
        pre = Qwen2VLPreprocessor("cpu", num_slots=1)
        with pytest.raises(MediaError, match="video\\[0\\]"):
            await pre.preprocess(videos=[b"not a video"], deadline=time.monotonic() + 30)
        with pytest.raises(MediaError):
            await pre.preprocess(images=[make_image(10, 10, "PNG"), b"\xff\xd8\xff" + b"\x00" * 50])
        stats = pre.statistics()
        assert stats.slots is not None and stats.slots.busy == 0 and stats.computations_in_flight == 0
        ok = await pre.preprocess(images=[make_image(56, 56, "PNG")])
        assert ok.image_grid_thw.tolist() == [[1, 4, 4]]
        await pre.aclose()

    async def test_deadline(self):
        pre = Qwen2VLPreprocessor("cpu", num_slots=1)
        with pytest.raises(ProcessingTimeout):
            await pre.preprocess(videos=[clip("h264", 48)], deadline=time.monotonic() - 1)
        await pre.aclose()

    async def test_inside_async_mm_data_processor_with_sglang_contract(self):
        pre = Qwen2VLPreprocessor("cpu", num_slots=2)
        wrapper = gpu_mm.AsyncMMDataProcessor(pre, max_concurrent_calls=4, timeout_s=60)
        img = make_image(100, 100, "JPEG")
        outs = await asyncio.gather(*(
            wrapper.process(image_data=[img], input_text_or_ids="<image>", request_obj=None,
                            video_data=[clip("vp9", 20)]) for _ in range(4)))
        for out in outs:
            assert out["image_grid_thw"].tolist() == [[1, 8, 8]]  # 100 px rounds to 112
            assert out["pixel_values_videos"].shape[1] == 1176
            assert out["input_text"] == "<image>"
        s = wrapper.statistics()
        assert s.completed == 4 and s.in_flight == 0
        await wrapper.aclose()
        await pre.aclose()


def test_pinned_output_needs_cuda():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(ValueError, match="pinned"):
        Qwen2VLPreprocessor("cpu", output="pinned")


class TestFastJpegMode:
    """Opt-in: a JPEG whose target is at most half its size is decoded at 1/2, 1/4 or 1/8 scale by libjpeg's
    DCT scaling. Against the exact path, after normalization (one level of 255 is 0.015 at CLIP's smallest
    std), measured on the synthetic pattern at five sizes: mean 0.011-0.020, 99th percentile 0.06-0.21, max
    0.11-0.75 (at sharp edges). Allowed here: mean 0.03 (2 levels) and 99th percentile 0.25 (17 levels).
    Why it differs at all: a scaled IDCT is a different low-pass filter than decoding at full size and
    letting the bicubic resize antialias."""

    @pytest.mark.parametrize(("size", "max_pixels", "scale"), [
        ((2000, 2700), None, "1/2"),   # default bounds: an 868x1176 target, under half of 2000x2700
        ((2000, 2700), 150_000, "1/4"),
    ])
    def test_within_its_tolerance_of_the_exact_path(self, size, max_pixels, scale):
        jpeg = make_image(*size, "JPEG")
        kw = {} if max_pixels is None else {"max_pixels": max_pixels}
        exact = Qwen2VLPreprocessor("cpu", cache_bytes=0)(images=[jpeg], **kw)
        fast = Qwen2VLPreprocessor("cpu", cache_bytes=0, fast_jpeg=True)(images=[jpeg], **kw)
        assert fast.items[0].decoder == f"cpu-jpeg-{scale}" and exact.items[0].decoder.startswith("cpu (")
        assert torch.equal(fast.image_grid_thw, exact.image_grid_thw)
        diff = (fast.pixel_values - exact.pixel_values).abs().flatten()
        assert diff.mean() <= 0.03 and torch.quantile(diff[::7], 0.99) <= 0.25

    def test_only_when_it_pays_and_only_for_jpeg(self):
        pre = Qwen2VLPreprocessor("cpu", cache_bytes=0, fast_jpeg=True)
        small = pre(images=[make_image(1080, 1920, "JPEG")])  # target 728x1316: more than half of 1080x1920
        png = pre(images=[make_image(2000, 2700, "PNG")])
        assert small.items[0].decoder.startswith("cpu (") and png.items[0].decoder.startswith("cpu (")
        default = Qwen2VLPreprocessor("cpu", cache_bytes=0)(images=[make_image(2000, 2700, "JPEG")])
        assert default.items[0].decoder.startswith("cpu (")  # off unless asked for

    def test_exif_orientation_kept(self):
        from PIL import Image

        img = Image.open(io.BytesIO(make_image(1600, 2400, "JPEG")))
        exif = img.getexif()
        exif[0x0112] = 6  # shown rotated 90 degrees clockwise
        buf = io.BytesIO()
        img.save(buf, "JPEG", exif=exif.tobytes())
        exact = Qwen2VLPreprocessor("cpu", cache_bytes=0)(images=[buf.getvalue()], max_pixels=300_000)
        fast = Qwen2VLPreprocessor("cpu", cache_bytes=0, fast_jpeg=True)(images=[buf.getvalue()], max_pixels=300_000)
        assert fast.items[0].decoder == "cpu-jpeg-1/2" and fast.items[0].source_size == (2400, 1600)
        assert torch.equal(fast.image_grid_thw, exact.image_grid_thw)
        assert (fast.pixel_values - exact.pixel_values).abs().mean() <= 0.03


class TestImageDecoderChoice:
    """``image_decoder``: nvJPEG on CUDA unless the caller asks for libjpeg-turbo (transformers' decode); the
    CUDA side of it runs in tests/test_cuda_path.py."""

    @pytest.mark.parametrize("name,device,chosen", [
        ("auto", "cpu", "cpu"), ("cpu", "cpu", "cpu"), ("auto", "cuda", "nvjpeg"), ("auto", "cuda:1", "nvjpeg"),
        ("nvjpeg", "cuda", "nvjpeg"), ("cpu", "cuda", "cpu"),
    ])
    def test_choice(self, name, device, chosen):
        from gpu_mm.pipeline import choose_image_decoder

        assert choose_image_decoder(name, device) == chosen

    @pytest.mark.parametrize("name,device,message", [
        ("nvjpeg", "cpu", "needs a CUDA device"),
        ("pillow", "cpu", r"must be one of \('auto', 'nvjpeg', 'nvimgcodec', 'cpu'\)"),
    ])
    def test_refused(self, name, device, message):
        from gpu_mm.pipeline import choose_image_decoder

        with pytest.raises(ValueError, match=message):
            choose_image_decoder(name, device)
        with pytest.raises(ValueError, match=message):
            Qwen2VLPreprocessor(device, image_decoder=name)

    def test_cpu_default_unchanged_and_keyed_in_the_cache(self):
        pre = Qwen2VLPreprocessor("cpu")
        assert pre.image_decoder == "cpu" and pre._image_batch == 1
        assert pre._cache_identity[-1] == "cpu"  # the decoder is part of what keys cached features
