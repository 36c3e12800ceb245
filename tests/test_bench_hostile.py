"""``gpu_mm.bench.hostile``: the hostile load, the floor server it is set beside, and the work processes that
stand in for gpu-mm's pixel work there."""

from __future__ import annotations

import asyncio
import io
import json
import os

import pytest
from aiohttp.test_utils import TestClient, TestServer

from gpu_mm.bench import hostile


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


def test_work_processes_run_as_slot_processes_do_and_are_gone_after():
    from gpu_mm.sched import _idle_is_reversible

    with hostile.work_processes(2) as procs:
        assert len(procs) == 2 and all(p.poll() is None for p in procs)
        # SCHED_IDLE where gpu-mm's slot processes go on it (set_idle_policy), the normal policy elsewhere
        want = os.SCHED_IDLE if _idle_is_reversible() else os.SCHED_OTHER
        assert [os.sched_getscheduler(p.pid) for p in procs] == [want, want]
    assert all(p.returncode is not None for p in procs)
