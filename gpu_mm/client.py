"""``gpu_mm.Client``: a node's gpu-mm service (``gpu-mm serve``) called like a local preprocessor.

The client sends a call's media (encoded bytes, base64 on the wire; or strings the service resolves under its own
trust policy: data URIs, URLs where it allows them) and options, asks for the features themselves (a safetensors
body, :mod:`gpu_mm.wire`) and returns them as the service's family's features class, with the same tensors, bit
for bit, as ``Preprocessor(...)(...)`` in the service's process. Errors come back typed: the service's
:class:`gpu_mm.GpuMMError` subclass rebuilt from its answer (400 :class:`gpu_mm.InvalidRequest` or a
:class:`gpu_mm.MediaError` naming the item, 503 :class:`gpu_mm.Overloaded`, 504
:class:`gpu_mm.ProcessingTimeout`), and :class:`gpu_mm.ServiceUnavailable` when the service cannot be reached.
"""

from __future__ import annotations

import asyncio
import base64
import json
import pickle
from typing import Any

from . import errors, uploads
from ._lifecycle import Closeable
from .errors import GpuMMError, InvalidRequest, ProcessingTimeout, ServiceUnavailable
from .features import Features
from .handoff import FeatureReceiver
from .models.base import spec_to_json
from .options import RequestOptions
from .wire import CONTENT_TYPE, HANDLE_CONTENT_TYPE, features_from_body, features_from_parts

__all__ = ["Client"]


class Client(Closeable):
    """A gpu-mm service at ``url``: ``http://host:port`` (or ``https://``) or ``unix:///path/to/socket``
    (``gpu-mm serve --uds``). Calls as a :class:`gpu_mm.Preprocessor`: ``await client.preprocess(images=...,
    videos=..., **options)`` from an event loop, ``client(images=..., videos=...)`` from synchronous code.

    ``timeout_s``: the most a call waits for its answer (None: no bound; the service's own deadline still
    applies), past it :class:`gpu_mm.ProcessingTimeout`. ``name``: how the service's /metrics counts this client's
    requests (``X-GPU-MM-Client``; letters, digits, ``_.:-``, at most 64).

    ``handles`` (``unix://`` only): the service answers with its features in a shared block leased to this process
    (:mod:`gpu_mm.leases`) instead of bytes on the socket; the features' tensors view that block (no copy here), and
    ``features.handle`` names it. Give it back with :meth:`release` (or :meth:`release_sync`) once the tensors are
    no longer used: the service reuses the block then, and reclaims it anyway after its lease time
    (``--handle-lease-s``) or when this process ends. The answer is a pickled handle, read only from the node's own
    service over its socket (mode 0600: the same user). Needs ``aiohttp`` (``pip install gpu-mm[serve]``).
    """

    def __init__(self, url: str, *, timeout_s: float | None = 60.0, handles: bool = False,
                 name: str | None = None) -> None:
        if url.startswith("unix://"):
            self.socket_path: str | None = url[len("unix://"):]
            if not self.socket_path:
                raise ValueError(f"a unix:// URL names a socket path, got {url!r}")
            self.base = "http://gpu-mm"
        elif url.startswith(("http://", "https://")):
            self.socket_path, self.base = None, url.rstrip("/")
        else:
            raise ValueError(f"url must be http(s)://host:port or unix:///path, got {url!r}")
        if timeout_s is not None and not timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0 or None, got {timeout_s!r}")
        if handles and self.socket_path is None:
            raise ValueError("handles are shared blocks on the service's node: they need a unix:// URL")
        self.url, self.timeout_s, self.handles = url, timeout_s, handles
        self._headers = {"Content-Type": "application/json",
                         "Accept": HANDLE_CONTENT_TYPE if handles else CONTENT_TYPE}
        if name is not None:
            self._headers["X-GPU-MM-Client"] = name
        self._receiver: FeatureReceiver | None = FeatureReceiver() if handles else None
        self._session: Any = None
        self._closed = False

    # ------------------------------------------------------------------ calls

    async def preprocess(self, images: Any = None, videos: Any = None, audios: Any = None, *, spec: Any = None,
                         **options: Any) -> Features:
        """The service's features for ``images``, ``videos`` and ``audios`` (a list, or one item, of each).
        ``spec``: settings for this call only, a spec of the service's family (as ``Preprocessor(...)(spec=...)``).
        Over a ``unix://`` URL, decoded images and videos (uint8 numpy arrays or tensors, ``H x W x C`` /
        ``T x H x W x C``) go in shared memory (:mod:`gpu_mm.uploads`), removed once the answer is in."""
        if self._closed:
            raise errors.ProcessorClosed("the client is closed")
        body, sent = request_body(images, videos, options, audios, spec=spec, uploads_ok=self.socket_path is not None)
        try:
            if self._session is None:
                self._session = self._new_session()
            return await self._post(self._session, body)
        finally:
            for item in sent:
                uploads.discard(item)

    def __call__(self, images: Any = None, videos: Any = None, audios: Any = None, *, spec: Any = None,
                 **options: Any) -> Features:
        """:meth:`preprocess` from synchronous code (a connection of its own, closed after the call)."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass
        else:
            raise RuntimeError("Client(...)(...) is the synchronous call; on an event loop, await client.preprocess()")
        if self._closed:
            raise errors.ProcessorClosed("the client is closed")
        body, sent = request_body(images, videos, options, audios, spec=spec, uploads_ok=self.socket_path is not None)

        async def once() -> Features:
            async with self._new_session() as session:
                return await self._post(session, body)

        try:
            return asyncio.run(once())
        finally:
            for item in sent:
                uploads.discard(item)

    def _new_session(self) -> Any:
        import aiohttp

        connector = aiohttp.UnixConnector(path=self.socket_path) if self.socket_path else aiohttp.TCPConnector()
        timeout = aiohttp.ClientTimeout(total=self.timeout_s)
        return aiohttp.ClientSession(connector=connector, timeout=timeout)

    async def _post(self, session: Any, body: bytes) -> Features:
        import aiohttp

        fmt = "handles" if self.handles else "safetensors"
        for attempt in (1, 2):
            try:
                async with session.post(f"{self.base}/v1/preprocess?format={fmt}", data=body,
                                        headers=self._headers) as r:
                    payload = await r.read()
                    if r.status == 200 and r.content_type == CONTENT_TYPE and not self.handles:
                        return features_from_body(payload)
                    if r.status == 200 and r.content_type == HANDLE_CONTENT_TYPE and self.handles:
                        return self._open(payload)
                    raise error_from_answer(r.status, payload)
            except asyncio.TimeoutError:
                raise ProcessingTimeout(f"no answer from {self.url} within timeout_s={self.timeout_s}") from None
            except aiohttp.ServerDisconnectedError as exc:
                # A kept-alive connection the service closed (it restarted, or timed the connection out): once more
                # on a new one. Preprocessing has no effect besides its answer, so a retry is safe.
                if attempt == 2:
                    raise ServiceUnavailable(f"{self.url}: {type(exc).__name__}: {exc}") from None
            except aiohttp.ClientError as exc:
                raise ServiceUnavailable(f"{self.url}: {type(exc).__name__}: {exc}") from None
        raise AssertionError("unreachable")  # pragma: no cover

    async def spec(self) -> dict[str, Any]:
        """The spec the service computes with (``GET /v1/config``: :func:`gpu_mm.models.base.spec_to_json`)."""
        import aiohttp

        if self._session is None:
            self._session = self._new_session()
        try:
            async with self._session.get(f"{self.base}/v1/config", headers=self._headers) as r:
                payload = await r.read()
                if r.status != 200:
                    raise error_from_answer(r.status, payload)
                return dict(json.loads(payload))
        except aiohttp.ClientError as exc:
            raise ServiceUnavailable(f"{self.url}: {type(exc).__name__}: {exc}") from None

    def _open(self, payload: bytes) -> Features:
        """Features viewing the block a handle answer names (the answer comes from this node's service only)."""
        assert self._receiver is not None
        answer = pickle.loads(payload)  # noqa: S301 - the node's own service, over its 0600 socket
        handle = answer["handle"]
        feats = features_from_parts(self._receiver.open(handle), answer["meta"])
        feats.handle = handle
        return feats

    # ------------------------------------------------------------------ leases (handles=True)

    async def release(self, *features: Features) -> int:
        """Tell the service these features' blocks are no longer used (their tensors must not be used after);
        returns how many were still leased. Releasing twice, or after the service reclaimed a lease, is harmless."""
        ids = self._lease_ids(features)
        if not ids:
            return 0
        if self._session is None:
            self._session = self._new_session()
        return await self._release(self._session, ids)

    def release_sync(self, *features: Features) -> int:
        """:meth:`release` from synchronous code."""
        ids = self._lease_ids(features)
        if not ids:
            return 0

        async def once() -> int:
            async with self._new_session() as session:
                return await self._release(session, ids)

        return asyncio.run(once())

    @staticmethod
    def _lease_ids(features: tuple[Features, ...]) -> list[int]:
        ids = []
        for f in features:
            if f.handle is None:
                raise ValueError("these features hold no leased block (not from a handles=True client)")
            ids.append(int(f.handle.lease_id))
        return ids

    async def _release(self, session: Any, ids: list[int]) -> int:
        import aiohttp

        try:
            async with session.post(f"{self.base}/v1/release", json={"leases": ids}, headers=self._headers) as r:
                payload = await r.read()
                if r.status != 200:
                    raise error_from_answer(r.status, payload)
                return int(json.loads(payload)["released"])
        except aiohttp.ClientError as exc:
            raise ServiceUnavailable(f"{self.url}: {type(exc).__name__}: {exc}") from None

    # ------------------------------------------------------------------ lifecycle

    def close(self) -> None:
        """Refuse new calls and unmap the blocks of handles (their tensors must no longer be used); the connection
        pool closes with :meth:`aclose` (or when collected)."""
        self._closed = True
        if self._receiver is not None:
            self._receiver.close()

    async def aclose(self) -> None:
        self.close()
        if self._session is not None:
            await self._session.close()
            self._session = None


def request_body(images: Any, videos: Any, options: dict[str, Any], audios: Any = None, *, spec: Any = None,
                 uploads_ok: bool = False) -> tuple[bytes, list[dict[str, Any]]]:
    """A call as the service's JSON body (encoded media as base64, strings as they are, the options checked, the
    call's own spec), and the shared-memory uploads it names (decoded images and videos, with ``uploads_ok``: the
    caller removes them once the answer is in)."""
    given = options.pop("options", None)
    if given is not None and options:
        raise TypeError("pass per-request options either as options=RequestOptions(...) or as keywords")
    parsed = RequestOptions.parse(given if given is not None else options)
    body: dict[str, Any] = dict(parsed.as_dict())
    if spec is not None:
        body["spec"] = spec_to_json(spec)
    sent: list[dict[str, Any]] = []
    try:
        for key, items in (("images", images), ("videos", videos), ("audios", audios)):
            if items is None:
                continue
            items = list(items) if isinstance(items, (list, tuple)) else [items]
            body[key] = [_wire_item(x, f"{key[:-1]}[{i}]", sent if uploads_ok and key != "audios" else None)
                         for i, x in enumerate(items)]
        return json.dumps(body).encode(), sent
    except BaseException:
        for item in sent:
            uploads.discard(item)
        raise


def _wire_item(x: Any, item: str, sent: list[dict[str, Any]] | None) -> Any:
    if isinstance(x, (bytes, bytearray, memoryview)):
        return base64.b64encode(x).decode("ascii")
    if isinstance(x, str):
        return x
    if sent is not None and type(x).__module__.split(".")[0] in ("numpy", "torch"):
        try:
            upload = uploads.put(x)
        except ValueError as exc:
            raise InvalidRequest(item, str(exc)) from None
        sent.append(upload)
        return upload
    raise InvalidRequest(item, f"a service takes encoded media (bytes) or a string, got {type(x).__name__}; "
                               "decoded images and videos (uint8 arrays) go over a unix:// URL only")


def error_from_answer(status: int, payload: bytes) -> GpuMMError:
    """The typed error a service's error answer names (its class, item and reason), or a generic one."""
    try:
        answer = json.loads(payload)
    except ValueError:
        answer = None
    if not isinstance(answer, dict):
        return GpuMMError(f"HTTP {status}: {payload[:200]!r}")
    name, message = str(answer.get("error")), str(answer.get("message", ""))
    cls = getattr(errors, name, None)
    if not (isinstance(cls, type) and issubclass(cls, GpuMMError)):
        err = GpuMMError(f"HTTP {status} {name}: {message}")
        err.status_code = status
        return err
    item, reason = answer.get("item"), answer.get("reason")
    if issubclass(cls, (errors.ItemError, InvalidRequest)):
        if isinstance(item, str) and isinstance(reason, str):
            return cls(item, reason)
        return cls("request", message)
    return cls(message)
