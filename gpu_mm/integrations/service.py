"""The transformers drop-ins' pixel work sent to the node's gpu-mm service (``GPU_MM_SERVICE``), as the engines'
processors call them: synchronously, from any thread, the pixels already decoded.

With a service set (:func:`use_service`, which the vLLM and SGLang plug-ins call with ``GPU_MM_SERVICE``), a drop-in
whose family the service serves sends its call there: the decoded frames in shared memory (:mod:`gpu_mm.uploads`,
so a ``unix://`` URL) and the call's own settings as its spec (``Client.preprocess(spec=...)``). The service then
holds one memory budget, one set of slots and one cache for every front-end process of the node. The features come
back in a shared block leased to this process (the service's ``?format=handles``), are copied out at once and the
block is given back without waiting: for a 720p image on 2 cores, 13 ms in-process and 21 ms through the service,
where the features as bytes on the socket took 45-80 ms. A drop-in of another family, or pixels on a GPU, computes
in-process as without a service (said once in the log). Errors are the service's, typed as in-process ones; an
unreachable service is :class:`gpu_mm.ServiceUnavailable`.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any

__all__ = ["ServiceCalls", "service_calls", "use_plugin_service", "use_service"]

_log = logging.getLogger(__name__)


class ServiceCalls:
    """Synchronous calls to one service, from any thread (an engine's event loop's included): the client runs on a
    loop of its own, on a daemon thread started here, one connection pool for all calls."""

    def __init__(self, url: str, *, timeout_s: float | None = 60.0) -> None:
        from ..client import Client

        if not url.startswith("unix://"):
            raise ValueError(f"the drop-ins hand decoded pixels over, so the service must be unix:///PATH, got {url!r}")
        self.url, self.timeout_s = url, timeout_s
        self._client = Client(url, timeout_s=timeout_s, name="drop-ins", handles=True)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="gpu-mm-service-calls", daemon=True)
        self._thread.start()
        self._family: str | None = None
        self._told: set[str] = set()

    def family(self) -> str:
        """The family the service serves (asked once: ``GET /v1/config``)."""
        if self._family is None:
            spec = self._run(self._client.spec())
            self._family = str(spec["family"])
        return self._family

    def serves(self, family: str) -> bool:
        """Whether a drop-in of ``family`` sends its calls here (said once per family when not)."""
        if self.family() == family:
            return True
        if family not in self._told:
            self._told.add(family)
            _log.warning("gpu-mm: the service at %s serves the %s family; %s drop-ins compute in-process", self.url,
                         self._family, family)
        return False

    def __call__(self, spec: Any, **call: Any) -> Any:
        """The features of one drop-in call (``images=`` / ``videos=`` of decoded uint8 frames) by ``spec``: its
        tensors copied out of the leased block, which goes back to the service (not waited for)."""
        import dataclasses

        import torch

        feats = self._run(self._client.preprocess(spec=spec, **call))
        for field in dataclasses.fields(feats):
            value = getattr(feats, field.name)
            if isinstance(value, torch.Tensor):
                setattr(feats, field.name, value.clone())
        done = asyncio.run_coroutine_threadsafe(self._client.release(feats), self._loop)
        done.add_done_callback(_retrieved)
        feats.handle = None
        return feats

    def _run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def close(self) -> None:
        try:
            self._run(self._client.aclose())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            if not self._thread.is_alive():
                self._loop.close()


def _retrieved(done: Any) -> None:
    """A release's outcome, read (a failed one is the lease time's to reclaim)."""
    if not done.cancelled() and done.exception() is not None:
        _log.debug("gpu-mm: releasing a block failed: %r", done.exception())


_current: dict[str, Any] = {"url": None, "calls": None}
_lock = threading.Lock()


def use_service(url: str | None) -> None:
    """Send the drop-ins' calls to the service at ``url`` (``unix:///PATH``), or compute in-process (None, the
    default). Safe to call again; a new URL closes the old connection."""
    with _lock:
        if url == _current["url"]:
            return
        old, _current["calls"] = _current["calls"], None if url is None else ServiceCalls(url)
        _current["url"] = url
    if old is not None:
        old.close()


def service_calls(family: str) -> ServiceCalls | None:
    """The service a drop-in of ``family`` sends its calls to, or None (none set, or it serves another family)."""
    calls = _current["calls"]
    if calls is None or not calls.serves(family):
        return None
    return calls  # type: ignore[no-any-return]


def use_plugin_service(url: str | None) -> None:
    """A plug-in's ``GPU_MM_SERVICE`` for its drop-ins (the plug-ins' settings are the process's, so the last
    processor built decides): a ``unix://`` service takes their calls; none, or an ``http://`` one, which takes only
    encoded media (the SGLang Qwen-VL processor's own requests), leaves them in-process."""
    local = url is not None and url.startswith("unix://")
    use_service(url if local else None)
    if url is not None and not local and "http" not in _current.setdefault("told", set()):
        _current["told"].add("http")
        _log.info("gpu-mm: GPU_MM_SERVICE=%s is not a Unix socket: the drop-ins' decoded pixels stay in-process", url)
