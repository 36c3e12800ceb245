"""``gpu-mm serve``: a small asyncio HTTP front end (aiohttp) over the Qwen2-VL preprocessor.

``POST /v1/preprocess`` takes JSON ``{"images": [...], "videos": [...], "fps": ..., "nframes": ...}``
whose items are base64 strings, data URIs or (when enabled) URLs, and answers with the grids, shapes,
token counts, decoders and per-stage timings (the features themselves stay in the process).
``GET /health`` answers at once; ``GET /metrics`` is Prometheus exposition.

Modes, to compare what a serving engine's front end experiences:
``gpu_mm`` (AsyncMMDataProcessor + slots), ``seed`` (SGLang PR #12066's wrapper over the same work done
synchronously) and ``inline`` (the work done on the event loop, as a blocking ``async def`` would).
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any, Literal

from .errors import GpuMMError, MediaError, Overloaded, ProcessingTimeout
from .media.sources import MediaLimits
from .models.qwen2_vl import Qwen2VLPreprocessor
from .processor import AsyncMMDataProcessor

Mode = Literal["gpu_mm", "seed", "inline"]


class _SyncAdapter:
    """The preprocessor as a plain synchronous processor (what the seed's wrapper and inline run)."""

    def __init__(self, pre: Qwen2VLPreprocessor) -> None:
        self.pre = pre

    def process_mm_data(self, image_data=None, audio_data=None, input_text=None, request_obj=None, **kw: Any):
        feats = self.pre(images=image_data, videos=kw.pop("video_data", None), **kw)
        return feats.processor_output(input_text)


def _summary(out: dict[str, Any]) -> dict[str, Any]:
    return {
        "items": [
            {"item": r.item, "kind": r.kind, "grid_thw": list(r.grid_thw), "tokens": r.num_tokens,
             "decoder": r.decoder, "frame_indices": r.frame_indices,
             "timings_ms": {k: round(v * 1e3, 3) for k, v in r.timings.items()}}
            for r in out["items"]
        ],
        **{k: list(out[k].shape) for k in ("pixel_values", "pixel_values_videos") if k in out},
    }


def build_app(
    mode: Mode = "gpu_mm",
    *,
    device: str = "auto",
    max_concurrent_calls: int = 32,
    max_queued: int | None = None,
    timeout_s: float | None = 30.0,
    num_slots: int | None = None,
    limits: MediaLimits | None = None,
) -> Any:
    """Build the aiohttp application for ``mode``."""
    from aiohttp import web

    from .metrics import PrometheusMetrics

    pre = Qwen2VLPreprocessor(device, limits=limits, num_slots=num_slots)
    metrics = PrometheusMetrics()
    wrapper: Any
    if mode == "gpu_mm":
        wrapper = AsyncMMDataProcessor(pre, max_concurrent_calls=max_concurrent_calls, max_queued=max_queued,
                                       timeout_s=timeout_s)
        metrics.watch(wrapper)
    elif mode == "seed":
        from .bench.baselines import SeedAsyncMMDataProcessor

        wrapper = SeedAsyncMMDataProcessor(_SyncAdapter(pre), max_concurrent_calls=max_concurrent_calls,
                                           timeout_s=timeout_s)
    elif mode == "inline":
        wrapper = None
    else:
        raise ValueError(f"mode must be 'gpu_mm', 'seed' or 'inline', got {mode!r}")
    sync = _SyncAdapter(pre)

    async def preprocess(request: web.Request) -> web.Response:
        t0 = time.perf_counter()
        raw = await request.read()
        try:
            # A request carrying a base64 video is megabytes of JSON: parse it off the event loop.
            body = await asyncio.get_running_loop().run_in_executor(None, json.loads, raw)
            if not isinstance(body, dict):
                raise ValueError("not an object")
        except ValueError:
            return web.json_response({"error": "BadRequest", "message": "body must be a JSON object"}, status=400)
        images, videos = body.pop("images", None), body.pop("videos", None)
        options = {k: body[k] for k in ("fps", "nframes", "video_start", "video_end") if k in body}
        try:
            if wrapper is None:
                out = sync.process_mm_data(image_data=images, video_data=videos, **options)
            else:
                out = await wrapper.process(image_data=images, video_data=videos, **options)
        except Overloaded as exc:
            metrics.result("rejected")
            return web.json_response({"error": "Overloaded", "message": str(exc)}, status=503)
        except (ProcessingTimeout, asyncio.TimeoutError) as exc:
            metrics.result("timeout")
            return web.json_response({"error": "Timeout", "message": str(exc)}, status=504)
        except MediaError as exc:
            metrics.result("bad_input")
            return web.json_response({"error": type(exc).__name__, "message": str(exc)}, status=400)
        except (GpuMMError, TypeError) as exc:
            metrics.result("error")
            return web.json_response({"error": type(exc).__name__, "message": str(exc)}, status=500)
        metrics.result("ok")
        for item in out["items"]:
            metrics.observe_stages(item.timings)
        metrics.observe_request(time.perf_counter() - t0)
        return web.json_response(_summary(out))

    async def health(_: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def prom(_: web.Request) -> web.Response:
        body, ctype = metrics.exposition()
        return web.Response(body=body, headers={"Content-Type": ctype})

    async def on_cleanup(_: web.Application) -> None:
        if isinstance(wrapper, AsyncMMDataProcessor):
            await wrapper.aclose(wait=False)
        await pre.aclose()

    app = web.Application(client_max_size=(limits or MediaLimits()).max_bytes * 2)
    app.router.add_post("/v1/preprocess", preprocess)
    app.router.add_get("/health", health)
    app.router.add_get("/metrics", prom)
    app.on_cleanup.append(on_cleanup)
    return app


def run(mode: Mode, host: str, port: int, **kw: Any) -> None:
    """Serve until interrupted."""
    from aiohttp import web

    web.run_app(build_app(mode, **kw), host=host, port=port, print=None, access_log=None)
