"""The feature cache and single-flight: repeated content is computed once, whatever the timing of the
requests that ask for it, and the cache never holds more than its byte budget.

Decoder calls are counted by wrapping PyAV's frame iterator (every video goes through it on the CPU)."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
import torch

from gpu_mm import DecodeError, FeaturePool, ProcessingTimeout
from gpu_mm.cache import FeatureCache, content_key
from gpu_mm.concurrency import SpareThreads
from gpu_mm.media.video import PyAVDecoder
from gpu_mm.pipeline.families import Qwen2VLPreprocessor
from gpu_mm.pipeline.plan import Planner

from media_helpers import clip, make_image


@pytest.fixture()
def decodes(monkeypatch):
    """Count (and optionally hold) video decodes: ``decodes.calls``, ``decodes.gate`` (set: proceed)."""
    calls: list[str] = []
    gate = threading.Event()
    gate.set()
    original = PyAVDecoder.iter_frames_at

    def counted(self, src, info, indices):
        calls.append(src.item)
        assert gate.wait(10), "test gate never opened"
        yield from original(self, src, info, indices)

    monkeypatch.setattr(PyAVDecoder, "iter_frames_at", counted)
    # One decoder per item, so that each decode counts once (a video's keyframe runs would each count).
    monkeypatch.setattr(SpareThreads, "take", lambda self, wanted: 0)

    class Decodes:
        pass

    d = Decodes()
    d.calls, d.gate = calls, gate
    return d


def _video(seed: int = 0) -> bytes:
    return clip("h264", 24 + seed, h=64, w=96)


class TestKeys:
    def test_same_content_and_options_same_key_else_different(self):
        data = make_image(20, 20, "PNG")
        k = content_key(data, "image", ("cfg",), [("fps", 1.0)])
        assert k == content_key(bytes(data), "image", ("cfg",), [("fps", 1.0)]) and len(k) == 32
        assert k != content_key(data, "video", ("cfg",), [("fps", 1.0)])
        assert k != content_key(data, "image", ("cfg",), [("fps", 2.0)])
        assert k != content_key(data + b"\x00", "image", ("cfg",), [("fps", 1.0)])

    def test_arrays_key_their_dtype_and_shape_too(self):
        a = torch.zeros(4, 6, dtype=torch.uint8)
        assert content_key(a) == content_key(a.numpy())
        assert content_key(a) != content_key(a.reshape(6, 4)) != content_key(a.to(torch.int8))


class TestHitsAndMisses:
    def test_repeat_is_a_hit_bit_identical_to_the_miss(self, decodes):
        pre = Qwen2VLPreprocessor("cpu")
        img, vid = make_image(90, 120, "JPEG"), _video()
        first = pre(images=[img], videos=[vid])
        again = pre(images=[img], videos=[vid])
        assert [r.cache for r in first.items] == ["miss", "miss"]
        assert [r.cache for r in again.items] == ["hit", "hit"] and len(decodes.calls) == 1
        assert torch.equal(first.pixel_values, again.pixel_values)
        assert torch.equal(first.pixel_values_videos, again.pixel_values_videos)
        assert again.items[1].frame_indices == first.items[1].frame_indices
        assert again.second_per_grid_ts == first.second_per_grid_ts
        s = pre.cache.statistics()
        assert (s.hits, s.misses, s.entries) == (2, 2, 2) and s.hash in ("blake3", "sha256")

    @pytest.mark.parametrize("options", [{"fps": 1.0}, {"nframes": 6}, {"video_start": 0.2}, {"max_pixels": 50_000},
                                         {"min_pixels": 200_000}])
    def test_any_option_change_misses(self, decodes, options):
        pre = Qwen2VLPreprocessor("cpu")
        vid = _video()
        pre(videos=[vid])
        changed = pre(videos=[vid], **options)
        assert changed.items[0].cache == "miss" and len(decodes.calls) == 2

    def test_a_request_computes_only_what_it_has_not_seen(self):
        pre = Qwen2VLPreprocessor("cpu")
        a, b, c = (make_image(60 + 8 * k, 80, "PNG", seed=k) for k in range(3))
        pre(images=[a, b])
        feats = pre(images=[a, c, b])
        assert [r.cache for r in feats.items] == ["hit", "miss", "hit"]
        ref = Qwen2VLPreprocessor("cpu", cache_bytes=0)(images=[a, c, b])
        assert torch.equal(feats.pixel_values, ref.pixel_values)

    def test_off_with_zero_bytes(self, decodes):
        pre = Qwen2VLPreprocessor("cpu", cache_bytes=0)
        vid = _video()
        feats = [pre(videos=[vid]) for _ in range(2)]
        assert [f.items[0].cache for f in feats] == [None, None] and len(decodes.calls) == 2

    def test_copy_on_hit_keeps_the_cache_safe_from_writers(self):
        pre = Qwen2VLPreprocessor("cpu", copy_on_hit=True)
        img = make_image(56, 56, "PNG")
        first = pre(images=[img]).pixel_values.clone()
        pre(images=[img]).pixel_values.fill_(0)  # a caller that writes into its features
        assert torch.equal(pre(images=[img]).pixel_values, first)

    def test_hit_hands_off_into_a_pool_block_without_decoding(self, decodes):
        vid = _video(3)
        with FeaturePool(max_blocks=2) as pool:
            pre = Qwen2VLPreprocessor("cpu", output_pool=pool)
            first = pre(videos=[vid])
            rows = first.pixel_values_videos.clone()
            pool.release(first.handle)
            again = pre(videos=[vid])
            assert again.items[0].cache == "hit" and len(decodes.calls) == 1
            assert torch.equal(again.pixel_values_videos, rows)
            assert again.video_grid_thw.tolist() == first.video_grid_thw.tolist()
            pool.release(again.handle)


    @pytest.mark.parametrize("workers", ["threads", "processes"])
    async def test_rows_in_a_pool_block_are_copied_for_the_cache_by_the_slot_job(self, workers, monkeypatch):
        """An item whose rows go into a pool block (which its caller hands back for reuse) is cached as a copy of
        its own made by its slot job, on the slot's thread: the cache's ``put`` on the caller's loop copies
        nothing."""
        from gpu_mm.pipeline.routing import Router

        kept: list[bool] = []
        keep = Router.keep

        def spy(self, item, out):
            kept.append(item.kept is not None and item.kept.data_ptr() != item.out.data_ptr())
            return keep(self, item, out)

        monkeypatch.setattr(Router, "keep", spy)
        images = [make_image(56, 84, "PNG", seed=1), make_image(84, 56, "JPEG", seed=2)]
        with FeaturePool(max_blocks=2) as pool:
            pre = Qwen2VLPreprocessor("cpu", output_pool=pool, workers=workers, num_slots=1)
            try:
                first = await pre.preprocess(images=images)
                rows = first.pixel_values.clone()
                pool.release(first.handle)
                again = await pre.preprocess(images=images)
                assert [it.cache for it in again.items] == ["hit", "hit"]
                assert torch.equal(again.pixel_values, rows)
                pool.release(again.handle)
            finally:
                await pre.aclose()
        assert kept == [True, True]


class TestBudget:
    def test_lru_eviction_by_bytes(self):
        cache = FeatureCache(max_bytes=3000)
        rows = {k: torch.zeros(250, dtype=torch.float32) for k in "abcd"}  # 1000 bytes each
        for k in "abc":
            cache.put(k.encode(), rows[k], k)
        assert cache.get(b"a") is not None  # a is now the most recently used
        cache.put(b"d", rows["d"], "d")  # evicts b, the least recently used
        assert cache.get(b"b") is None and cache.get(b"a") is not None and cache.get(b"c") is not None
        s = cache.statistics()
        assert s.bytes == 3000 and s.entries == 3 and s.evictions == 1
        cache.put(b"huge", torch.zeros(1000), "x")  # larger than the whole cache: not kept
        assert cache.get(b"huge") is None and cache.statistics().bytes == 3000

    def test_a_slice_of_a_larger_tensor_is_kept_as_its_own_copy(self):
        """Rows resized and normalized with other images are slices of one tensor: kept as they are, the whole
        batch would stay alive behind an entry that counts one item's bytes."""
        cache = FeatureCache(max_bytes=10_000)
        batch = torch.arange(1000, dtype=torch.float32).reshape(4, 250)
        cache.put(b"a", batch[1], "a")
        entry = cache.get(b"a")
        assert entry is not None and torch.equal(entry.rows, batch[1])
        assert entry.rows.untyped_storage().nbytes() == 1000 == cache.statistics().bytes
        whole = torch.zeros(250)
        cache.put(b"b", whole, "b")  # a tensor of its own is kept without a copy
        assert cache.get(b"b").rows is whole

    def test_never_grows_past_its_budget_over_a_long_run(self):
        pre = Qwen2VLPreprocessor("cpu", cache_bytes=2 * 2**20)
        held = []
        for k in range(40):
            pre(images=[make_image(56 + 28 * (k % 5), 84, "PNG", seed=k)])
            held.append(pre.cache.statistics().bytes)
        assert max(held) <= 2 * 2**20 and pre.cache.statistics().evictions > 0


class TestSingleFlight:
    async def test_concurrent_identical_requests_compute_once(self, decodes):
        pre = Qwen2VLPreprocessor("cpu", num_slots=2)
        vid = _video(5)
        decodes.gate.clear()
        calls = [asyncio.ensure_future(pre.preprocess(videos=[vid])) for _ in range(10)]
        await asyncio.sleep(0.2)
        decodes.gate.set()
        feats = await asyncio.gather(*calls)
        assert len(decodes.calls) == 1
        assert sorted(f.items[0].cache for f in feats) == ["coalesced"] * 9 + ["miss"]
        assert all(torch.equal(f.pixel_values_videos, feats[0].pixel_values_videos) for f in feats)
        stats = pre.statistics()
        assert stats.cache.coalesced == 9 and stats.computations_in_flight == 0
        await pre.aclose()

    async def test_a_failing_computation_fails_every_waiter_naming_its_own_item(self, monkeypatch):
        tries = []
        go = threading.Event()

        def broken(self, src, info, indices):
            tries.append(1)
            assert go.wait(10)
            raise DecodeError(src.item, "stream corrupt at frame 3")

        monkeypatch.setattr(PyAVDecoder, "iter_frames_at", broken)
        pre = Qwen2VLPreprocessor("cpu")
        vid = _video(6)
        calls = [asyncio.ensure_future(pre.preprocess(videos=[vid])),
                 asyncio.ensure_future(pre.preprocess(images=[make_image(30, 30, "PNG")], videos=[vid]))]
        await asyncio.sleep(0.3)  # both have planned; the second joined the first's computation
        go.set()
        results = await asyncio.gather(*calls, return_exceptions=True)
        assert all(isinstance(r, DecodeError) and "stream corrupt" in str(r) for r in results)
        assert str(results[0]).startswith("video[0]") and str(results[1]).startswith("video[0]")
        assert len(tries) == 1 and pre.cache.statistics().entries == 1  # the image; failures are not kept
        await pre.aclose()

    async def test_the_first_callers_timeout_does_not_cancel_the_work_others_wait_for(self, decodes):
        pre = Qwen2VLPreprocessor("cpu")
        vid = _video(7)
        decodes.gate.clear()
        leader = asyncio.ensure_future(pre.preprocess(videos=[vid], deadline=time.monotonic() + 0.3))
        await asyncio.sleep(0.1)  # the leader's item is running (held at the gate)
        follower = asyncio.ensure_future(pre.preprocess(videos=[vid], deadline=time.monotonic() + 30))
        with pytest.raises(ProcessingTimeout):
            await leader
        decodes.gate.set()
        feats = await follower
        assert feats.items[0].cache == "coalesced" and len(decodes.calls) == 1
        assert pre(videos=[vid]).items[0].cache == "hit"  # the abandoned leader's work filled the cache
        await pre.aclose()

    async def test_each_waiter_keeps_its_own_deadline_and_can_be_cancelled(self, decodes):
        pre = Qwen2VLPreprocessor("cpu")
        vid = _video(8)
        decodes.gate.clear()
        leader = asyncio.ensure_future(pre.preprocess(videos=[vid]))
        await asyncio.sleep(0.1)
        impatient = asyncio.ensure_future(pre.preprocess(videos=[vid], deadline=time.monotonic() + 0.1))
        cancelled = asyncio.ensure_future(pre.preprocess(videos=[vid]))
        with pytest.raises(ProcessingTimeout, match="same content"):
            await impatient
        cancelled.cancel()
        with pytest.raises(asyncio.CancelledError):
            await cancelled
        decodes.gate.set()
        assert (await leader).items[0].cache == "miss" and len(decodes.calls) == 1
        await pre.aclose()

    async def test_hashing_runs_off_the_event_loop(self, monkeypatch):
        import gpu_mm.pipeline.plan as model

        threads = []
        original = model.content_key
        monkeypatch.setattr(model, "content_key", lambda *a: threads.append(threading.current_thread().name)
                            or original(*a))
        pre = Qwen2VLPreprocessor("cpu")
        await pre.preprocess(images=[make_image(30, 30, "PNG")])
        assert threads and threading.current_thread().name not in threads
        await pre.aclose()


async def test_a_call_cancelled_before_its_slot_jobs_begin_leaves_nothing_behind(monkeypatch):
    """The caller is cancelled in the loop turn that creates its slot jobs, so they never begin: the flights
    they owned are resolved and the output block goes back, so the same content is computed next time
    instead of waiting for a computation that will never run."""
    pool = FeaturePool(max_blocks=1)
    pre = Qwen2VLPreprocessor("cpu", output_pool=pool)
    vid = _video(11)
    groups = Planner.groups
    outer: list[asyncio.Task] = []

    def groups_then_cancel(self, plans):
        asyncio.get_running_loop().call_soon(outer[0].cancel)  # runs before the new tasks' first steps
        return groups(self, plans)

    monkeypatch.setattr(Planner, "groups", groups_then_cancel)
    outer.append(asyncio.ensure_future(pre.preprocess(videos=[vid])))
    with pytest.raises(asyncio.CancelledError):
        await outer[0]
    await asyncio.sleep(0)
    assert pre.statistics().computations_in_flight == 0 and pool.statistics().leased == 0
    monkeypatch.setattr(Planner, "groups", groups)
    feats = await asyncio.wait_for(pre.preprocess(videos=[vid]), 30)
    assert feats.items[0].cache == "miss"
    pool.release(feats.handle)
    await pre.aclose()
    pool.close()
