"""Feature hand-off between processes: shared memory here (CUDA IPC under the ``cuda`` marker).
Tensors arrive intact without pickling their pixels, blocks are reused after release, and nothing
grows over many hand-offs."""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing as mp
import os

import pytest
import torch

from gpu_mm import Overloaded
from gpu_mm.handoff import FeaturePool, FeatureReceiver


def _receiver(conn) -> None:
    rx = FeatureReceiver()
    while True:
        handle = conn.recv()
        if handle is None:
            break
        t = rx.open(handle)
        # Reply with checksums computed on the mapped memory, then "release" the handle.
        conn.send(({k: float(v.double().sum()) for k, v in t.items()}, handle.lease_id, rx.num_mapped))
        del t
    rx.close()
    conn.close()


def _features(i: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(i)
    n = 100 + 37 * (i % 5)
    return {"pixel_values": torch.randn(n, 1176, generator=g),
            "image_grid_thw": torch.tensor([[1, 10, n // 10]], dtype=torch.long)}


@pytest.mark.slow
def test_cross_process_handoff_reuses_blocks_and_does_not_grow():
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_receiver, args=(child,), daemon=True)
    proc.start()
    pool = FeaturePool(max_blocks=3)
    try:
        for i in range(60):
            feats = _features(i)
            handle = pool.put(feats)
            assert len(__import__("pickle").dumps(handle)) < 2048  # the pixels do not travel
            parent.send(handle)
            sums, lease_id, mapped = parent.recv()
            assert sums["pixel_values"] == pytest.approx(float(feats["pixel_values"].double().sum()))
            assert sums["image_grid_thw"] == float(feats["image_grid_thw"].sum())
            assert mapped <= 3
            pool.release(lease_id)
        s = pool.statistics()
        assert s.blocks <= 3 and s.leased == 0
        assert s.reuses >= 55  # every later hand-off reused a block
        parent.send(None)
        proc.join(20)
        assert proc.exitcode == 0
    finally:
        pool.close()
        if proc.is_alive():
            proc.kill()


def test_bounded_pool_raises_overloaded_and_release_frees():
    with FeaturePool(max_blocks=2) as pool:
        a = pool.put({"x": torch.zeros(10)})
        b = pool.put({"x": torch.zeros(10)})
        with pytest.raises(Overloaded):
            pool.put({"x": torch.zeros(10)})
        pool.release(a)
        c = pool.put({"x": torch.ones(10)})
        assert c.block_id == a.block_id
        pool.release(b)
        pool.release(c)
        with pytest.raises(KeyError):
            pool.release(c)


def test_lease_lets_features_be_made_in_place_and_larger_blocks_replace_small_ones():
    with FeaturePool(max_blocks=1, min_block_bytes=1024) as pool:
        lease = pool.lease({"pv": ((4, 8), torch.float32)})
        lease.tensors["pv"].fill_(3.0)
        rx = FeatureReceiver()
        assert torch.equal(rx.open(lease.handle)["pv"], torch.full((4, 8), 3.0))
        pool.release(lease.handle)
        big = pool.put({"pv": torch.arange(100_000, dtype=torch.float32)})
        assert torch.equal(rx.open(big)["pv"], torch.arange(100_000, dtype=torch.float32))
        assert pool.statistics().blocks == 1 and pool.statistics().allocations == 2
        pool.release(big)
        rx.close()


def test_close_unlinks_shared_memory():
    pool = FeaturePool(max_blocks=2)
    h = pool.put({"x": torch.zeros(1000)})
    path = f"/dev/shm/{h.block_ref}"
    assert os.path.exists(path)
    pool.close()
    assert not os.path.exists(path)


@pytest.mark.cuda
def test_cuda_ipc_handoff_across_processes():
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_receiver, args=(child,), daemon=True)
    proc.start()
    with FeaturePool(max_blocks=2, device="cuda") as pool:
        before = torch.cuda.memory_allocated()
        for i in range(20):
            feats = {k: v.cuda() for k, v in _features(i).items()}
            handle = pool.put(feats)
            parent.send(handle)
            sums, lease_id, _ = parent.recv()
            assert sums["pixel_values"] == pytest.approx(float(feats["pixel_values"].double().sum()), rel=1e-6)
            pool.release(lease_id)
            del feats
        assert pool.statistics().blocks <= 2
        assert torch.cuda.memory_allocated() <= before + pool.statistics().bytes_reserved
        parent.send(None)
        proc.join(30)


class TestPreprocessorIntoPool:
    """Features made straight into a shared block: same values, a handle to send, leases never leak."""

    def test_features_written_in_place_equal_the_normal_path(self):
        from gpu_mm.pipeline.families import Qwen2VLPreprocessor

        from media_helpers import clip, make_image

        images, videos = [make_image(100, 150, "JPEG"), make_image(64, 64, "PNG")], [clip("h264", 48)]
        ref = Qwen2VLPreprocessor("cpu")(images=images, videos=videos)
        with FeaturePool(max_blocks=2) as pool:
            pre = Qwen2VLPreprocessor("cpu", output_pool=pool)
            for _ in range(5):
                feats = pre(images=images, videos=videos)
                got = FeatureReceiver().open(feats.handle)
                for key in ("pixel_values", "image_grid_thw", "pixel_values_videos", "video_grid_thw"):
                    assert torch.equal(got[key], getattr(ref, key)), key
                    assert torch.equal(getattr(feats, key), getattr(ref, key)), key
                pool.release(feats.handle)
            s = pool.statistics()
            assert s.leased == 0 and s.blocks == 1 and s.reuses == 4

    def test_failed_call_returns_its_lease(self):
        from gpu_mm import MediaError
        from gpu_mm.pipeline.families import Qwen2VLPreprocessor

        from media_helpers import make_image

        with FeaturePool(max_blocks=1) as pool:
            pre = Qwen2VLPreprocessor("cpu", output_pool=pool)
            with pytest.raises(MediaError):
                pre(images=[make_image(64, 64, "PNG"), b"\xff\xd8\xff" + b"\x00" * 64])
            assert pool.statistics().leased == 0

    async def test_timed_out_call_keeps_its_lease_until_the_work_ends(self):
        import threading
        import time

        from gpu_mm import ProcessingTimeout
        from gpu_mm.media.video import PyAVDecoder, register_video_decoder
        from gpu_mm.pipeline.families import Qwen2VLPreprocessor

        from media_helpers import clip

        gate = threading.Event()

        class Blocking(PyAVDecoder):
            name = "blocking-test"

            def get_frames_at(self, src, info, indices):
                assert gate.wait(10), "test gate never opened"
                return super().get_frames_at(src, info, indices)

            def iter_frames_at(self, src, info, indices):
                assert gate.wait(10), "test gate never opened"
                yield from super().iter_frames_at(src, info, indices)

        register_video_decoder("blocking-test", Blocking)
        with FeaturePool(max_blocks=2) as pool, _registered("blocking-test"):
            pre = Qwen2VLPreprocessor("cpu", output_pool=pool, video_decoder="blocking-test")
            with pytest.raises(ProcessingTimeout):
                await pre.preprocess(videos=[clip("h264", 48)], deadline=time.monotonic() + 0.05)
            # The caller has gone, but the item's work may still write into the block: it stays leased.
            assert pool.statistics().leased == 1
            gate.set()
            await pre.aclose()  # waits for the abandoned work to end
            assert pool.statistics().leased == 0


class TestNothingHeavyOnTheLoop:
    async def test_lease_and_join_run_off_the_event_loop(self, monkeypatch):
        import threading

        from gpu_mm.pipeline.families import Qwen2VLPreprocessor

        from media_helpers import make_image

        threads: dict[str, list[str]] = {"lease": [], "assemble": []}
        lease = FeaturePool.lease
        monkeypatch.setattr(FeaturePool, "lease",
                            lambda self, *a, **k: threads["lease"].append(threading.current_thread().name)
                            or lease(self, *a, **k))
        from gpu_mm.pipeline import output

        assemble = output.assemble

        def recorded(call, *args):
            if call.lease is None:  # with a lease, assembling only attaches the block's tensors: bookkeeping
                threads["assemble"].append(threading.current_thread().name)
            return assemble(call, *args)

        monkeypatch.setattr(output, "assemble", recorded)
        images = [make_image(56, 56, "PNG"), make_image(84, 56, "PNG")]
        with FeaturePool(max_blocks=2) as pool:
            pre = Qwen2VLPreprocessor("cpu", output_pool=pool)
            feats = await pre.preprocess(images=images)
            assert feats.image_grid_thw.tolist() == [[1, 4, 4], [1, 6, 4]]  # written by the slot jobs
            pool.release(feats.handle)
            await pre.aclose()
        joined = await Qwen2VLPreprocessor("cpu").preprocess(images=images)  # two items' rows concatenated
        assert joined.pixel_values.shape[0] == 16 + 24
        main = threading.current_thread().name
        assert threads["lease"] and main not in threads["lease"]
        assert threads["assemble"] and main not in threads["assemble"]

    async def test_lease_of_a_plan_that_outlived_its_deadline_goes_back(self, monkeypatch):
        import threading
        import time

        from gpu_mm import ProcessingTimeout
        from gpu_mm.pipeline.families import Qwen2VLPreprocessor

        from media_helpers import make_image

        gate = threading.Event()
        from gpu_mm.pipeline.plan import Planner

        plan_all = Planner.plan_all

        def slow_plan(self, *a):
            assert gate.wait(10)
            return plan_all(self, *a)

        monkeypatch.setattr(Planner, "plan_all", slow_plan)
        with FeaturePool(max_blocks=1) as pool:
            pre = Qwen2VLPreprocessor("cpu", output_pool=pool)
            with pytest.raises(ProcessingTimeout):
                await pre.preprocess(images=[make_image(56, 56, "PNG")], deadline=time.monotonic() + 0.05)
            gate.set()
            for _ in range(200):
                if pool.statistics().leased == 0 and pool.statistics().blocks:
                    break
                await asyncio.sleep(0.01)
            assert pool.statistics().leased == 0  # leased after the caller left, then returned
            monkeypatch.setattr(Planner, "plan_all", plan_all)
            feats = await pre.preprocess(images=[make_image(56, 56, "PNG")])  # the one block is free again
            pool.release(feats.handle)
            await pre.aclose()


class TestCudaIPCReferenceCounts:
    """torch counts one CUDA IPC reference per share and one receiver's open gives it back (at once when that
    process already maps the block). The bookkeeping is checked here with a fake share and rebuild standing
    in for torch's CUDA IPC (no GPU on this machine): every share is given back exactly once."""

    @pytest.fixture()
    def fake_ipc(self, monkeypatch):
        import torch.multiprocessing.reductions as reductions

        import gpu_mm.handoff as handoff

        shares: list[int] = []
        given_back: list[int] = []
        buffers: dict[int, torch.Tensor] = {}

        def rebuild(share_id, buffer_id):
            given_back.append(share_id)
            return buffers[buffer_id]

        def reduce_tensor(buffer):
            shares.append(len(shares))
            buffers[id(buffer)] = buffer
            return rebuild, (shares[-1], id(buffer))

        monkeypatch.setattr(reductions, "reduce_tensor", reduce_tensor)
        monkeypatch.setattr(handoff, "_cuda_buffer", lambda nbytes, device: torch.zeros(nbytes, dtype=torch.uint8))
        return shares, given_back

    def test_each_lease_shares_afresh_and_each_share_is_given_back_once(self, fake_ipc):
        shares, given_back = fake_ipc
        pool = FeaturePool(max_blocks=2, device="cuda")
        receiver = FeatureReceiver()
        layout = {"x": ((4,), torch.float32)}
        first = pool.lease(layout)
        first.tensors["x"].fill_(1)
        assert torch.equal(receiver.open(first.handle)["x"], torch.ones(4))
        receiver.open(first.handle)  # opened twice by one receiver: its one share is given back once
        pool.release(first.handle)
        second = pool.lease(layout)  # the same block, reused: a new share for the new handle
        assert second.handle.block_id == first.handle.block_id
        receiver.open(second.handle)
        other = FeatureReceiver()
        extra = pool.handle_for_another_receiver(second.handle)
        other.open(extra)
        assert shares == [0, 1, 2] and sorted(given_back) == [0, 1, 2]
        pool.release(second.handle)
        with pytest.raises(KeyError):
            pool.handle_for_another_receiver(second.handle)


@contextlib.contextmanager
def _registered(name):
    """Unregister a test's decoder backend when the test ends."""
    from gpu_mm.media.video import unregister_video_decoder

    try:
        yield
    finally:
        unregister_video_decoder(name)
