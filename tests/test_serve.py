"""``gpu-mm serve``: the HTTP front end maps errors to status codes and exposes Prometheus metrics; under
hostile clients every answer is JSON with the status its cause carries, nothing a client sends reaches the
server's disk, and the body, items and options are bounded and checked.

A fuzz test (hypothesis) sends generated bodies and checks the contract for each: a JSON answer, never a
500, counted in ``gpu_mm_requests_total``."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import pathlib
import re

import pytest

pytest.importorskip("aiohttp")
from aiohttp.test_utils import TestClient, TestServer  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from gpu_mm import InvalidRequest  # noqa: E402
from gpu_mm.concurrency import choose  # noqa: E402
from gpu_mm.serve import build_app  # noqa: E402

from json_strings import long_strings_reference  # noqa: E402
from media_helpers import clip, make_image  # noqa: E402


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


async def _client(**kw) -> TestClient:
    # Slot threads on the normal policy unless a test asks (slot processes take seconds to start).
    client = TestClient(TestServer(build_app(device="cpu", **{"workers": "threads", "idle_workers": False, **kw})))
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


def _children() -> list[int]:
    kids = []
    for t in os.listdir("/proc/self/task"):
        try:
            kids += [int(k) for k in pathlib.Path(f"/proc/self/task/{t}/children").read_text().split()]
        except FileNotFoundError:  # the thread ended meanwhile
            pass
    return kids


@pytest.mark.skipif(not hasattr(os, "memfd_create"), reason="slot processes need Linux (memfd)")
@pytest.mark.slow
async def test_slot_processes_are_ready_before_the_port_opens_and_answer_as_threads_do():
    before = set(_children())
    body = {"images": [b64(make_image(56, 84, "PNG"))], "videos": [b64(clip("h264", 48))]}
    answers = []
    for workers in ("auto", "threads"):  # auto: processes on the CPU
        client = await _client(workers=workers)
        try:
            started = set(_children()) - before
            c = choose("cpu")
            assert len(started) == (c.slots + c.express_slots if workers == "auto" else 0)  # one per slot
            r = await client.post("/v1/preprocess", json=body)
            assert r.status == 200
            answer = await r.json()
            answers.append({k: v for k, v in answer.items() if k != "items"})
            # How many keyframe runs a video decoded at once depends on what else ran as it started (lent cores).
            answers.append([{k: re.sub(r", \d keyframe runs at once", "", v) if k == "decoder" else v
                             for k, v in it.items() if k != "timings_ms"} for it in answer["items"]])
        finally:
            await client.close()
        assert set(_children()) - before == set()  # ended with the server
    assert answers[:2] == answers[2:]


async def test_serves_the_model_family_it_is_started_for():
    client = await _client(model="qwen3_vl")
    try:
        r = await client.post("/v1/preprocess", json={"videos": [b64(clip("h264", 48))], "nframes": 5})
        assert r.status == 200
        body = await r.json()
        assert body["items"][0]["frame_indices"] == [0, 12, 24, 35, 47]  # Qwen3-VL's rule
        assert body["pixel_values_videos"][1] == 3 * 2 * 16 * 16
    finally:
        await client.close()


@pytest.mark.parametrize(("model", "body", "pixels", "tokens"), [
    ("glm4v", {"videos": [b64(clip("h264", 48))]}, [120, 1176], 30),
    ("gemma3", {"images": [b64(make_image(300, 900, "PNG"))], "do_pan_and_scan": True}, [4, 3, 896, 896], 1024),
    ("internvl", {"images": [b64(make_image(60, 200, "PNG"))]}, [4, 3, 448, 448], 1024),
])
async def test_serves_the_other_families(model, body, pixels, tokens):
    client = await _client(model=model)
    try:
        status, answer = await _post(client, body)
        assert status == 200, answer
        assert answer.get("pixel_values", answer.get("pixel_values_videos")) == pixels
        assert answer["items"][0]["tokens"] == tokens
        status, answer = await _post(client, {**body, "video_start": 1.0})  # an option the family does not read
        assert status == 400 and answer["error"] == "InvalidRequest" and "video_start" in answer["message"]
    finally:
        await client.close()


async def test_a_benchmark_front_takes_the_requests_instead_of_the_processor():
    """The benchmark's baselines go in front of the same preprocessor (gpu_mm.bench.baselines), not in the server."""
    from gpu_mm.bench.baselines import Inline

    seen = []

    def front(pre, settings):
        seen.append((type(pre).__name__, settings.timeout_s))
        return Inline(pre)

    client = TestClient(TestServer(build_app(device="cpu", workers="threads", timeout_s=7.0, front=front)))
    await client.start_server()
    try:
        r = await client.post("/v1/preprocess", json={"images": [b64(make_image(56, 84, "PNG"))]})
        assert r.status == 200 and (await r.json())["items"][0]["grid_thw"] == [1, 4, 6]
        assert seen == [("Qwen2VLPreprocessor", 7.0)]
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


async def _post(client: TestClient, body) -> tuple[int, dict]:
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    r = await client.post("/v1/preprocess", data=data, headers={"Content-Type": "application/json"})
    assert r.content_type == "application/json", await r.text()
    return r.status, await r.json()


async def _requests_total(client: TestClient) -> float:
    text = await (await client.get("/metrics")).text()
    return sum(float(v) for v in re.findall(r'^gpu_mm_requests_total\{outcome="\w+"\} (\S+)$', text, re.M))


async def test_local_paths_refused_alike(tmp_path):
    real = tmp_path / "real.png"
    real.write_bytes(make_image(20, 20, "PNG"))
    client = await _client()
    try:
        answers = set()
        for item in (str(real), str(tmp_path / "missing.png"), f"file://{real}", {"path": str(real)},
                     {"image_url": {"url": f"file://{real}"}}, "/dev/zero", "/proc/self/fd/0"):
            status, body = await _post(client, {"images": [item]})
            assert status == 400 and body["error"] == "SourceError"
            answers.add(body["message"].split(": ", 1)[1].split("(", 1)[0])
        # The reason never depends on whether or what the file is (only the echoed string differs).
        assert len({a for a in answers if "local paths" in a or "not a data URI" in a}) == len(answers)
    finally:
        await client.close()


async def test_allowed_directory_serves_its_files_only(tmp_path):
    media = tmp_path / "media"
    media.mkdir()
    (media / "a.png").write_bytes(make_image(28, 28, "PNG"))
    (tmp_path / "b.png").write_bytes(make_image(28, 28, "PNG"))
    from gpu_mm import MediaLimits

    client = await _client(limits=MediaLimits.for_network(local_media_root=str(media)))
    try:
        assert (await _post(client, {"images": ["a.png"]}))[0] == 200
        status, body = await _post(client, {"images": ["../b.png"]})
        assert status == 400 and "allowed media directory" in body["message"]
        status, body = await _post(client, {"images": [f"file://{media}/a%00.png"]})
        assert status == 400 and body["error"] == "SourceError" and "NUL byte" in body["message"]
    finally:
        await client.close()


@pytest.mark.parametrize("body,field", [
    ({"videos": [], "fps": "abc"}, "fps"), ({"fps": 0}, "fps"), ({"fps": -1}, "fps"), ({"fps": 1e308}, "fps"),
    ({"nframes": "x"}, "nframes"), ({"video_start": "a"}, "video_start"), ({"colour": 1}, "colour"),
    ({"images": 5}, "images"), ({"images": ["aGVsbG8gd29ybGQgaGVsbG8="] * 65}, "images"),
    ([1, 2], "body"), ("[" * 100_000 + "]" * 100_000, "body"), (b"\xff\xfe{", "body"),
])
async def test_bad_requests_are_400_naming_the_field(body, field):
    client = await _client()
    try:
        status, answer = await _post(client, body)
        assert status == 400 and answer["error"] == "InvalidRequest" and answer["message"].startswith(field)
        assert await _requests_total(client) == 1
    finally:
        await client.close()


async def test_items_nested_deep_are_400():
    depth = 5000
    body = '{"images": [' + '{"image": ' * depth + json.dumps(b64(make_image(8, 8, "PNG"))) + "}" * depth + "]}"
    client = await _client()
    try:
        status, answer = await _post(client, body)
        assert status == 400 and answer["error"] in ("InvalidRequest", "SourceError")
    finally:
        await client.close()


async def test_media_no_decoder_takes_is_400():
    svg = b'<svg xmlns="http://www.w3.org/2000/svg" width="9" height="9"><rect width="9" height="9"/></svg>'
    client = await _client()
    try:
        status, answer = await _post(client, {"videos": [b64(svg)]})
        assert status == 400 and answer["error"] == "UnsupportedMedia" and "video[0]" in answer["message"]
    finally:
        await client.close()


async def test_oversized_body_is_413_and_the_body_budget_503():
    client = await _client(max_body_bytes=1024, body_budget_bytes=4096)
    try:
        status, answer = await _post(client, {"images": ["A" * 4096]})
        assert status == 413 and "max_body_bytes=1024" in answer["message"]
    finally:
        await client.close()


async def test_body_budget_refuses_before_reading():
    started = asyncio.Event()
    release = asyncio.Event()
    client = await _client(max_body_bytes=1000, body_budget_bytes=1500)
    try:
        async def slow_body():
            yield b'{"images": ["'
            started.set()
            await release.wait()
            yield b'"]}'

        # A chunked body has no length: it reserves max_body_bytes of the budget while it is read.
        first = asyncio.ensure_future(client.post("/v1/preprocess", data=slow_body()))
        await asyncio.wait_for(started.wait(), 5)
        await asyncio.sleep(0.05)
        status, answer = await _post(client, {"images": ["A" * 600]})
        assert status == 503 and "body_budget_bytes" in answer["message"]
        release.set()
        assert (await first).status == 400
        status, _ = await _post(client, {"images": ["A" * 600]})
        assert status == 400  # the budget came back (the item itself is not an image)
    finally:
        await client.close()


async def test_unforeseen_errors_are_json_500_and_counted(monkeypatch):
    from gpu_mm.pipeline.plan import Planner

    def broken(self, *a, **kw):
        raise KeyError("a bug")

    monkeypatch.setattr(Planner, "plan_all", broken)
    client = await _client()
    try:
        status, answer = await _post(client, {"images": [b64(make_image(8, 8, "PNG"))]})
        assert status == 500
        assert answer == {"error": "InternalError", "message": "internal error (logged on the server)"}
        text = await (await client.get("/metrics")).text()
        assert 'gpu_mm_requests_total{outcome="error"} 1.0' in text
        r = await client.get("/no/such/route")
        assert r.status == 404 and r.content_type == "application/json"
    finally:
        await client.close()


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
_fields = st.sampled_from(["images", "videos", "fps", "nframes", "video_start", "video_end", "min_pixels",
                           "max_pixels", "total_pixels", "image_url", "path"])
_bodies = st.one_of(
    _json,
    st.dictionaries(_fields, _json, max_size=4),
    st.dictionaries(_fields, st.sampled_from([
        [b64(make_image(12, 12, "PNG"))], [b64(clip("h264", 8, h=32, w=32))], ["/etc/passwd"], 0, -1.5, "x",
        [{"image": {"image": "file:///dev/zero"}}], ["data:image/png;base64,@@"],
    ]), max_size=4),
    st.binary(max_size=64),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(bodies=st.lists(_bodies, min_size=1, max_size=8))
def test_fuzzed_bodies_get_json_4xx_or_200_never_500(bodies):
    async def run():
        client = await _client(max_body_bytes=1 << 20)
        try:
            for body in bodies:
                data = body if isinstance(body, bytes) else json.dumps(body)
                r = await client.post("/v1/preprocess", data=data)
                assert r.content_type == "application/json"
                answer = await r.json()
                assert r.status in (200, 400, 413), (r.status, answer, data[:200])
                if r.status != 200:
                    # The error's class and message; what it names and why, when it names something.
                    assert set(answer) in ({"error", "message"}, {"error", "message", "item", "reason"})
                    assert answer.get("item", "") in answer["message"]
            assert await _requests_total(client) == len(bodies)
        finally:
            await client.close()

    asyncio.run(run())


async def test_repeats_are_cache_hits_visible_in_answers_and_metrics():
    client = await _client()
    try:
        body = {"images": [b64(make_image(56, 56, "PNG"))]}
        first, again = [(await _post(client, body))[1] for _ in range(2)]
        assert first["items"][0]["cache"] == "miss" and again["items"][0]["cache"] == "hit"
        text = await (await client.get("/metrics")).text()
        assert "gpu_mm_cache_hits_total 1.0" in text and "gpu_mm_cache_entries 1.0" in text
    finally:
        await client.close()


async def test_cache_off_with_zero():
    client = await _client(cache_bytes=0)
    try:
        body = {"images": [b64(make_image(56, 56, "PNG"))]}
        answers = [(await _post(client, body))[1] for _ in range(2)]
        assert [a["items"][0]["cache"] for a in answers] == [None, None]
    finally:
        await client.close()


@pytest.mark.parametrize("asked", [5e-4, None])
def test_run_sets_the_switch_interval_before_serving(monkeypatch, asked):
    import sys

    from aiohttp import web

    import gpu_mm.serve as serve

    seen = {}
    monkeypatch.setattr(serve, "tune_allocator", lambda: {"applied": False})
    monkeypatch.setattr(serve, "build_app", lambda settings, **kw: seen.setdefault("app", object()))
    monkeypatch.setattr(serve, "freeze_gc", lambda: None)
    monkeypatch.setattr(web, "run_app", lambda app, **kw: seen.setdefault("interval", sys.getswitchinterval()))
    before = sys.getswitchinterval()
    try:
        sys.setswitchinterval(0.005)
        serve.run(serve.Settings(port=0, switch_interval_s=asked))
        assert seen["interval"] == pytest.approx(0.005 if asked is None else asked)
    finally:
        sys.setswitchinterval(before)


def test_freeze_gc_moves_start_up_objects_out_of_the_collectors_reach():
    import gc

    from gpu_mm.runtime import freeze_gc

    tracked = len(gc.get_objects())  # what a full collection walks
    try:
        freeze_gc()
        assert gc.get_freeze_count() > 10_000  # torch's and the tests' objects, at least
        assert len(gc.get_objects()) < tracked // 10  # a full collection now walks almost nothing
    finally:
        gc.unfreeze()


# ------------------------------------------------------------------ the body: read in chunks, parsed off the GIL

_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=_json_values, ensure_ascii=st.booleans(), indent=st.sampled_from([None, 0, 2]))
def test_loads_json_equals_json_loads(monkeypatch, value, ensure_ascii, indent):
    """With literals of 4 bytes or more cut out (escaped, non-ASCII, control-character and key literals among
    them), the parsed value is json.loads' own."""
    import gpu_mm.serve as serve

    if serve._ingest is None:
        pytest.skip("gpu_mm._ingest was not built (no C compiler at install): loads_json is json.loads")
    monkeypatch.setattr(serve, "_LONG_STRING", 4)
    raw = json.dumps(value, ensure_ascii=ensure_ascii, indent=indent).encode()
    assert serve.loads_json(raw) == json.loads(raw)


@pytest.mark.parametrize("raw", [
    b'{"videos": ["AAAAAAAA\x01AAAA"]}',  # a control character inside a long literal
    b'{"videos": ["AAAAAAAA\xffAAAA"]}',  # not UTF-8
    b'{"videos": ["AAAAAAAAAAAA"',  # unterminated
    b'{"videos": "AAAAAAAAAAAA" "AAAAAAAAAAAA"}',  # two strings in a row
    b'["AAAAAAAAAAAA\\"]',  # the closing quote escaped
    b'{"AAAAAAAAAAAA" "x"}',  # a key literal without its colon
])
def test_loads_json_refuses_what_json_loads_refuses(monkeypatch, raw):
    import gpu_mm.serve as serve

    monkeypatch.setattr(serve, "_LONG_STRING", 4)
    with pytest.raises(ValueError):
        json.loads(raw)
    with pytest.raises(ValueError):
        serve.loads_json(raw)


@pytest.mark.parametrize("raw", [
    json.dumps({"videos": ["A" * 40, "\u4e2d" * 20]}).encode("utf-16"),  # json.loads detects UTF-16/32
    json.dumps({"videos": ["A" * 40]}).encode("utf-32-be"),
    b'\xef\xbb\xbf{"videos": ["' + b"A" * 40 + b'"]}',  # a UTF-8 byte order mark
    b'{"videos": ["AAAAAAAA\xed\xa0\x80AAAA"]}',  # an encoded lone surrogate: json.loads takes it
])
def test_loads_json_decodes_bytes_as_json_loads_does(monkeypatch, raw):
    import gpu_mm.serve as serve

    monkeypatch.setattr(serve, "_LONG_STRING", 4)
    assert serve.loads_json(raw) == json.loads(raw)


def test_a_client_cannot_forge_a_placeholder(monkeypatch):
    import gpu_mm.serve as serve

    monkeypatch.setattr(serve, "_LONG_STRING", 4)
    raw = json.dumps({"videos": ["\x00gpu-mm:0000000000000000:0", "A" * 32]}).encode()
    assert serve.loads_json(raw) == json.loads(raw)


async def test_a_trickled_chunked_body_is_read_whole_and_bounded():
    """A body sent in many tiny chunks arrives whole (gathered into 64 KiB blocks, not a list of millions of
    one-byte chunks), and a chunked body past max_body_bytes is refused with 413 while it is read."""
    from gpu_mm.serve import _BODY_BLOCK, read_body

    class Trickle:
        def __init__(self, data: bytes, step: int) -> None:
            self.parts = [data[i : i + step] for i in range(0, len(data), step)]

        async def readany(self) -> bytes:
            return self.parts.pop(0) if self.parts else b""

    data = bytes(range(256)) * 1000
    chunks = await read_body(Trickle(data, 7), 1 << 20)
    assert b"".join(chunks) == data and len(chunks) <= len(data) // _BODY_BLOCK + 1
    big = await read_body(Trickle(data, _BODY_BLOCK * 2), 1 << 20)
    assert b"".join(big) == data
    with pytest.raises(InvalidRequest, match="max_body_bytes=1000"):
        await read_body(Trickle(data, 7), 1000)

    client = await _client(max_body_bytes=1024, body_budget_bytes=4096)
    try:
        async def body():
            for _ in range(64):
                yield b"A" * 64

        r = await client.post("/v1/preprocess", data=body())
        assert r.status == 413 and "max_body_bytes=1024" in (await r.json())["message"]
    finally:
        await client.close()


@settings(max_examples=500, deadline=None)
@given(raw=st.one_of(st.binary(max_size=80), st.lists(st.sampled_from(list(b'"\\:AB= \n\x01{}[],')), max_size=60)
                     .map(bytes)), min_len=st.integers(1, 8))
def test_long_strings_scans_any_bytes_as_the_reference_does(raw, min_len):
    """Any bytes at all (the scanner runs on hostile bodies before json.loads has judged them): the same spans as
    a plain Python reading of JSON's string grammar, and no read past the end (an ASAN build ran this too)."""
    from gpu_mm import serve

    if serve._ingest is None:
        pytest.skip("gpu_mm._ingest was not built (no C compiler at install)")
    assert serve._ingest.long_strings(raw, min_len) == long_strings_reference(raw, min_len)


@settings(max_examples=300, deadline=None)
@given(raw=st.binary(max_size=200), cuts=st.lists(st.integers(0, 200), max_size=6), span=st.tuples(
    st.integers(0, 200), st.integers(0, 200)))
def test_join_and_ascii_text_are_pythons_own(raw, cuts, span):
    """The copies parsing makes without the GIL: ``join`` equals ``b"".join`` over any cut of any bytes, and
    ``ascii_text`` the ASCII text of any span (what ``str(view, "utf-8")`` gives then), None when it is not ASCII
    (the caller decodes it as UTF-8 then)."""
    from gpu_mm import serve

    if serve._ingest is None:
        pytest.skip("gpu_mm._ingest was not built (no C compiler at install)")
    edges = sorted({0, len(raw), *(c for c in cuts if c <= len(raw))})
    chunks = [raw[a:b] for a, b in zip(edges, edges[1:])]
    assert serve._ingest.join(chunks) == b"".join(chunks)
    a, b = sorted(min(x, len(raw)) for x in span)
    text = serve._ingest.ascii_text(raw, a, b)
    if raw[a:b].isascii():
        assert text == str(memoryview(raw)[a:b], "utf-8", "surrogatepass") and type(text) is str
    else:
        assert text is None


def test_join_and_ascii_text_refuse_what_they_cannot_copy():
    from gpu_mm import serve

    if serve._ingest is None:
        pytest.skip("gpu_mm._ingest was not built (no C compiler at install)")
    one = b"x" * 100
    assert serve._ingest.join([one]) is one  # as b"".join: a single chunk is that very object
    assert serve._ingest.join([]) == b""
    for bad in ([b"a", bytearray(b"b")], (b"a", b"b"), [b"a", "b"]):
        with pytest.raises(TypeError):
            serve._ingest.join(bad)
    for start, end in ((-1, 2), (3, 2), (0, 101)):
        with pytest.raises(ValueError, match="not within a buffer of 100 bytes"):
            serve._ingest.ascii_text(one, start, end)
    assert serve._ingest.ascii_text(memoryview(one), 10, 10) == ""


def test_parse_request_joins_chunks_as_one_body():
    from gpu_mm.serve import parse_request

    body = json.dumps({"images": ["A" * 200_000], "videos": ["B" * 70_000]}).encode()
    chunks = [body[i : i + 65536] for i in range(0, len(body), 65536)]
    images, videos, *_ = parse_request(chunks)
    assert images == ["A" * 200_000] and videos == ["B" * 70_000]


async def test_reads_are_limited_per_connection():
    """limit_reads: a connection's socket reads return at most the limit (each event loop iteration does that
    much per ready connection), the bytes all arrive; transports without asyncio's ``max_size`` are left alone."""
    from gpu_mm.serve import limit_reads

    sizes: list[int] = []
    done = asyncio.get_running_loop().create_future()
    applied = []

    class Sink(asyncio.Protocol):
        def connection_made(self, transport):
            applied.append(limit_reads(transport, 4096))

        def data_received(self, data):
            sizes.append(len(data))

        def connection_lost(self, exc):
            done.set_result(None)

    server = await asyncio.get_running_loop().create_server(Sink, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"x" * 300_000)
        await writer.drain()
        writer.close()
        await asyncio.wait_for(done, 10)
    finally:
        server.close()
    assert applied == [True] and sum(sizes) == 300_000 and max(sizes) <= 4096

    class Other:  # e.g. uvloop's transports: no max_size to set
        pass

    assert not limit_reads(Other(), 4096) and not limit_reads(None, 4096)


async def test_served_answers_are_the_same_with_small_reads():
    """A video upload read 4 KiB at a time gets the same answer as with the event loop's own read size."""
    body = {"videos": [base64.b64encode(clip("h264", 8)).decode()]}
    answers = []
    for chunk in (0, 4096):
        client = await _client(read_chunk_bytes=chunk)
        try:
            r = await client.post("/v1/preprocess", json=body)
            assert r.status == 200
            answers.append(await r.json())
        finally:
            await client.close()
    for a in answers:
        for item in a["items"]:
            item.pop("timings_ms")
    assert answers[0] == answers[1]


async def test_an_omni_service_takes_audios_and_answers_the_in_process_features():
    """Audio in the body (``audios``, base64), with a video's own track: the summary, and the safetensors body
    holding the in-process preprocessor's tensors bit for bit."""
    import torch

    import gpu_mm
    from gpu_mm.media.synth import make_audio, make_video
    from gpu_mm.wire import features_from_body

    song, film = make_audio(2.0, 44100, codec="flac", fmt="flac"), make_video(30, 64, 96, audio_rate=48000)
    body = {"audios": [b64(song)], "videos": [b64(film)], "use_audio_in_video": True}
    client = await _client(model="qwen2_5_omni")
    try:
        status, answer = await _post(client, body)
        assert status == 200, answer
        assert [i["kind"] for i in answer["items"]] == ["video", "audio", "audio"]
        assert answer["input_features"] == [2, 128, 30000]
        r = await client.post("/v1/preprocess?format=safetensors", json=body)
        assert r.status == 200
        got = features_from_body(await r.read()).to_dict()
    finally:
        await client.close()
    want = gpu_mm.Preprocessor.for_model("qwen2_5_omni", device="cpu")(
        videos=[film], audios=[song], use_audio_in_video=True).to_dict()
    assert set(got) == set(want)
    for key in want:
        assert torch.equal(got[key], want[key]), key


def _flac_claiming(seconds: float) -> bytes:
    """A 16 kHz FLAC holding one second whose STREAMINFO declares ``seconds`` of samples (its total: the low 36 bits
    of the big-endian 64 bits at bytes 18-25, after ``fLaC`` and the block header)."""
    from gpu_mm.media.synth import make_audio

    flac = bytearray(make_audio(1.0, codec="flac", fmt="flac"))
    assert flac[:4] == b"fLaC"
    word = int.from_bytes(flac[18:26], "big")
    word = (word & ~((1 << 36) - 1)) | int(seconds * 16000)
    flac[18:26] = word.to_bytes(8, "big")
    return bytes(flac)


async def test_hostile_audio_is_a_typed_400_naming_the_item_and_the_service_carries_on():
    from gpu_mm.media.synth import make_audio

    wav = make_audio(1.0)
    huge_rate = bytearray(wav)
    huge_rate[24:28] = (10_000_000).to_bytes(4, "little")
    cases = {
        "truncated header": (wav[:30], {"DecodeError", "UnsupportedMedia"}),
        "a 10 MHz sample rate": (bytes(huge_rate), {"UnsupportedMedia"}),
        "two hours declared": (_flac_claiming(7200.0), {"LimitExceeded"}),
        "an image": (make_image(32, 32, "PNG"), {"UnsupportedMedia"}),
        "zero length": (b"", {"SourceError", "InvalidRequest"}),
    }
    client = await _client(model="qwen3_omni_moe")
    try:
        for name, (data, errors) in cases.items():
            status, answer = await _post(client, {"audios": [b64(wav), b64(data)]})
            assert status == 400 and answer["error"] in errors, (name, answer)
            assert "audio[1]" in answer["message"], (name, answer)
        status, answer = await _post(client, {"audios": [b64(wav)]})
        assert status == 200 and answer["input_features"] == [1, 128, 100]
        status, answer = await _post(client, {"audios": [b64(wav)], "images": [b64(make_image(8, 8, "PNG"))],
                                              "fps": 1.0})
        assert status == 200, answer
    finally:
        await client.close()
    qwen = await _client()
    try:
        status, answer = await _post(qwen, {"audios": [b64(wav)]})
        assert status == 400 and answer["error"] == "UnsupportedMedia" and "audio" in answer["message"]
    finally:
        await qwen.close()


async def test_metrics_state_the_memory_budget_and_what_is_held():
    """/metrics and statistics() say what the preprocessor may hold (working memory, cache) and holds now."""
    client = await _client(memory_budget_bytes=1 << 30, cache_bytes=64 << 20, decode_threads=3)
    try:
        status, _ = await _post(client, {"images": [b64(make_image(56, 84, "PNG"))]})
        assert status == 200
        text = await (await client.get("/metrics")).text()
    finally:
        await client.close()
    assert 'gpu_mm_memory_budget_bytes{device="cpu",part="working"} 1.073741824e+09' in text
    assert 'gpu_mm_memory_budget_bytes{device="cpu",part="cache"} 6.7108864e+07' in text
    held = re.search(r'gpu_mm_memory_held_bytes\{device="cpu",part="cache"\} (\S+)', text)
    assert held and float(held.group(1)) == 24 * 1176 * 4  # the one image's rows, cached
    assert re.search(r'gpu_mm_memory_held_bytes\{device="cpu",part="working"\} 0\.0', text)
    # The threads videos' keyframe runs may borrow (--decode-threads), and how many are lent now.
    assert "gpu_mm_decode_threads 3.0" in text and "gpu_mm_decode_threads_lent 0.0" in text
