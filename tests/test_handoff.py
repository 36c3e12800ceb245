"""Feature hand-off between processes: shared memory here (CUDA IPC under the ``cuda`` marker).
Tensors arrive intact without pickling their pixels, blocks are reused after release, and nothing
grows over many hand-offs."""

from __future__ import annotations

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
