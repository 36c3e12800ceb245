"""Decoded pixels from a process of the node to its service in shared memory (``gpu_mm.uploads``), and a call's own
spec over the wire: the features of an in-process preprocessor, bit for bit, nothing left in /dev/shm; every
malformed, foreign or oversized upload a typed 400 naming the item, and none taken over TCP."""

from __future__ import annotations

import base64
import dataclasses
import glob
import json
import os
import urllib.request

import numpy as np
import pytest
import torch

pytest.importorskip("aiohttp")

import gpu_mm  # noqa: E402
from gpu_mm import InvalidRequest, Qwen2VLConfig  # noqa: E402
from gpu_mm.media.synth import pattern  # noqa: E402
from gpu_mm.uploads import PREFIX, discard, put  # noqa: E402

from service_helpers import serving  # noqa: E402

IMAGE = pattern(120, 200, seed=3)  # H x W x 3 uint8
FRAMES = np.stack([np.roll(pattern(96, 128, seed=5), 4 * t, axis=1) for t in range(6)])  # T x H x W x 3
OTHER = Qwen2VLConfig(image_max_pixels=64 * 28 * 28, output_dtype=torch.uint8, video_resample="bilinear")


def _left() -> list[str]:
    return glob.glob(f"/dev/shm/{PREFIX}*")


def _equal(a, b) -> bool:
    a, b = a.to_dict(), b.to_dict()
    return set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


def test_decoded_images_and_videos_over_the_socket_equal_the_in_process_features(tmp_path):
    before = set(_left())
    pre = gpu_mm.Qwen2VLPreprocessor("cpu", cache_bytes=0)
    with serving(tmp_path) as (_, uds):
        client = gpu_mm.Client(uds)
        got = client(images=[IMAGE, torch.from_numpy(IMAGE)], videos=[FRAMES])
        assert _equal(got, pre(images=[IMAGE, IMAGE], videos=[FRAMES]))
        other = client(images=[IMAGE], videos=[FRAMES], spec=OTHER)  # the call's own settings, same family
        assert _equal(other, pre(images=[IMAGE], videos=[FRAMES], spec=OTHER))
        assert other.pixel_values.dtype == torch.uint8
    assert set(_left()) == before  # the service unlinked each object as it took it


def test_uploads_to_a_service_with_slot_processes_the_cpu_default(tmp_path):
    """The service as it runs on a CPU node by default (slot processes): decoded pixels are laid out on the slots'
    threads, the in-process features bit for bit."""
    pre = gpu_mm.Qwen2VLPreprocessor("cpu", cache_bytes=0)
    with serving(tmp_path, workers="processes", num_slots=1) as (_, uds):
        got = gpu_mm.Client(uds, handles=True)(images=[IMAGE], videos=[FRAMES], spec=OTHER)
        assert _equal(got, pre(images=[IMAGE], videos=[FRAMES], spec=OTHER))


def test_no_upload_over_tcp_and_a_spec_of_another_family_is_refused(tmp_path):
    with serving(tmp_path) as (tcp, uds):
        with pytest.raises(InvalidRequest, match="unix://"):
            gpu_mm.Client(tcp)(images=[IMAGE])
        upload = put(IMAGE)
        try:
            status, answer = _post(tcp, {"images": [upload]})
            assert status == 400 and "Unix socket" in answer["message"] and answer["item"] == "image[0]"
        finally:
            os.unlink(f"/dev/shm/{upload['shm']}")
        with pytest.raises(InvalidRequest, match="serves the qwen2_vl family"):
            gpu_mm.Client(uds)(images=[IMAGE], spec=gpu_mm.Qwen3VLConfig())


def _post(url: str, body: dict) -> tuple[int, dict]:
    req = urllib.request.Request(f"{url}/v1/preprocess", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_hostile_uploads_are_typed_400s_naming_the_item(tmp_path):
    """Over the socket (the client's own process): a name gpu-mm does not make, a missing object, a symlink, a size
    that is not the shape's, more than max_upload_bytes, extra keys, a bad shape; each a 400 naming the item."""
    import asyncio

    import aiohttp

    before = set(_left())
    good = put(IMAGE)
    os.unlink(f"/dev/shm/{good['shm']}")  # a name that no longer exists
    short, target, large = put(IMAGE[:60]), put(IMAGE), put(np.zeros((2048, 1024, 3), np.uint8))
    link = dict(target, shm=PREFIX + "0" * 32)
    os.symlink(f"/dev/shm/{target['shm']}", f"/dev/shm/{link['shm']}")
    cases = {
        "traversal": ({"shm": "../etc/passwd", "shape": [1, 1, 3], "dtype": "uint8"}, "InvalidRequest"),
        "missing": (good, "SourceError"),
        "symlink": (link, "SourceError"),
        "short": (dict(short, shape=list(IMAGE.shape)), "SourceError"),
        "too large": (large, "LimitExceeded"),
        "extra key": ({**good, "offset": 0}, "InvalidRequest"),
        "bad shape": ({**good, "shape": [0, 5, 3]}, "InvalidRequest"),
        "bad dtype": ({**good, "dtype": "float64"}, "InvalidRequest"),
    }
    try:
        with serving(tmp_path, max_upload_bytes=4 << 20) as (_, uds):
            async def post(body):
                conn = aiohttp.UnixConnector(path=uds[len("unix://"):])
                async with aiohttp.ClientSession(connector=conn) as s:
                    async with s.post("http://gpu-mm/v1/preprocess", json=body) as r:
                        return r.status, await r.json()

            for name, (upload, error) in cases.items():
                status, answer = asyncio.run(post({"images": [base64.b64encode(b"x").decode(), upload]}))
                assert status == 400 and answer["error"] == error and answer["item"] == "image[1]", (name, answer)
    finally:
        for upload in (short, target, large, link):
            discard(upload)
    assert set(_left()) == before


@pytest.mark.skipif(os.geteuid() != 0, reason="making an object another user owns needs root")
def test_an_object_of_another_user_is_refused(tmp_path):
    import asyncio

    import aiohttp

    upload = put(IMAGE)
    os.chown(f"/dev/shm/{upload['shm']}", 12345, 12345)
    try:
        with serving(tmp_path) as (_, uds):
            async def post():
                conn = aiohttp.UnixConnector(path=uds[len("unix://"):])
                async with aiohttp.ClientSession(connector=conn) as s:
                    async with s.post("http://gpu-mm/v1/preprocess", json={"images": [upload]}) as r:
                        return r.status, await r.json()

            status, answer = asyncio.run(post())
            assert status == 400 and answer["error"] == "SourceError" and "user" in answer["message"]
    finally:
        os.unlink(f"/dev/shm/{upload['shm']}")


def test_put_refuses_what_is_not_a_non_empty_uint8_array():
    with pytest.raises(ValueError, match="uint8"):
        put(np.zeros((4, 4, 3), np.float32))
    with pytest.raises(ValueError, match="uint8"):
        put(np.zeros((0, 4, 3), np.uint8))
    item = put(torch.zeros(2, 3, 3, dtype=torch.uint8))
    assert item["shape"] == [2, 3, 3] and dataclasses.is_dataclass(OTHER)
    os.unlink(f"/dev/shm/{item['shm']}")
