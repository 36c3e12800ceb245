"""Responsiveness under load: how long the caller's event loop stalls while N requests are processed.

Two probes run beside the requests: a timer that asks to wake every millisecond and records how late
it wakes (loop lag), and a thread that posts a callback into the loop every 10 ms as an external
request would arrive (health-probe latency: post -> run).
"""

from __future__ import annotations

import asyncio
import functools
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any, Literal

from ..metrics import LatencySummary


def _summary_ms(samples: list[float]) -> dict[str, float]:
    s = LatencySummary.of(samples)
    return {"p50_ms": s.p50_s * 1e3, "p99_ms": s.p99_s * 1e3, "max_ms": s.max_s * 1e3, "count": s.count}


async def measure(
    call: Callable[[int], Awaitable[Any]], n_requests: int, *, tick_s: float = 0.001, health_every_s: float = 0.01
) -> dict[str, Any]:
    """Run ``call(i)`` for i in range(n) concurrently while probing the loop; return the figures."""
    loop = asyncio.get_running_loop()
    lags: list[float] = []
    health: list[float] = []
    stop = threading.Event()
    done = asyncio.Event()

    async def ticker() -> None:
        while not done.is_set():
            t0 = time.perf_counter()
            await asyncio.sleep(tick_s)
            lags.append(max(0.0, time.perf_counter() - t0 - tick_s))

    def poster() -> None:
        while not stop.wait(health_every_s):
            posted = time.perf_counter()
            try:
                loop.call_soon_threadsafe(functools.partial(_lag_since, health, posted))
            except RuntimeError:
                return

    tick_task = asyncio.ensure_future(ticker())
    thread = threading.Thread(target=poster, daemon=True)
    thread.start()
    await asyncio.sleep(0.02)
    t0 = time.perf_counter()
    results = await asyncio.gather(*(call(i) for i in range(n_requests)), return_exceptions=True)
    wall = time.perf_counter() - t0
    done.set()
    stop.set()
    await tick_task
    thread.join()
    errors: dict[str, int] = {}
    for r in results:
        if isinstance(r, BaseException):
            errors[type(r).__name__] = errors.get(type(r).__name__, 0) + 1
    return {
        "requests": n_requests,
        "wall_s": wall,
        "throughput_rps": n_requests / wall,
        "loop_lag": _summary_ms(lags),
        "health_probe": _summary_ms(health),
        "errors": errors,
    }


def scenarios(image: bytes, workers: int) -> dict[str, Callable[[], tuple[Callable[[int], Awaitable[Any]], Any]]]:
    """name -> factory returning (call, closer). Each runs one Qwen2-VL image preprocessing per request."""
    from ..pipeline.families import Qwen2VLPreprocessor
    from ..processor import AsyncMMDataProcessor
    from .baselines import FakeAsyncHF, HFImageProcessor, SeedAsyncMMDataProcessor

    def inline():
        proc = HFImageProcessor()

        async def call(i: int) -> Any:
            return proc.process_mm_data(image_data=[image])  # blocking work on the loop

        return call, None

    def seed_sync():
        w = SeedAsyncMMDataProcessor(HFImageProcessor(), max_concurrent_calls=32)
        return (lambda i: w.process(image_data=[image])), w.shutdown

    def seed_fake_async():
        w = SeedAsyncMMDataProcessor(FakeAsyncHF(), max_concurrent_calls=32)
        return (lambda i: w.process(image_data=[image])), w.shutdown

    def gpu_mm_hf():
        w = AsyncMMDataProcessor(HFImageProcessor(), max_concurrent_calls=workers, max_queued=4096,
                                 processor_factory=HFImageProcessor)
        return (lambda i: w.process(image_data=[image])), w.shutdown

    def gpu_mm_native(idle_workers: bool = False, workers: Literal["threads", "processes"] = "threads"):
        # Default slots; every request computed; idle_workers: slot threads on SCHED_IDLE; workers: each slot's
        # work on its thread or in a process of its own (started before the warm-up call, as gpu-mm serve does).
        pre = Qwen2VLPreprocessor("auto", cache_bytes=0, idle_workers=idle_workers, workers=workers)
        w = AsyncMMDataProcessor(pre, max_concurrent_calls=64, max_queued=4096)

        async def call(i: int) -> Any:
            if i < 0:
                await pre.start()
            return await w.process(image_data=[image])

        def close() -> None:
            w.shutdown()
            pre.close()

        return call, close

    return {
        "inline": inline,
        "seed_wrapper_sync": seed_sync,
        "seed_wrapper_fake_async": seed_fake_async,
        "gpu_mm_wrapping_hf": gpu_mm_hf,
        "gpu_mm_native": gpu_mm_native,
        "gpu_mm_native_idle_workers": functools.partial(gpu_mm_native, idle_workers=True),
        "gpu_mm_native_slot_processes": functools.partial(gpu_mm_native, idle_workers=True, workers="processes"),
    }


async def run_all(image: bytes, n_requests: int = 64, workers: int = 2, only: list[str] | None = None,
                  progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run every scenario one after another on this loop; return name -> figures. gpu-mm's own preprocessor
    runs as is, with its slot threads on ``SCHED_IDLE``, with each slot's work in a ``SCHED_IDLE`` process of its
    own (``workers="processes"``, CPU only), and with this loop's thread on a short CPU time slice
    (``gpu_mm.sched``, what ``gpu-mm serve --loop-slice`` asks for) where the kernel grants one."""
    from ..pipeline import resolve_device
    from ..sched import set_thread_slice

    out: dict[str, Any] = {}
    table = scenarios(image, workers)
    plan = [(name, name, False) for name in table]
    plan.append(("gpu_mm_native_short_loop_slice", "gpu_mm_native", True))
    for name, scenario, short in plan:
        if only and name not in only:
            continue
        if short and not set_thread_slice():
            out[name] = {"skipped": "the kernel grants no short time slice here (Linux 6.12+)"}
            continue
        if name == "gpu_mm_native_slot_processes" and resolve_device("auto") != "cpu":
            out[name] = {"skipped": "slot processes are for the CPU path"}
            continue
        if progress:
            progress(name)
        try:
            call, closer = table[scenario]()
            await call(-1)  # warm up (imports, first-call allocations) outside the measurement
            out[name] = await measure(call, n_requests)
            if closer:
                closer()
        finally:
            if short:
                set_thread_slice(None)
    return out


def _lag_since(into: list[float], posted: float) -> None:
    into.append(time.perf_counter() - posted)
