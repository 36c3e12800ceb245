"""``gpu-mm serve``: the HTTP front end maps errors to status codes and exposes Prometheus metrics."""

from __future__ import annotations

import asyncio
import base64

import pytest

pytest.importorskip("aiohttp")
pytest.importorskip("prometheus_client")
from aiohttp.test_utils import TestClient, TestServer  # noqa: E402

from gpu_mm.serve import build_app  # noqa: E402

from media_helpers import clip, make_image  # noqa: E402


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


async def _client(**kw) -> TestClient:
    client = TestClient(TestServer(build_app(device="cpu", **kw)))
    await client.start_server()
    return client


async def test_preprocess_health_and_metrics():
    client = await _client()
    try:
        r = await client.post("/v1/preprocess", json={"images": [b64(make_image(56, 84, "PNG"))],
                                                      "videos": [b64(clip("h264", 48))]})
        assert r.status == 200
        body = await r.json()
        assert body["pixel_values"] == [24, 1176] and body["items"][0]["grid_thw"] == [1, 4, 6]
        assert body["items"][1]["frame_indices"] == [0, 16, 31, 47]
        assert (await client.get("/health")).status == 200
        text = await (await client.get("/metrics")).text()
        assert 'gpu_mm_requests_total{outcome="ok"} 1.0' in text
        assert "gpu_mm_in_flight 0.0" in text and 'gpu_mm_stage_seconds_count{stage="decode"}' in text
    finally:
        await client.close()


async def test_bad_input_is_400_naming_the_item():
    client = await _client()
    try:
        r = await client.post("/v1/preprocess", json={"images": [b64(make_image(8, 8, "PNG")), b64(b"nope" * 8)]})
        assert r.status == 400
        body = await r.json()
        assert "image[1]" in body["message"]
        r = await client.post("/v1/preprocess", data=b"{not json")
        assert r.status == 400
    finally:
        await client.close()


async def test_overload_is_503_and_timeout_is_504():
    client = await _client(max_concurrent_calls=1, max_queued=0, timeout_s=0.001)
    try:
        video = {"videos": [b64(clip("h264", 48))]}
        statuses = [r.status for r in await asyncio.gather(*(client.post("/v1/preprocess", json=video)
                                                              for _ in range(4)))]
        assert 504 in statuses and 503 in statuses
        text = await (await client.get("/metrics")).text()
        assert 'gpu_mm_requests_total{outcome="rejected"}' in text
        assert 'gpu_mm_requests_total{outcome="timeout"}' in text
    finally:
        await client.close()
