"""The SGLang plug-in's pixel work sent to the node's gpu-mm service (``GPU_MM_SERVICE``) instead of computed in the
plug-in's process: one service for every tokenizer worker of the node (one cache, one memory budget, one set of
decoders), features as the service computes them with the plug-in's own spec.

Each request carries the spec the plug-in would compute with in-process (which mirrors SGLang's processor: its
sampling constants, bilinear video resizes, the model folder's pixel bounds), so any service of the family serves
it; at server start the runner asks the service which family it serves (``GET /v1/config``) and refuses to start on
another. Media are resolved here, under the limits an in-process plug-in applies (local paths and URLs as there), and
sent encoded; decoded arrays go in shared memory over a ``unix://`` service (:mod:`gpu_mm.uploads`); a PIL image
stays with SGLang's own path.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import os
from typing import Any

from gpu_mm.client import Client
from gpu_mm.errors import InvalidRequest
from gpu_mm.media.sources import MediaLimits, load_source
from gpu_mm.models.base import ModelSpec, spec_to_json

__all__ = ["ServiceRunner", "encoded", "uploadable"]


def encoded(x: Any) -> bool:
    """Whether an item can go to a service as it is or once read (bytes, a string, a path): not decoded pixels."""
    return isinstance(x, (bytes, bytearray, memoryview, str, os.PathLike))


def uploadable(x: Any) -> bool:
    """Whether an item is a decoded array (numpy or torch), which a ``unix://`` service takes in shared memory."""
    return type(x).__module__.split(".")[0] in ("numpy", "torch")


class ServiceRunner:
    """What the plug-in's requests go through in client mode: ``await process(image_data=..., video_data=...,
    options=...)`` returns the processor output dict an in-process :class:`gpu_mm.AsyncMMDataProcessor` returns."""

    def __init__(self, url: str, spec: ModelSpec, *, timeout_s: float | None,
                 limits: MediaLimits | None = None) -> None:
        self.url = url
        name = f"sglang-{os.getpid()}"
        # Its connection pool is made on the serving loop, at the first request.
        self.client = Client(url, timeout_s=timeout_s, name=name)
        self.limits = limits or MediaLimits()
        self.completed = 0
        self.spec = spec
        self.arrays = url.startswith("unix://")
        """Whether decoded arrays go to the service (in shared memory: its node's Unix socket only)."""

        async def served() -> dict[str, Any]:
            async with Client(url, timeout_s=timeout_s, name=name) as probe:
                return await probe.spec()

        got = _in_thread(served)
        if got.get("family") != spec.family:
            raise ValueError(f"GPU_MM_SERVICE={url} serves the {got.get('family')!r} family, not this SGLang "
                             f"processor's {spec.family!r}; start it with `gpu-mm serve --model {spec.family}` (each "
                             f"request brings this processor's settings: {json.dumps(spec_to_json(spec))})")

    async def process(self, image_data: Any = None, video_data: Any = None, options: Any = None) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        # Reading a path or a URL is I/O: off the serving loop, under the in-process plug-in's limits.
        images, videos = await loop.run_in_executor(None, self._read, image_data, video_data)
        kw = {"options": options} if options is not None else {}
        feats = await self.client.preprocess(images=images, videos=videos, spec=self.spec, **kw)
        self.completed += 1
        return feats.processor_output(None)

    def _read(self, image_data: Any, video_data: Any) -> tuple[list[Any] | None, list[Any] | None]:
        out: list[list[Any] | None] = []
        for kind, items in (("image", image_data), ("video", video_data)):
            if not items:
                out.append(None)
                continue
            data = []
            for i, x in enumerate(items):
                src = load_source(x, f"{kind}[{i}]", self.limits)
                if src.kind == "array" and self.arrays:
                    data.append(src.pixels)  # uploaded in shared memory by the client
                    continue
                if src.data is None:
                    raise InvalidRequest(src.item, "a decoded item cannot go to the gpu-mm service")
                data.append(src.data)
            out.append(data)
        return out[0], out[1]

    def shutdown(self, wait: bool = False) -> None:
        self.client.close()
        session = self.client._session
        loop = getattr(session, "_loop", None)
        if session is not None and loop is not None and loop.is_running() and not loop.is_closed():
            asyncio.run_coroutine_threadsafe(self.client.aclose(), loop)  # on the loop that owns its connections


def _in_thread(make: Any) -> Any:
    """Run coroutine function ``make`` to completion on a loop of its own (the caller may be on a running loop)."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, make()).result()
