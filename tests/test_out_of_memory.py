"""A slot job that runs out of memory (the device fuller than the budget assumed: an engine's own memory grew) is a
typed, retryable error naming its item, through every API, and leaves nothing held: the slot free, no cache entry,
no exception chain keeping its tensors; the next call computes as before."""

from __future__ import annotations

import gc
import pickle
import weakref

import pytest
import torch

import gpu_mm
from gpu_mm import MemoryExhausted, ops
from gpu_mm.client import Client
from gpu_mm.pipeline.execute import within_memory
from gpu_mm.pipeline.families import Qwen2VLPreprocessor

from media_helpers import make_image
from service_helpers import serving

IMAGES = [make_image(100, 200, "JPEG", seed=1), make_image(60, 90, "PNG", seed=2)]


@pytest.fixture
def oom_once(monkeypatch):
    """The next resize fails as a CUDA allocation does; ``held`` keeps a weak reference to its input."""
    state = {"left": 1, "held": None}
    resize = ops.resize

    def failing(frames, size, interpolation="bicubic"):
        if state["left"]:
            state["left"] -= 1
            state["held"] = weakref.ref(frames)
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 79.1 GiB total)")
        return resize(frames, size, interpolation)

    monkeypatch.setattr(ops, "resize", failing)
    return state


def test_sync_call_raises_typed_and_holds_nothing(oom_once):
    pre = Qwen2VLPreprocessor("cpu")
    with pytest.raises(MemoryExhausted, match=r"^image\[0\].*out of memory.*OutOfMemoryError: CUDA out of") as info:
        pre(images=IMAGES)
    err = info.value
    assert err.status_code == 503 and err.item.startswith("image[0]") and isinstance(err, MemoryError)
    assert err.__context__ is None and err.__cause__ is None  # no chain back to the frames it was computing
    del info, err
    gc.collect()
    assert oom_once["held"]() is None
    assert pre.cache.statistics().entries == 0
    again = pre(images=IMAGES)  # computes as before
    assert torch.equal(again.pixel_values, Qwen2VLPreprocessor("cpu", cache_bytes=0)(images=IMAGES).pixel_values)


async def test_async_call_frees_its_slot_and_the_next_call_runs(oom_once):
    pre = Qwen2VLPreprocessor("cpu", workers="threads", num_slots=1)
    try:
        with pytest.raises(MemoryExhausted, match=r"^image\[[01]\]"):
            await pre.preprocess(images=IMAGES)
        stats = pre.statistics()
        assert (stats.slots.busy, stats.slots.quarantined, stats.slots.bytes_in_flight) == (0, 0, 0)
        assert stats.memory.working_bytes == 0 and stats.computations_in_flight == 0
        feats = await pre.preprocess(images=IMAGES)
        assert feats.image_grid_thw.shape == (2, 3)
    finally:
        await pre.aclose()


def test_only_allocation_failures_are_mapped():
    def cpu_allocator():
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate "
                           "memory: you tried to allocate 1125899906842624 bytes")

    with pytest.raises(MemoryExhausted, match=r"^video\[3\]: out of memory.*DefaultCPUAllocator"):
        within_memory(cpu_allocator, "video[3]")
    with pytest.raises(MemoryExhausted, match="MemoryError"):
        within_memory(lambda: bytearray(2**62), "image[0]")

    def bug():
        raise RuntimeError("shape mismatch")

    with pytest.raises(RuntimeError, match="shape mismatch"):
        within_memory(bug, "image[0]")
    assert within_memory(lambda: 7, "image[0]") == 7


def test_it_pickles_and_crosses_a_service_as_itself(tmp_path, oom_once):
    err = pickle.loads(pickle.dumps(MemoryExhausted("image[2]", "out of memory")))
    assert (err.item, err.reason, str(err)) == ("image[2]", "out of memory", "image[2]: out of memory")
    assert gpu_mm.MemoryExhausted is MemoryExhausted
    with serving(tmp_path) as (tcp, _):
        with Client(tcp) as client:
            with pytest.raises(MemoryExhausted, match=r"^image\[[01]\].*: out of memory") as info:  # items run at once
                client(images=IMAGES)
            assert info.value.status_code == 503
            assert client(images=IMAGES).image_grid_thw.shape == (2, 3)  # the service answers on
