"""``gpu-mm serve``: a small asyncio HTTP front end (aiohttp) over a model family's preprocessor.

``POST /v1/preprocess`` takes JSON ``{"images": [...], "videos": [...], "audios": [...], "fps": ...}``
whose items are base64 strings or data URIs (plus http(s) URLs with ``allow_urls``, and files inside one
directory with ``local_media_root``). It answers with the features themselves as a safetensors body
(:mod:`gpu_mm.wire`) when asked (``?format=safetensors`` or ``Accept: application/octet-stream``;
:class:`gpu_mm.Client` asks), else with a JSON summary: grids, shapes, token counts, decoders and per-stage
timings. ``GET /health`` answers at once; ``GET /metrics`` is Prometheus exposition. Besides TCP it listens on a
Unix domain socket with ``--uds PATH`` (created mode 0600: only the server's user may connect).

Everything a client sends is hostile: the body is bounded in size (``max_body_bytes``) and bodies being
read or processed are bounded together (``body_budget_bytes``, else 503 at once), the JSON is parsed off
the loop, every option is type- and range-checked, and every error is a JSON answer with the status its
type carries (400 bad input, 413 too large, 503 overloaded, 504 timeout, 500 for anything unforeseen,
which is logged and counted).

Settings: :class:`gpu_mm.Settings`. The benchmark's baselines (the seed's wrapper, work inline on the loop) are
put in front of the same preprocessor by :mod:`gpu_mm.bench.baselines`, not by the server.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import importlib
import json
import logging
import pickle
import re
import secrets
import time
import weakref
from collections.abc import Callable
from typing import Any, NamedTuple

from . import uploads
from ._procslots import process_threads
from .errors import GpuMMError, InvalidRequest, Overloaded, ProcessingTimeout
from .leases import HandleLeases, Peer, peer_of
from .media.sources import MediaLimits
from .models.base import spec_from_json, spec_to_json
from .options import RequestOptions
from .pipeline import Preprocessor, resolve_device
from .pipeline.families import preprocessor_class
from .processor import AsyncMMDataProcessor
from .runtime import freeze_gc, tune_allocator
from .sched import reset_inherited_slice
from .settings import Settings
from .wire import CONTENT_TYPE, HANDLE_CONTENT_TYPE, features_to_body, split_output

_ingest: Any
try:  # built at install when a C compiler is there (setup.py); json.loads and b"".join otherwise
    _ingest = importlib.import_module("gpu_mm._ingest")
except ImportError:  # pragma: no cover - depends on the install
    _ingest = None

logger = logging.getLogger(__name__)

DEFAULT_MAX_ITEMS = 64
"""Images, videos and audios in one request."""


def _summary(out: dict[str, Any]) -> dict[str, Any]:
    return {
        "items": [
            {"item": r.item, "kind": r.kind, "grid_thw": list(r.grid_thw), "tokens": r.num_tokens,
             "decoder": r.decoder, "frame_indices": r.frame_indices, "cache": r.cache,
             "timings_ms": {k: round(v * 1e3, 3) for k, v in r.timings.items()}}
            for r in out["items"]
        ],
        **{k: list(out[k].shape) for k in ("pixel_values", "pixel_values_videos", "input_features") if k in out},
    }


def limit_reads(transport: Any, nbytes: int) -> bool:
    """Read at most ``nbytes`` per socket read on this connection.

    An event loop iteration makes one read on every connection that has data, so while 16 clients upload at
    once, one iteration copied 16 x 256 KiB and ran its callbacks before the loop looked at anything else: the
    serving loop ran 8 ms at a stretch in the uploads' first second (``perf sched timehist`` on the 2-core
    machine), which is what a /health probe arriving then waited for. At 64 KiB an iteration does a quarter of
    that. asyncio's selector transports read ``max_size`` bytes (a class attribute, set here on the instance);
    other transports (uvloop's) are left as they are.

    Returns:
        whether the limit applies to this transport.
    """
    if transport is None or not isinstance(getattr(type(transport), "max_size", None), int):
        return False
    try:
        transport.max_size = nbytes
    except AttributeError:  # a transport without an instance dict
        return False
    return True


_BODY_BLOCK = 1 << 16
"""Body chunks smaller than this are gathered into blocks of this size as they arrive."""


async def read_body(content: Any, max_bytes: int) -> list[bytes]:
    """A request body as the chunks it arrived in, joined off the loop by :func:`parse_request`.

    aiohttp's ``Request.read()`` grows one ``bytearray`` chunk by chunk and copies it once more at the end: for
    a 2.8 MB base64 video that is ~5 ms of copying on the event loop, with the GIL held (measured with
    ``py-spy --gil`` under 16 such uploads: the loop's largest holder). Here the loop only keeps references;
    chunks under 64 KiB (a client trickling bytes) are gathered into 64 KiB blocks so that the list stays short.

    Raises:
        InvalidRequest: the body grew past ``max_bytes``.
    """
    chunks: list[bytes] = []
    small = bytearray()
    size = 0
    while chunk := await content.readany():
        size += len(chunk)
        if size > max_bytes:
            raise InvalidRequest("body", f"over max_body_bytes={max_bytes}")
        if len(chunk) >= _BODY_BLOCK:
            if small:
                chunks.append(bytes(small))
                small.clear()
            chunks.append(chunk)
            continue
        small += chunk
        if len(small) >= _BODY_BLOCK:
            chunks.append(bytes(small))
            small.clear()
    if small:
        chunks.append(bytes(small))
    return chunks


class ParsedRequest(NamedTuple):
    """A ``/v1/preprocess`` body's media lists and options, and the call's own spec (its JSON) if it names one."""

    images: list[Any]
    videos: list[Any]
    options: RequestOptions
    audios: list[Any]
    spec: dict[str, Any] | None = None


def parse_request(raw: bytes | list[bytes], max_items: int = DEFAULT_MAX_ITEMS) -> ParsedRequest:
    """Parse and check a ``/v1/preprocess`` body, whole or as the chunks :func:`read_body` returns (runs off the
    event loop).

    Raises:
        InvalidRequest: not a JSON object, too deep, unknown fields, wrong item lists or option values.
    """
    if isinstance(raw, list):  # one chunk: that very object, no copy; more: copied without the GIL where built
        raw = b"".join(raw) if _ingest is None else _ingest.join(raw)
    try:
        body = loads_json(raw)
    except RecursionError:
        raise InvalidRequest("body", "JSON nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidRequest("body", f"not valid JSON ({str(exc)[:80]})") from None
    if not isinstance(body, dict):
        raise InvalidRequest("body", f"must be a JSON object, got {type(body).__name__}")
    lists = []
    for key in ("images", "videos", "audios"):
        items = body.pop(key, None)
        if items is None:
            items = []
        elif isinstance(items, (str, dict)):
            items = [items]
        elif not isinstance(items, list):
            raise InvalidRequest(key, f"must be a list of media items, got {type(items).__name__}")
        lists.append(items)
    if sum(map(len, lists)) > max_items:
        raise InvalidRequest("images", f"{sum(map(len, lists))} items is over max_items={max_items}")
    spec = body.pop("spec", None)
    if spec is not None and not isinstance(spec, dict):
        raise InvalidRequest("spec", "must be a spec object (gpu_mm.models.base.spec_to_json), got "
                                     f"{type(spec).__name__}")
    return ParsedRequest(lists[0], lists[1], RequestOptions.parse(body), lists[2], spec)


def take_uploads(parsed: ParsedRequest, peer_uid: int | None, max_bytes: int) -> ParsedRequest:
    """A parsed request with its images' and videos' shared-memory uploads (:mod:`gpu_mm.uploads`) mapped as
    arrays: only from a process of the node, over the Unix socket (``peer_uid``); each at most ``max_bytes``."""
    lists = []
    for kind, items in (("image", parsed.images), ("video", parsed.videos)):
        lists.append([uploads.take(x, f"{kind}[{i}]", peer_uid, max_bytes) if uploads.is_upload(x) else x
                      for i, x in enumerate(items)])
    return parsed._replace(images=lists[0], videos=lists[1])


_LONG_STRING = 1 << 16
"""String literals at least this long (a base64 image or video) are cut out before ``json.loads`` runs."""


def loads_json(raw: bytes) -> Any:
    """``json.loads(raw)``, the same value and the same refusals, holding the GIL only briefly.

    ``json.loads`` is one C call: for a body carrying a 2.8 MB base64 video it held the GIL for 2 ms alone and
    for up to 7 ms under load, the event loop's thread waiting all along (perf uprobes on the interpreter's
    ``take_gil``/``drop_gil`` in ``gpu-mm serve`` under 16 concurrent video uploads). Where gpu-mm's C extension
    is built, the long string literals are found without the GIL (``gpu_mm._ingest.long_strings``: only
    literals without escapes or control characters, so their text is their value), replaced by placeholders no
    client can guess, the rest parsed by ``json.loads``, and the placeholders then swapped for the literals'
    text (decoded as ``json.loads`` decodes bytes; a UTF-16 or UTF-32 body has a zero byte in every literal,
    so nothing is cut from it). An ASCII literal (base64 is) is made a ``str`` without the GIL too
    (``_ingest.ascii_text``), as :func:`parse_request` joins a body's chunks (``_ingest.join``): done in Python,
    each copy held the GIL ~0.1 ms per MB in one call that no switch request interrupts. Measured under hostile
    load (``gpu_mm.bench.hostile``): a server doing nothing but parse each body as this does on one thread
    answered /health with a p99 of 5.2-11.3 ms vs 3.4-4.5 ms without the parse (three interleaved rounds); with
    the copies GIL-free 2.5-8.1 vs 3.3-15.3 ms (four rounds, better in each); ``gpu-mm serve`` 5.1-6.3 vs
    5.9-7.4 ms (five rounds, better in four), max 7.4-9.9 vs 7.7-20.6 ms.

    Raises:
        ValueError: not JSON (``json.JSONDecodeError``, or a long literal that is not UTF-8).
        RecursionError: nested too deeply.
    """
    if _ingest is None or len(raw) < _LONG_STRING:
        return json.loads(raw)
    spans = _ingest.long_strings(raw, _LONG_STRING)
    if not spans:
        return json.loads(raw)
    token = secrets.token_hex(8)
    parts: list[bytes | memoryview] = []
    texts: dict[str, str] = {}
    view = memoryview(raw)
    at = 0
    for k, (start, end) in enumerate(spans):
        name = f"gpu-mm:{token}:{k}"
        parts += [view[at:start], f"\\u0000{name}".encode()]  # parsed as "\x00" + name
        text = _ingest.ascii_text(raw, start, end)  # base64 is ASCII: copied without the GIL
        # otherwise decoded as json.loads decodes bytes
        texts["\x00" + name] = text if text is not None else str(view[start:end], "utf-8", "surrogatepass")
        at = end
    parts.append(view[at:])
    value = json.loads(b"".join(parts))
    return _swap_placeholders(value, texts)


def _swap_placeholders(value: Any, texts: dict[str, str]) -> Any:
    """Put the cut-out literals back (iteratively: the parsed value may nest as deep as ``json.loads`` allows)."""
    if isinstance(value, str):
        return texts.get(value, value)
    stack = [value] if isinstance(value, (dict, list)) else []
    while stack:
        node = stack.pop()
        items = list(node.items()) if isinstance(node, dict) else list(enumerate(node))
        for key, item in items:
            if isinstance(item, str):
                if item in texts:
                    node[key] = texts[item]
            elif isinstance(item, (dict, list)):
                stack.append(item)
    return value


def _error(exc: BaseException, status: int) -> Any:
    from aiohttp import web

    name = type(exc).__name__ if isinstance(exc, GpuMMError) else "InternalError"
    message = str(exc) if isinstance(exc, GpuMMError) else "internal error (logged on the server)"
    body = {"error": name, "message": message}
    # What the error names (an item or a field) and why, so that a client raises the same typed error.
    item = getattr(exc, "item", getattr(exc, "field", None))
    if isinstance(exc, GpuMMError) and isinstance(item, str) and isinstance(getattr(exc, "reason", None), str):
        body.update(item=item, reason=exc.reason)  # type: ignore[attr-defined]
    return web.json_response(body, status=status)


_LEASES: weakref.WeakKeyDictionary[Any, HandleLeases] = weakref.WeakKeyDictionary()


def leases_of(app: Any) -> HandleLeases | None:
    """The :class:`gpu_mm.leases.HandleLeases` of an application built with ``uds`` set (else None)."""
    return _LEASES.get(app)


FORMATS = ("json", "safetensors", "handles")


def answer_format(request: Any) -> str:
    """What a request asks for: ``json`` (the summary), ``safetensors`` (the features as a body) or ``handles``
    (the features in a shared block, :mod:`gpu_mm.leases`), from ``?format=`` or else its ``Accept`` header."""
    fmt = request.query.get("format")
    if fmt is not None:
        if fmt not in FORMATS:
            raise InvalidRequest("format", f"must be one of {list(FORMATS)}, got {fmt[:40]!r}")
        return str(fmt)
    accept = request.headers.get("Accept", "")
    return "handles" if HANDLE_CONTENT_TYPE in accept else "safetensors" if CONTENT_TYPE in accept else "json"


_CLIENT_NAME = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
MAX_CLIENT_NAMES = 64
"""Distinct client names /metrics counts apart (``X-GPU-MM-Client``); further ones count as ``other``."""


def client_name(request: Any, seen: set[str]) -> str:
    """The name a request's client gives itself (``X-GPU-MM-Client``, as :class:`gpu_mm.Client` sends its
    ``name``), bounded for /metrics: ``anonymous`` without one, ``invalid`` for a malformed one, ``other`` past
    :data:`MAX_CLIENT_NAMES` names."""
    name = request.headers.get("X-GPU-MM-Client")
    if name is None:
        return "anonymous"
    if not _CLIENT_NAME.fullmatch(name):
        return "invalid"
    if name not in seen:
        if len(seen) >= MAX_CLIENT_NAMES:
            return "other"
        seen.add(name)
    return str(name)


def build_app(
    settings: Settings | None = None,
    *,
    limits: MediaLimits | None = None,
    max_items: int = DEFAULT_MAX_ITEMS,
    front: Callable[[Preprocessor, Settings], Any] | None = None,
    **fields: Any,
) -> Any:
    """Build the aiohttp application from ``settings`` (:class:`gpu_mm.Settings`; ``fields`` replace some of them,
    e.g. ``build_app(device="cpu", timeout_s=5)``).

    ``limits`` default to :meth:`MediaLimits.for_network` (inline media only, local files and URLs as the settings
    allow) with ``max_bytes`` no larger than a body can carry. ``front`` (benchmarks): what requests go through
    instead of :class:`AsyncMMDataProcessor`, built as ``front(preprocessor, settings)``: an object with
    ``async process(image_data=..., video_data=..., **options)`` (:mod:`gpu_mm.bench.baselines`).
    """
    from aiohttp import web

    from .metrics import PrometheusMetrics

    settings = dataclasses.replace(settings or Settings(), **fields)
    max_body_bytes, body_budget_bytes = settings.max_body_bytes, settings.body_budget_bytes
    read_chunk_bytes = settings.read_chunk_bytes
    if limits is None:
        limits = MediaLimits.for_network(allow_urls=settings.allow_urls,
                                         local_media_root=settings.allowed_local_media_path,
                                         allow_private_urls=settings.allow_private_urls, max_bytes=max_body_bytes)
    device = resolve_device(settings.device)
    kwargs = settings.preprocessor_kwargs(device)
    workers, idle_workers = kwargs["workers"], kwargs["idle_workers"]
    if settings.spec is not None:  # the exact settings a client (a plug-in) computes with
        with open(settings.spec, encoding="utf-8") as f:
            spec = spec_from_json(json.load(f))
        pre = preprocessor_class(spec.family)(config=spec, limits=limits, **kwargs)
    else:
        pre = Preprocessor.for_model(settings.model, limits=limits, **kwargs)
    family = pre.config.family
    served_spec = spec_to_json(pre.config)
    c = pre.concurrency
    logger.info("%s on %s: %d slots + %d express (%s), each slot's work in %s; up to %d threads to lend to "
                "videos' keyframe runs", type(pre).__name__, pre.device, c.slots, c.express_slots, c.reason,
                f"a process of its own ({process_threads(c.cores, c.slots + c.express_slots)} torch threads each)"
                if workers == "processes" else "its thread", c.spare_threads)
    if idle_workers:
        from .sched import _idle_is_reversible

        logger.info("slot threads: %s", "SCHED_IDLE, starvation-guarded" if _idle_is_reversible() else
                    "normal policy (a thread could not leave SCHED_IDLE again here: needs root or CAP_SYS_NICE)")
    metrics = PrometheusMetrics()
    metrics.watch_cache(pre.cache)
    metrics.watch_memory(pre)
    leases = None
    if settings.uds is not None:  # features handed to the socket's clients in shared blocks (gpu_mm.leases)
        leases = HandleLeases(pre.device if pre.output == "device" else "cpu", max_blocks=settings.handle_blocks,
                              lease_s=settings.handle_lease_s)
        metrics.watch_leases(leases)
    clients: set[str] = set()
    tasks: dict[str, asyncio.Task[None]] = {}
    wrapper: Any
    if front is None:
        wrapper = AsyncMMDataProcessor(pre, **settings.processor_kwargs())
        metrics.watch(wrapper)
    else:
        wrapper = front(pre, settings)
    bodies = {"bytes": 0}
    # Parsing holds the GIL (json.loads of what loads_json leaves it: ~0.6 ms for a body with a 2.8 MB video): one
    # thread for it rather than asyncio's default pool of up to cores + 4, whose threads would all wait for the
    # GIL beside the loop's thread when a burst of large bodies lands.
    parser = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="gpu-mm-parse",
                                                   initializer=reset_inherited_slice)

    async def handle(request: web.Request) -> web.Response:
        client = client_name(request, clients)
        length = request.content_length
        if length is not None and length > max_body_bytes:
            metrics.result("bad_input", client)
            return _error(InvalidRequest("body", f"{length} bytes is over max_body_bytes={max_body_bytes}"), 413)
        reserved = length if length is not None else max_body_bytes
        if bodies["bytes"] + reserved > body_budget_bytes:
            metrics.result("rejected", client)
            return _error(Overloaded(f"request bodies in flight would exceed body_budget_bytes={body_budget_bytes}; "
                                     "try again later"), 503)
        bodies["bytes"] += reserved
        try:
            return await preprocess(request, client)
        finally:
            bodies["bytes"] -= reserved

    def call_spec(data: dict[str, Any]) -> Any:
        """A request's own spec: of the family served (its settings may differ: the slots, budget and cache are
        shared), else InvalidRequest."""
        try:
            spec = spec_from_json(data)
        except ValueError as exc:
            raise InvalidRequest("spec", str(exc)[:300]) from None
        if spec.family != family:
            raise InvalidRequest("spec", f"this service serves the {family} family, not {spec.family}")
        return spec

    def socket_peer(request: web.Request) -> Peer:
        """The client process of a request that came over the service's Unix socket (else InvalidRequest)."""
        peer = peer_of(request.transport.get_extra_info("socket")) if leases is not None and request.transport else None
        if peer is None:
            raise InvalidRequest("format", "handles are answered only over the service's Unix socket "
                                           "(gpu-mm serve --uds PATH), to a process of its node")
        return peer

    def handle_answer(out: Any, peer: Peer) -> bytes:
        """The features copied into a block leased to ``peer``, and the pickled handle and metadata."""
        assert leases is not None
        tensors, meta = split_output(out, family)
        handle = leases.grant(tensors, peer)
        return pickle.dumps({"handle": handle, "meta": meta})

    async def preprocess(request: web.Request, client: str) -> web.Response:
        t0 = time.perf_counter()
        if read_chunk_bytes > 0:
            limit_reads(request.transport, read_chunk_bytes)
        try:
            raw = await read_body(request.content, max_body_bytes)
        except InvalidRequest as exc:
            metrics.result("bad_input", client)
            return _error(exc, 413)
        try:
            fmt = answer_format(request)
            peer = socket_peer(request) if fmt == "handles" else None
            # A request carrying a base64 video is megabytes of JSON: parse it off the event loop.
            parsed = await asyncio.get_running_loop().run_in_executor(parser, parse_request, raw, max_items)
            del raw
            if any(uploads.is_upload(x) for x in (*parsed.images, *parsed.videos)):
                sock_peer = peer_of(request.transport.get_extra_info("socket")) if request.transport else None
                parsed = await asyncio.get_running_loop().run_in_executor(
                    parser, take_uploads, parsed, None if sock_peer is None else sock_peer.uid,
                    settings.max_upload_bytes)
            images, videos, options, audios, spec_json = parsed
            kw: dict[str, Any] = {"options": options} if options.as_dict() else {}
            if spec_json is not None:
                kw["spec"] = call_spec(spec_json)
            out = await wrapper.process(image_data=images, video_data=videos, audio_data=audios or None, **kw)
            # A body (or a block) is the size of the features: made off the loop too.
            if fmt == "safetensors":
                body = await asyncio.get_running_loop().run_in_executor(parser, features_to_body, out, family)
            elif fmt == "handles":
                assert peer is not None
                body = await asyncio.get_running_loop().run_in_executor(parser, handle_answer, out, peer)
        except (GpuMMError, asyncio.TimeoutError) as exc:
            if isinstance(exc, asyncio.TimeoutError) and not isinstance(exc, GpuMMError):
                exc = ProcessingTimeout(str(exc) or "deadline passed")
            status = getattr(exc, "status_code", 500)
            metrics.result({400: "bad_input", 503: "rejected", 504: "timeout"}.get(status, "error"), client)
            if status >= 500 and status not in (503, 504):
                logger.warning("preprocess failed: %r", exc)
            return _error(exc, status)
        except Exception:  # noqa: BLE001 - a bug, not the client's fault: a JSON 500, logged and counted
            logger.exception("unexpected error in /v1/preprocess")
            metrics.result("error", client)
            return _error(RuntimeError(), 500)
        metrics.result("ok", client)
        for item in out["items"]:
            metrics.observe_stages(item.timings)
        metrics.observe_request(time.perf_counter() - t0)
        if fmt == "safetensors":
            return web.Response(body=body, content_type=CONTENT_TYPE)
        if fmt == "handles":
            return web.Response(body=body, content_type=HANDLE_CONTENT_TYPE)
        return web.json_response(_summary(out))

    async def release(request: web.Request) -> web.Response:
        """``POST /v1/release`` ``{"leases": [id, ...]}``: the client is done with those blocks."""
        try:
            peer = socket_peer(request)
            raw = await read_body(request.content, 1 << 16)
            body = json.loads(b"".join(raw) if isinstance(raw, list) else raw)
            ids = body.get("leases") if isinstance(body, dict) else None
            if not isinstance(ids, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
                raise InvalidRequest("leases", "must be a list of lease ids")
            assert leases is not None
            released = leases.release(ids, peer)
        except GpuMMError as exc:
            return _error(exc, getattr(exc, "status_code", 400))
        except ValueError as exc:
            return _error(InvalidRequest("body", f"not valid JSON ({str(exc)[:80]})"), 400)
        return web.json_response({"released": released})

    async def reap_leases() -> None:
        """Give back blocks whose client has ended or held them past the lease (bookkeeping: a few /proc reads)."""
        assert leases is not None
        while True:
            await asyncio.sleep(min(1.0, leases.lease_s / 4))
            leases.reap()

    async def health(_: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def config(_: web.Request) -> web.Response:
        """The spec served (:func:`gpu_mm.models.base.spec_to_json`), for a client to check it computes the same."""
        return web.json_response(served_spec)

    async def prom(_: web.Request) -> web.Response:
        body, ctype = metrics.exposition()
        return web.Response(body=body, headers={"Content-Type": ctype})

    async def on_startup(_: web.Application) -> None:
        # Before the port opens: slot threads started, and slot processes (--workers processes) ready, so that
        # no request waits seconds for a child to import torch.
        if front is None:
            await pre.start()
        if leases is not None:
            tasks["reaper"] = asyncio.get_running_loop().create_task(reap_leases())

    async def on_cleanup(_: web.Application) -> None:
        if "reaper" in tasks:
            tasks.pop("reaper").cancel()
        if isinstance(wrapper, AsyncMMDataProcessor):
            await wrapper.aclose(wait=False)
        await pre.aclose()
        parser.shutdown(wait=False)
        if leases is not None:
            leases.close()

    @web.middleware
    async def json_errors(request: web.Request, handler: Any) -> web.StreamResponse:
        try:
            return await handler(request)
        except web.HTTPException as exc:  # 404, 405, ...: the same JSON shape as every other error
            if exc.status < 400:
                raise
            return web.json_response({"error": exc.reason, "message": exc.text or exc.reason}, status=exc.status)
        except Exception:  # noqa: BLE001 - never aiohttp's plain-text 500
            logger.exception("unexpected error serving %s", request.path)
            metrics.result("error")
            return _error(RuntimeError(), 500)

    app = web.Application(client_max_size=max_body_bytes, middlewares=[json_errors])
    if leases is not None:
        _LEASES[app] = leases
    app.router.add_post("/v1/preprocess", handle)
    app.router.add_post("/v1/release", release)
    app.router.add_get("/health", health)
    app.router.add_get("/v1/config", config)
    app.router.add_get("/metrics", prom)
    app.on_startup.append(on_startup)
    app.on_cleanup.append(on_cleanup)
    return app


def set_switch_interval(seconds: float) -> None:
    """Set this process's interpreter switch interval (:func:`sys.setswitchinterval`) and log it. Process-wide:
    ``gpu-mm serve`` owns its process; an engine embedding gpu-mm decides for its own."""
    import sys

    before = sys.getswitchinterval()
    sys.setswitchinterval(seconds)
    logger.info("interpreter switch interval: %.2f ms (was %.2f ms)", sys.getswitchinterval() * 1e3, before * 1e3)


def run(settings: Settings, *, front: Callable[[Preprocessor, Settings], Any] | None = None) -> None:
    """Serve until interrupted, as ``settings`` say: besides the application (:func:`build_app`), the allocator
    (:func:`gpu_mm.runtime.tune_allocator`), the interpreter's switch interval, a frozen garbage collector, and
    (``loop_slice``) a short CPU time slice for the loop (:func:`prioritize_loop`)."""
    from aiohttp import web

    # The server's own log lines (chosen concurrency, loop slice, idle slot threads put back on the normal policy)
    # on stderr, unless the process configured logging itself.
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logger.info("allocator: %s", tune_allocator())
    if settings.switch_interval_s is not None:
        set_switch_interval(settings.switch_interval_s)
    app = build_app(settings, front=front)
    freeze_gc()
    if settings.loop_slice:
        prioritize_loop()
    sock = None if settings.uds is None else unix_socket(settings.uds)
    web.run_app(app, host=settings.host, port=settings.port, sock=sock, print=None, access_log=None)


def unix_socket(path: str) -> Any:
    """A listening Unix domain socket at ``path``, mode 0600 before it listens (no moment where another user
    could connect); a stale socket file left by a server that died is replaced, any other file is refused."""
    import os
    import socket
    import stat

    if os.path.lexists(path):
        if not stat.S_ISSOCK(os.lstat(path).st_mode):
            raise FileExistsError(f"{path} exists and is not a socket")
        os.unlink(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(path)
    os.chmod(path, 0o600)
    sock.listen(1024)
    logger.info("listening on unix:%s (mode 0600)", path)
    return sock


def prioritize_loop() -> bool:
    """Ask for a short CPU time slice for this (the event loop's) thread, so that it runs as soon as it wakes
    instead of waiting out a busy worker's slice (:mod:`gpu_mm.sched`; loop lag p99 2.2-3.6 -> 1.3-1.4 ms measured
    here with two threads preprocessing on two cores). Opt-in (``gpu-mm serve --loop-slice``): under 16 concurrent
    video uploads it lowered /health's p99 little (median 8.6 -> 7.6 ms over seven interleaved runs; the loop's
    own work is preempted sooner too). torch's intra-op threads are started first, since threads inherit the slice
    (gpu-mm's own reset theirs). Returns whether the kernel granted it (Linux 6.12+)."""
    import torch

    from .sched import set_thread_slice

    torch.zeros(1 << 20).add_(1)  # large enough for torch to start its intra-op threads now, not on the loop later
    granted = set_thread_slice()
    logger.info("event loop thread: short CPU time slice %s", "granted" if granted else "not available here")
    return granted
