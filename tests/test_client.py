"""gpu_mm.Client against a real ``gpu-mm serve`` application (started here on a thread of its own, over TCP and
over a Unix domain socket): the features equal an in-process preprocessor's bit for bit, for images and videos of
every family; errors come back as the same typed errors; an unreachable service is a typed error too."""

from __future__ import annotations

import asyncio
import os
import stat

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
from gpu_mm.serve import leases_of  # noqa: E402
from gpu_mm.wire import features_from_body, features_to_body  # noqa: E402

from media_helpers import clip, make_image  # noqa: E402
from service_helpers import serving  # noqa: E402


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
def test_features_over_http_a_unix_socket_and_handles_equal_in_process(tmp_path, model):
    """The same features, bit for bit, as a safetensors body over TCP and over the Unix socket, and as a shared
    block leased over the socket (the tensors view the block), released after."""
    call = MEDIA[model]
    local = Preprocessor.for_model(model, device="cpu", cache_bytes=0)(**call)
    state: dict = {}
    with serving(tmp_path, model, state) as (http, uds):
        assert stat.S_IMODE(os.stat(uds[len("unix://"):]).st_mode) == 0o600
        for url in (http, uds):
            assert_same(Client(url)(**call), local)
        client = Client(uds, handles=True)
        leased = client(**call)
        assert_same(leased, local)
        leases = leases_of(state["app"])
        assert leased.handle is not None and leases.statistics().outstanding == 1
        assert client.release_sync(leased) == 1 and leases.statistics().outstanding == 0
        client.close()


def _leases(state):
    return leases_of(state["app"])


def _until(predicate, seconds=20.0):
    import time

    deadline = time.monotonic() + seconds
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.02)
    return predicate()


async def test_leased_blocks_are_reused_bounded_and_reclaimed_from_a_client_that_forgets(tmp_path):
    """Two blocks for all clients: a third answer while both are leased is Overloaded (503); a client that never
    releases loses its blocks after the lease time; released blocks are reused, not made anew."""
    from gpu_mm import Overloaded

    image = make_image(56, 84, "PNG")
    state: dict = {}
    with serving(tmp_path, "qwen2_vl", state, handle_blocks=2, handle_lease_s=0.5) as (_, uds):
        async with Client(uds, handles=True) as client:
            a, b = await client.preprocess(images=[image]), await client.preprocess(images=[image])
            with pytest.raises(Overloaded, match="blocks are leased"):
                await client.preprocess(images=[image])
            assert _until(lambda: _leases(state).statistics().outstanding == 0)  # forgotten: reclaimed
            stats = _leases(state).statistics()
            assert stats.reclaimed_expired == 2 and stats.blocks == 2
            assert await client.release(a, b) == 0  # already reclaimed: harmless
            c = await client.preprocess(images=[image])  # into a reclaimed block (a's or b's: not used any more)
            stats = _leases(state).statistics()
            assert (stats.blocks, stats.granted) == (2, 3) and await client.release(c) == 1


def test_blocks_of_a_client_process_that_ends_come_back_at_once(tmp_path):
    """A client process that takes two leased answers and exits without releasing: the service sees its process
    gone (SO_PEERCRED's pid no longer runs it) and reclaims both, long before the lease time."""
    import subprocess
    import sys

    state: dict = {}
    with serving(tmp_path, "qwen2_vl", state, handle_lease_s=3600) as (_, uds):
        path = tmp_path / "image.png"
        path.write_bytes(make_image(56, 84, "PNG"))
        script = ("import os, sys, gpu_mm; c = gpu_mm.Client(sys.argv[1], handles=True); "
                  "data = open(sys.argv[2], 'rb').read(); f = [c(images=[data]) for _ in range(2)]; "
                  "print(float(f[1].pixel_values.sum()), flush=True); os._exit(0)")
        out = subprocess.run([sys.executable, "-c", script, uds, str(path)], capture_output=True, text=True,
                             timeout=120)
        assert out.returncode == 0, out.stderr[-2000:]
        assert _leases(state).statistics().granted == 2
        assert _until(lambda: _leases(state).statistics().outstanding == 0)
        assert _leases(state).statistics().reclaimed_gone == 2


def test_handles_only_over_the_unix_socket_and_clients_counted_by_name(tmp_path):
    """A TCP request asking for handles is a typed 400 naming ``format``; /metrics counts each named client's
    outcomes apart."""
    import re
    import urllib.request

    image = make_image(56, 84, "PNG")
    with serving(tmp_path, "qwen2_vl") as (http, uds):
        with pytest.raises(ValueError, match="unix://"):
            Client(http, handles=True)
        import aiohttp

        async def over_tcp():
            async with aiohttp.ClientSession() as session, session.post(
                    f"{http}/v1/preprocess?format=handles", json={"images": []}) as r:
                return r.status, await r.json()

        status, answer = asyncio.run(over_tcp())
        assert status == 400 and answer["item"] == "format" and "Unix socket" in answer["reason"]
        Client(uds, name="front-0")(images=[image])
        Client(http, name="front-1")(images=[image])
        with pytest.raises(SourceError):
            Client(http, name="front-1")(images=["not base64 at all!"])
        text = urllib.request.urlopen(f"{http}/metrics", timeout=10).read().decode()
        got = dict(re.findall(r'^gpu_mm_client_requests_total\{(client="[^"]+",outcome="[^"]+")\} (\S+)$', text,
                              re.M))
        assert got['client="front-0",outcome="ok"'] == "1.0" and got['client="front-1",outcome="ok"'] == "1.0"
        assert got['client="front-1",outcome="bad_input"'] == "1.0"


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


async def test_a_service_started_with_a_spec_serves_exactly_it_and_says_so(tmp_path):
    """``--spec FILE``: the service computes with that spec (a non-default one here), ``GET /v1/config`` returns it
    as written, and the features equal an in-process preprocessor's with that spec."""
    import json

    from gpu_mm import Qwen2VLConfig, Qwen2VLPreprocessor
    from gpu_mm.models.base import spec_to_json

    spec = Qwen2VLConfig(image_max_pixels=56 * 56, sampling="sglang", video_resample="bilinear")
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(spec_to_json(spec)))
    image = make_image(120, 160, "PNG")
    with serving(tmp_path, "gemma3", spec=str(path)) as (http, uds):  # --spec wins over --model
        async with Client(uds) as client:
            assert await client.spec() == json.loads(json.dumps(spec_to_json(spec)))
            remote = await client.preprocess(images=[image])
    assert_same(remote, Qwen2VLPreprocessor("cpu", config=spec, cache_bytes=0)(images=[image]))
    h, w = remote.items[0].resized
    assert h * w <= 56 * 56 < 120 * 160  # the spec's pixel bound, not the default


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen3_vl", "glm4v", "glm46v", "internvl", "internvl_chat", "gemma3"])
def test_every_familys_spec_round_trips_through_json(family):
    import json

    from gpu_mm.models import get_family
    from gpu_mm.models.base import spec_from_json, spec_to_json

    spec = get_family(family).config_class()
    assert spec_from_json(json.loads(json.dumps(spec_to_json(spec)))) == spec
    for bad in ({"family": "nope", "fields": {}}, {"family": family, "fields": {"no_such": 1}}, {"family": family}):
        with pytest.raises(ValueError):
            spec_from_json(bad)
