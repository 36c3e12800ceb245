"""Slot processes (``Preprocessor(workers="processes")``): the same bits as slot threads, rows in reusable shared
memory, typed errors from the child, a killed child failing only its items and replaced, deadlines quarantining a
slot until its child answers, children ended by ``aclose``, and a script without a main guard."""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator

import pytest
import torch

from gpu_mm import DecodeError, ProcessingTimeout, Qwen2VLPreprocessor
from gpu_mm._procslots import ShmArena, SlotProcess, choose_workers, process_threads
from gpu_mm.errors import BackendUnavailable
from gpu_mm.handoff import FeaturePool
from gpu_mm.media.synth import make_image, make_video
from gpu_mm.pipeline.execute import Executor

pytestmark = pytest.mark.skipif(not hasattr(os, "memfd_create"), reason="slot processes need Linux (memfd)")


def _one_slot(**kw) -> Qwen2VLPreprocessor:
    return Qwen2VLPreprocessor("cpu", workers="processes", num_slots=1, express_slots=0, **kw)


@contextlib.asynccontextmanager
async def _warm_one_slot(**kw) -> AsyncIterator[tuple[Qwen2VLPreprocessor, bytes, int]]:
    """A one-slot preprocessor whose child has done one job: (it, the job's JPEG, the child's pid)."""
    jpeg = make_image(240, 320)
    pre = _one_slot(cache_bytes=0, **kw)
    try:
        await pre.preprocess(images=[jpeg])
        yield pre, jpeg, pre.statistics().process_pids[0]
    finally:
        await pre.aclose()


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


async def _until(predicate, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


@pytest.mark.slow
async def test_processes_give_the_threads_bits_and_reuse_their_blocks():
    jpeg = make_image(480, 640)
    png = make_image(300, 420, "PNG")
    clip = make_video(30, 96, 128, fps=10)
    ref = Qwen2VLPreprocessor("cpu", cache_bytes=0)
    want_img = ref(images=[jpeg, png])
    want_vid = ref(videos=[clip])
    pre = _one_slot(cache_bytes=0)
    try:
        got = await pre.preprocess(images=[jpeg, png], videos=[clip])
        assert torch.equal(got.pixel_values, want_img.pixel_values)
        assert torch.equal(got.image_grid_thw, want_img.image_grid_thw)
        assert torch.equal(got.pixel_values_videos, want_vid.pixel_values_videos)
        assert torch.equal(got.video_grid_thw, want_vid.video_grid_thw)
        assert got.items[0].timings["decode"] > 0  # the child's stage timings came back
        stats = pre.statistics()
        assert stats.workers == "processes" and stats.process_starts == 1 and len(stats.process_pids) == 1
        assert stats.process_pids[0] != os.getpid()

        # A single item's rows are the block itself; once the caller drops them the block is reused.
        one = await pre.preprocess(images=[jpeg])
        created = pre.statistics().process_blocks
        del one
        for _ in range(3):
            again = await pre.preprocess(images=[jpeg])
            assert torch.equal(again.pixel_values, want_img.pixel_values[: again.pixel_values.shape[0]])
            del again
        assert pre.statistics().process_blocks == created

        # An item the child cannot decode fails typed, naming it; the child lives on.
        with pytest.raises(DecodeError, match=r"image\[0\]"):
            await pre.preprocess(images=[jpeg[:2000]])
        assert pre.statistics().process_starts == 1
        pid = pre.statistics().process_pids[0]
    finally:
        await pre.aclose()
    assert pre.statistics().process_pids == ()
    assert _gone(pid)


@pytest.mark.slow
async def test_processes_with_an_output_pool_and_the_cache():
    jpeg = make_image(240, 320)
    want = Qwen2VLPreprocessor("cpu", cache_bytes=0)(images=[jpeg])
    with FeaturePool(max_blocks=2) as pool:
        pre = _one_slot(output_pool=pool)
        try:
            got = await pre.preprocess(images=[jpeg])
            assert got.handle is not None
            assert torch.equal(got.pixel_values, want.pixel_values)
            assert torch.equal(got.image_grid_thw, want.image_grid_thw)
            pool.release(got.handle)
            hit = await pre.preprocess(images=[jpeg])
            assert hit.items[0].cache == "hit"
            assert torch.equal(hit.pixel_values, want.pixel_values)
            pool.release(hit.handle)
        finally:
            await pre.aclose()


@pytest.mark.slow
async def test_a_killed_slot_process_fails_only_its_items_and_is_replaced():
    async with _warm_one_slot() as (pre, jpeg, pid):
        # A 64 Mpx PNG: its decode and resize take the child 0.7 s or more, so it is working on it when killed.
        call = asyncio.ensure_future(pre.preprocess(images=[_big_png()]))
        await _until(lambda: pre.statistics().slots.busy == 1)
        await asyncio.sleep(0.25)
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(DecodeError, match=r"image\[0\].*killed by signal 9"):
            await call
        ok = await pre.preprocess(images=[jpeg])
        assert ok.pixel_values.shape[0] > 0
        stats = pre.statistics()
        assert stats.process_starts == 2 and stats.process_pids[0] != pid

        # One that dies between jobs costs no request (it had not taken the job): the job goes to a new one.
        os.kill(stats.process_pids[0], signal.SIGKILL)
        await _until(lambda: _gone(stats.process_pids[0]) or _zombie(stats.process_pids[0]))
        ok = await pre.preprocess(images=[jpeg])
        assert ok.pixel_values.shape[0] > 0 and pre.statistics().process_starts == 3
        assert pre.statistics().slots.busy == 0


def _big_png() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (8000, 8000), (120, 30, 200)).save(buf, "PNG", compress_level=1)
    return buf.getvalue()


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] == "Z"
    except FileNotFoundError:
        return True


@pytest.mark.slow
async def test_a_deadline_quarantines_the_slot_until_its_process_answers():
    async with _warm_one_slot() as (pre, jpeg, pid):
        os.kill(pid, signal.SIGSTOP)
        try:
            with pytest.raises(ProcessingTimeout):
                await pre.preprocess(images=[jpeg], deadline=time.monotonic() + 0.3)
            assert pre.statistics().slots.quarantined == 1
        finally:
            os.kill(pid, signal.SIGCONT)
        await _until(lambda: pre.statistics().slots.quarantined == 0)
        ok = await pre.preprocess(images=[jpeg])
        assert ok.pixel_values.shape[0] > 0 and pre.statistics().process_starts == 1


@pytest.mark.slow
async def test_a_job_abandoned_long_enough_is_stopped_and_frees_its_slot():
    async with _warm_one_slot(stop_abandoned_after_s=0.5) as (pre, jpeg, pid):
        os.kill(pid, signal.SIGSTOP)  # a decoder that never returns
        with pytest.raises(ProcessingTimeout):
            await pre.preprocess(images=[jpeg], deadline=time.monotonic() + 0.2)
        assert pre.statistics().slots.quarantined == 1
        await _until(lambda: pre.statistics().slots.quarantined == 0, timeout_s=10)
        stats = pre.statistics()
        assert stats.process_stops == 1 and stats.slots.busy == 0 and stats.process_pids == ()
        await _until(lambda: _gone(pid) or _zombie(pid))
        ok = await pre.preprocess(images=[jpeg])
        assert ok.pixel_values.shape[0] > 0 and pre.statistics().process_starts == 2


@pytest.mark.slow
def test_a_process_that_cannot_build_its_preprocessor_says_why():
    arena = ShmArena()
    proc = SlotProcess({"class": Executor, "kwargs": {"no_such_option": 1}}, arena, idle=False,
                       threads=1, name="gpu-mm-test")
    try:
        with pytest.raises(BackendUnavailable, match="could not build its executor.*no_such_option"):
            proc.run([], [], torch.float32)
        assert not proc.running
    finally:
        proc.close()
        arena.close()


def test_shm_arena_reuses_blocks_when_the_last_view_dies_and_bounds_the_free_ones():
    arena = ShmArena(max_free_bytes=8 << 20)
    t, block = arena.tensor((1000, 1176), torch.float32)  # 4.5 MiB -> a 6 MiB block
    assert block.size == 6 << 20 and arena.blocks_created == 1
    t.fill_(1.5)
    view = t[10:20]
    del t
    t2, block2 = arena.tensor((1000, 1176), torch.float32)
    assert block2 is not block and arena.blocks_created == 2  # a view still holds the first block
    assert float(view.sum()) == 1.5 * 10 * 1176
    del view
    t3, block3 = arena.tensor((2000, 1176), torch.bfloat16)
    assert block3 is block and arena.blocks_created == 2  # reused, the same mapping
    assert t3.dtype == torch.bfloat16 and t3.shape == (2000, 1176)
    assert arena.open_ids() == {block.block_id, block2.block_id}
    del t2, t3
    arena.tensor((10, 10), torch.float32)  # drains: two 6 MiB blocks free, over 8 MiB: one is closed
    assert len(arena.open_ids()) == 2  # one of the two, and the new 2 MiB block
    kept, kept_block = arena.tensor((10, 10), torch.float32)
    arena.close()
    assert arena.open_ids() == {kept_block.block_id}  # free blocks closed; one in use lives on with its tensor
    kept.fill_(2.0)
    del kept
    assert arena.open_ids() == frozenset()  # ... and closes when it dies



def test_process_threads_share_out_the_cores():
    assert process_threads(2, 3) == 1
    assert process_threads(16, 4) == 4
    assert process_threads(1, 2) == 1


def test_workers_is_checked():
    with pytest.raises(ValueError, match="workers must be"):
        Qwen2VLPreprocessor("cpu", workers="fibers")
    if torch.cuda.is_available():  # pragma: no cover - CI has no GPU
        with pytest.raises(ValueError, match="CPU path"):
            Qwen2VLPreprocessor("cuda", workers="processes")


@pytest.mark.slow
def test_a_script_without_a_main_guard_can_use_slot_processes(tmp_path):
    # multiprocessing's spawn would run this script again in the child; slot processes start a fresh interpreter.
    script = tmp_path / "no_guard.py"
    script.write_text(textwrap.dedent("""
        import asyncio
        from gpu_mm import Qwen2VLPreprocessor
        from gpu_mm.media.synth import make_image

        async def main():
            pre = Qwen2VLPreprocessor("cpu", workers="processes", num_slots=1, express_slots=0)
            out = await pre.preprocess(images=[make_image(64, 64)])
            await pre.aclose()
            print("rows", out.pixel_values.shape[0])

        asyncio.run(main())
    """))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=100,
                          cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["rows", "16"]


@pytest.mark.slow
async def test_a_dropped_preprocessor_ends_its_slot_threads_and_processes():
    import gc
    import threading

    pre = _one_slot(cache_bytes=0)
    await pre.preprocess(images=[make_image(64, 64)])
    pid = pre.statistics().process_pids[0]
    del pre
    gc.collect()
    await _until(lambda: not any(t.name.startswith("gpu-mm-slot") for t in threading.enumerate()))
    await _until(lambda: _gone(pid) or _zombie(pid))


def test_choose_workers():
    assert choose_workers("auto", "cpu") == "processes"
    assert choose_workers("auto", "cuda") == "threads" and choose_workers("auto", "cuda:1") == "threads"
    assert choose_workers("threads", "cpu") == "threads" and choose_workers("processes", "cpu") == "processes"
    with pytest.raises(ValueError, match="workers must be"):
        choose_workers("fibers", "cpu")


def test_decoded_arrays_with_slot_processes_equal_the_synchronous_features():
    """Decoded images and videos (arrays: a drop-in's or a node service's uploads) with slot processes, the CPU
    default: they are laid out on the slot's thread (no copy to a process), the same features as the synchronous
    API. (Sent to a process, a torch tensor's pickle could not be opened there.)"""
    import asyncio

    import numpy as np
    import torch

    from gpu_mm import Qwen2VLPreprocessor
    from gpu_mm.media.synth import pattern

    frames = np.stack([pattern(96, 128, seed=t) for t in range(6)])
    image = pattern(64, 80, seed=9)
    want = Qwen2VLPreprocessor("cpu")(images=[image], videos=[frames])

    async def main():
        pre = Qwen2VLPreprocessor("cpu", workers="processes", num_slots=1)
        try:
            return await pre.preprocess(images=[image], videos=[frames])
        finally:
            await pre.aclose()

    got = asyncio.run(main())
    assert torch.equal(got.pixel_values, want.pixel_values)
    assert torch.equal(got.pixel_values_videos, want.pixel_values_videos)
