"""gpu_mm.Client against a real ``gpu-mm serve`` application (started here on a thread of its own, over TCP and
over a Unix domain socket): the features equal an in-process preprocessor's bit for bit, for images and videos of
every family; errors come back as the same typed errors; an unreachable service is a typed error too."""

from __future__ import annotations

import asyncio
import contextlib
import os
import stat
import threading

import pytest
import torch

pytest.importorskip("aiohttp")
pytest.importorskip("safetensors")

from gpu_mm import (  # noqa: E402
    Client,
    InvalidRequest,
    MediaError,
    Preprocessor,
    ServiceUnavailable,
    SourceError,
)
from gpu_mm.serve import build_app, unix_socket  # noqa: E402
from gpu_mm.wire import features_from_body, features_to_body  # noqa: E402

from media_helpers import clip, make_image  # noqa: E402


@contextlib.contextmanager
def serving(tmp_path, model: str, **settings):
    """``gpu-mm serve``'s application on a loop of its own (TCP on a free port, and a Unix socket); yields the two
    client URLs."""
    from aiohttp import web

    ready = threading.Event()
    state: dict = {}

    def main() -> None:
        loop = asyncio.new_event_loop()
        state["loop"] = loop

        async def start() -> None:
            app = build_app(device="cpu", model=model, workers="threads", idle_workers=False, cache_bytes=0,
                            **settings)
            runner = web.AppRunner(app)
            await runner.setup()
            tcp = web.TCPSite(runner, "127.0.0.1", 0)
            await tcp.start()
            path = str(tmp_path / "gpu-mm.sock")
            await web.SockSite(runner, unix_socket(path)).start()
            state.update(runner=runner, port=tcp._server.sockets[0].getsockname()[1], path=path)
            ready.set()

        loop.run_until_complete(start())
        loop.run_forever()
        loop.run_until_complete(state["runner"].cleanup())
        loop.close()

    thread = threading.Thread(target=main, daemon=True)
    thread.start()
    assert ready.wait(60)
    try:
        yield f"http://127.0.0.1:{state['port']}", f"unix://{state['path']}"
    finally:
        state["loop"].call_soon_threadsafe(state["loop"].stop)
        thread.join(30)


def assert_same(remote, local) -> None:
    ours, theirs = remote.to_dict(), local.to_dict()
    assert ours.keys() == theirs.keys()
    for key, value in theirs.items():
        assert value.dtype == ours[key].dtype and torch.equal(ours[key], value), key
    assert type(remote) is type(local)
    for a, b in zip(remote.items, local.items, strict=True):
        # The item's label says how it arrived (base64 in a body, bytes in process): its name is the same.
        assert a.item.split(" ")[0] == b.item.split(" ")[0]
        assert (a.kind, a.source_size, a.resized, a.grid_thw, a.num_tokens, a.frame_indices) == (
            b.kind, b.source_size, b.resized, b.grid_thw, b.num_tokens, b.frame_indices)
    assert getattr(remote, "video_timestamps", None) == getattr(local, "video_timestamps", None)


MEDIA = {
    "qwen2_5_vl": {"images": [make_image(60, 90, "JPEG")], "videos": [clip("h264", 24, 64, 96)]},
    "qwen3_vl": {"images": [make_image(60, 90, "PNG")], "videos": [clip("h264", 24, 64, 96)]},
    "glm4v": {"images": [make_image(60, 90, "PNG")], "videos": [clip("h264", 24, 64, 96)]},
    "glm46v": {"videos": [clip("h264", 24, 64, 96)]},
    "internvl": {"images": [make_image(60, 200, "PNG"), make_image(40, 40, "JPEG")],
                 "videos": [clip("h264", 6, 64, 96)]},
    "gemma3": {"images": [make_image(300, 900, "PNG")], "do_pan_and_scan": True},
}


@pytest.mark.parametrize("model", sorted(MEDIA))
def test_features_over_http_and_a_unix_socket_equal_in_process(tmp_path, model):
    call = MEDIA[model]
    local = Preprocessor.for_model(model, device="cpu", cache_bytes=0)(**call)
    with serving(tmp_path, model) as (http, uds):
        assert stat.S_IMODE(os.stat(uds[len("unix://"):]).st_mode) == 0o600
        for url in (http, uds):
            assert_same(Client(url)(**call), local)


async def test_async_client_keeps_its_connection_and_matches(tmp_path):
    local = Preprocessor.for_model("qwen2_vl", device="cpu", cache_bytes=0)
    image = make_image(56, 84, "PNG")
    with serving(tmp_path, "qwen2_vl") as (http, uds):
        async with Client(uds) as client:
            first, second = await asyncio.gather(client.preprocess(images=[image]),
                                                 client.preprocess(videos=clip("h264", 12), nframes=4))
        assert_same(first, local(images=[image]))
        assert_same(second, local(videos=[clip("h264", 12)], nframes=4))
        assert second.items[0].frame_indices == [0, 4, 7, 11] or len(second.items[0].frame_indices) == 4


def test_errors_come_back_typed_naming_the_item(tmp_path):
    with serving(tmp_path, "gemma3") as (http, _):
        client = Client(http)
        with pytest.raises(InvalidRequest) as bad_option:
            client(images=[make_image(60, 90, "PNG")], nframes=4)
        assert bad_option.value.field == "nframes"
        with pytest.raises(InvalidRequest, match="video\\[0\\].*no videos"):
            client(videos=[clip("h264", 4)])
        with pytest.raises(SourceError) as bad_media:
            client(images=[make_image(60, 90, "PNG"), "not base64 at all!"])
        assert bad_media.value.item.startswith("image[1]")
        with pytest.raises(MediaError) as broken:  # which subclass depends on the image plug-ins loaded
            client(images=[b"\xff\xd8\xff" + b"\0" * 64])
        assert broken.value.item.startswith("image[0]") and type(broken.value) is not MediaError
    with pytest.raises(InvalidRequest, match="image\\[0\\].*encoded media"):
        Client(http)(images=[torch.zeros(3, 4, 4)])


def test_an_unreachable_service_is_a_typed_error(tmp_path):
    with pytest.raises(ServiceUnavailable):
        Client(f"unix://{tmp_path}/nobody.sock")(images=[make_image(8, 8, "PNG")])
    with pytest.raises(ValueError):
        Client("ftp://host")


def test_a_body_round_trips_and_refuses_what_is_not_one():
    local = Preprocessor.for_model("qwen2_5_vl", device="cpu", cache_bytes=0)(videos=[clip("h264", 24)])
    body = features_to_body(local.processor_output(), "qwen2_5_vl")
    again = features_from_body(body)
    assert_same(again, local)
    assert again.second_per_grid_ts == local.second_per_grid_ts  # a list field, via to_dict()'s float32 tensor
    for bad in (b"", b"\x10\0\0\0\0\0\0\0{}", body[:20]):
        with pytest.raises(InvalidRequest, match="body"):
            features_from_body(bad)


async def test_a_restarted_service_is_reached_again_by_the_same_client(tmp_path):
    """A call while the service is down is ServiceUnavailable; once it is back (same socket path), the same client
    (its kept-alive connection now dead) calls it again without being rebuilt."""
    image = make_image(56, 84, "PNG")
    async with Client(f"unix://{tmp_path}/gpu-mm.sock") as client:
        with serving(tmp_path, "qwen2_vl"):
            first = await client.preprocess(images=[image])
        with pytest.raises(ServiceUnavailable):
            await client.preprocess(images=[image])
        with serving(tmp_path, "qwen2_vl"):
            again = await client.preprocess(images=[image])
    assert torch.equal(first.pixel_values, again.pixel_values)


@pytest.mark.slow
def test_a_client_killed_mid_request_leaks_no_slot(tmp_path):
    """A client process killed while its request runs: the service finishes or drops that work, nothing stays in
    flight, and the next client is served."""
    import re
    import subprocess
    import sys
    import time
    import urllib.request

    video = clip("h264", 96, 240, 320)
    with serving(tmp_path, "qwen2_vl") as (http, uds):
        script = ("import sys, gpu_mm; data = open(sys.argv[2], 'rb').read(); "
                  "gpu_mm.Client(sys.argv[1])(videos=[data], nframes=48)")
        path = tmp_path / "clip.mp4"
        path.write_bytes(video)
        child = subprocess.Popen([sys.executable, "-c", script, uds, str(path)])

        def in_flight() -> float:
            text = urllib.request.urlopen(f"{http}/metrics", timeout=10).read().decode()
            return float(re.search(r"^gpu_mm_in_flight (\S+)$", text, re.M).group(1))

        deadline = time.monotonic() + 60
        while not in_flight() and child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert in_flight() == 1, "the client's request never ran"  # killed mid-request, not before or after
        child.kill()
        child.wait(30)

        deadline = time.monotonic() + 60
        while in_flight() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert in_flight() == 0
        assert Client(uds)(images=[make_image(56, 84, "PNG")]).pixel_values is not None
