"""``gpu_mm.bench.hostile``: the hostile load, the floor server it is set beside, and the work processes that
stand in for gpu-mm's pixel work there."""

from __future__ import annotations

import asyncio
import io
import json
import os
import subprocess
import sys
import threading
import time

import pytest
from aiohttp.test_utils import TestClient, TestServer

from gpu_mm.bench import hostile


@pytest.mark.slow
def test_hostile_bodies_are_the_valid_media_among_refusals():
    from PIL import Image

    bodies = hostile.hostile_bodies()
    parsed = []
    for b in bodies:
        try:
            parsed.append(json.loads(b))
        except (ValueError, RecursionError):  # the 50,000-deep list and the bytes that are not JSON
            pass
    assert len(bodies) == 12 and len(parsed) == 10
    media = hostile.valid_media()
    assert [kind for kind, _ in media] == ["image", "video", "image"]
    assert Image.open(io.BytesIO(media[2][1])).size == (8000, 8000)  # what its header claims; 1.3 KB of data
    inline = {item for body in parsed for key in ("images", "videos") for item in body.get(key, [])}
    import base64

    assert all(base64.b64encode(data).decode() in inline for _, data in media)


async def _floor(parse: bool) -> TestClient:
    client = TestClient(TestServer(hostile._floor_app(0.0, parse=parse)))
    await client.start_server()
    return client


@pytest.mark.parametrize("parse", [False, True])
async def test_the_floor_server_answers_every_body_400_and_health_and_metrics(parse):
    client = await _floor(parse)
    try:
        for body in hostile.hostile_bodies():
            r = await client.post("/v1/preprocess", data=io.BytesIO(body))  # large bytes: aiohttp warns
            assert r.status == 400 and (await r.json())["error"] == "InvalidRequest"
        r = await client.get("/health")
        assert r.status == 200 and await r.text() == "ok\n"
        r = await client.get("/metrics")
        assert r.status == 200 and 'gpu_mm_requests_total{outcome="bad_input"} 12.0' in await r.text()
    finally:
        await client.close()


def test_main_refuses_what_it_does_not_know():
    assert hostile.main([]) == 2
    assert hostile.main(["floor", "1"]) == 2
    assert hostile.main(["floor", "1", "0", "twice"]) == 2


@pytest.mark.slow
def test_the_floor_under_the_hostile_load_end_to_end():
    """The floor server in its own process, the clients and the prober: every answer a 400, /health probed."""
    from gpu_mm.bench.http import _free_port

    port = _free_port()
    bodies = hostile.hostile_bodies()[:2]  # cheap to send: a path and /dev/zero
    with hostile.floor_server(port, 200.0) as proc:
        r = asyncio.run(hostile.health_when_up(port, proc, 1.0, 2, bodies))
    assert proc.returncode is not None
    assert set(r["statuses"]) == {"400"} and r["answers"] == r["statuses"]["400"] > 0
    assert r["health_probes"] > 0 and r["health_p99_ms"] <= r["health_max_ms"]
    if os.path.exists(f"/proc/{os.getpid()}/task/{threading.get_native_id()}/schedstat"):
        cpu = r["server_cpu"]  # the floor's loop received and answered the requests in the measured half second
        assert cpu["loop_run_pct"] > 0 and cpu["loop_wait_pct"] >= 0 and cpu["threads_run_pct"] >= 0


def test_server_cpu_is_each_threads_difference_in_percent_of_a_core():
    before = {10: (1_000_000_000, 5_000_000), 11: (2_000_000_000, 0)}
    after = {10: (1_500_000_000, 105_000_000), 11: (2_250_000_000, 0), 12: (50_000_000, 0)}  # 12 started between
    # over 2 s: the loop ran 0.5 s (25%) and waited 0.1 s (5%); the others ran 0.25 + 0.05 s (15%)
    assert hostile.server_cpu(before, after, 2.0, 10) == {"loop_run_pct": 25.0, "loop_wait_pct": 5.0,
                                                           "threads_run_pct": 15.0}
    assert hostile.server_cpu({}, after, 2.0, 10) is None  # the kernel said nothing (or the server had gone)
    assert hostile.server_cpu(before, after, 0.0, 10) is None


@pytest.mark.skipif(not os.path.exists("/proc/self/task"), reason="needs Linux's /proc/<pid>/task")
def test_thread_times_reads_this_process_and_nothing_for_a_process_that_is_gone():
    tid = threading.get_native_id()
    t0 = hostile.thread_times(os.getpid())
    if tid not in t0:
        pytest.skip("this kernel does not give schedstat")
    end = time.thread_time() + 0.05
    while time.thread_time() < end:  # 50 ms of this thread's CPU
        pass
    t1 = hostile.thread_times(os.getpid())
    assert t1[tid][0] - t0[tid][0] >= 40_000_000  # schedstat's run time and thread_time count the same CPU
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    assert hostile.thread_times(proc.pid) == {}


@pytest.mark.slow
def test_work_processes_run_as_slot_processes_do_and_are_gone_after():
    from gpu_mm.sched import _idle_is_reversible

    with hostile.work_processes(2) as procs:
        assert len(procs) == 2 and all(p.poll() is None for p in procs)
        # SCHED_IDLE where gpu-mm's slot processes go on it (set_idle_policy), the normal policy elsewhere
        want = os.SCHED_IDLE if _idle_is_reversible() else os.SCHED_OTHER
        assert [os.sched_getscheduler(p.pid) for p in procs] == [want, want]
    assert all(p.returncode is not None for p in procs)
