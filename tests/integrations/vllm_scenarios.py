"""Scenarios for the vLLM plug-in, run in one child process by test_vllm.py (vLLM changes process-wide
registries; ``ModelConfig`` is slow cold). Prints one JSON object with what each scenario observed.

vLLM's own Qwen-VL path (its ``MediaConnector``, its Qwen loaders with OpenCV, its multimodal processors with
the stock transformers processors) is the reference, built before the plug-in registers. The plug-in is then
loaded through vLLM's real entry-point machinery (``load_general_plugins`` with ``GPU_MM_VLLM=1``). Nothing
of vLLM is patched; the admission scenario replaces the plug-in's own decode with one that waits (fault
injection), to hold loads in flight deterministically.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import threading
import time

import numpy as np
import torch

from gpu_mm.bench.vllm import IMAGE_TOKEN, VIDEO_TOKEN, Engine, data_uri, model_folder

from family_folders import OMNI_SPECIAL, family_folder, omni_folder
from media_helpers import make_image, make_video
from service_helpers import counting, served, serving

# 45 frames at 15 fps = 3 s; the Qwen rule samples 2 fps -> 6 frames (3 temporal steps).
VIDEO = make_video(45, 120, 160, fps=15)
IMAGES = [make_image(100, 140, "JPEG", seed=1), make_image(300, 200, "PNG", seed=2)]
PROMPT = f"{IMAGE_TOKEN} describe this and {VIDEO_TOKEN} this {IMAGE_TOKEN}"
REQUEST = {"prompt": PROMPT, "images": [data_uri(IMAGES[0], "image/jpeg"), data_uri(IMAGES[1], "image/png")],
           "videos": [data_uri(VIDEO, "video/mp4")]}
OWN_LOADER = {"qwen2_vl": "qwen2_vl", "qwen2_5_vl": "qwen2_vl", "qwen3_vl": "qwen3_vl", "internvl": "opencv",
              "glm4v": "opencv"}
"""vLLM's own loader for each model type's video processor (its default, ``opencv``, for the families beyond Qwen)."""
GPU_MM_LOADER = {"qwen2_vl": "gpu_mm_qwen2_vl", "qwen3_vl": "gpu_mm_qwen3_vl", "internvl": "gpu_mm_uniform"}
ROOT = tempfile.mkdtemp()


# ---------------------------------------------------------------- the families beyond Qwen (toy model folders)


FAMILY_IMAGE = {"glm4v": "<|begin_of_image|><|image|><|end_of_image|>", "internvl": "<IMG_CONTEXT>",
                "gemma3": "<start_of_image>", "internvl_chat": "<image>"}
FAMILY_VIDEO = {"glm4v": "<|begin_of_video|><|video|><|end_of_video|>", "internvl": "<video>",
                "internvl_chat": "<video>"}


def family_requests(model_type):
    """Per family: two images in one prompt, and (GLM, InternVL) one clip."""
    token = FAMILY_IMAGE[model_type]
    out = {"images": {"prompt": f"{token} describe {token}",
                      "images": [data_uri(IMAGES[0], "image/jpeg"), data_uri(IMAGES[1], "image/png")]}}
    if model_type in FAMILY_VIDEO:
        out["video"] = {"prompt": f"{FAMILY_VIDEO[model_type]} describe", "videos": REQUEST["videos"]}
    return out


def summary(out):
    kw = out["mm_kwargs"]
    items = {}
    for modality, its in kw.items():
        items[modality] = [{k: (v.data.tolist() if not k.startswith("pixel_values")
                                else {"shape": list(v.data.shape), "dtype": str(v.data.dtype)})
                            for k, v in it.items()} for it in its]
    return {"ids": list(out["prompt_token_ids"]),
            "placeholders": {m: [[p.offset, p.length] for p in ps] for m, ps in out["mm_placeholders"].items()},
            "items": items}


def pixels(out, modality):
    keys = ("pixel_values", "pixel_values_flat") if modality == "image" else ("pixel_values_videos",
                                                                              "pixel_values_flat_video")
    return [next(it[k] for k in keys if k in it).data for it in out["mm_kwargs"].get(modality, [])]


def max_diff(a, b):
    return [float((x.float() - y.float()).abs().max()) for x, y in zip(a, b)]


def _folder(model_type, name):
    path = os.path.join(ROOT, name)
    return family_folder(model_type, path) if model_type in FAMILY_IMAGE else model_folder(model_type, path)


def build_stock(model_type, normalize_on_device):
    folder = _folder(model_type, f"{model_type}-{normalize_on_device}-vllm")
    engine = Engine(folder, normalize_on_device=normalize_on_device, trust_remote_code=model_type == "internvl_chat")
    if model_type not in OWN_LOADER:
        return engine
    # The loader vLLM maps to the video processor class is process-wide, and the plug-in takes it over:
    # the reference engine names vLLM's own loader explicitly (what --media-io-kwargs video_backend does).
    engine.connector.media_io_kwargs = {"video": {"video_backend": OWN_LOADER[model_type]}}
    return engine


def build_ours(model_type, normalize_on_device):
    folder = _folder(model_type, f"{model_type}-{normalize_on_device}-gpu-mm")
    return Engine(folder, normalize_on_device=normalize_on_device, trust_remote_code=model_type == "internvl_chat")


def run_request(engine, request=REQUEST):
    try:
        return asyncio.run(engine.request(**request)), None
    except Exception as exc:  # noqa: BLE001 - reported to the test, which decides
        cause = exc.__cause__ or exc
        return None, f"{type(exc).__name__} from {type(cause).__name__}: {cause}"[:400]


def compare(theirs, ours, request=REQUEST):
    a, a_err = run_request(ours, request)
    b, b_err = run_request(theirs, request)
    r = {"vllm_error": b_err, "gpu_mm_error": a_err}
    if a is not None:
        r["gpu_mm"] = summary(a)
    if b is not None:
        r["vllm"] = summary(b)
    if a is not None and b is not None:
        r["image_diff"] = max_diff(pixels(a, "image"), pixels(b, "image"))
        r["video_diff"] = max_diff(pixels(a, "video"), pixels(b, "video"))
    return r


OMNI_AUDIO = [(0.1 * np.random.default_rng(7).standard_normal(int(16000 * s))).astype(np.float32) for s in (1.3, 4.0)]


def omni_prompts(model_type):
    """Two clips, then an image, each between its start and end tokens (the family's names)."""
    image, audio, _, vision_bos, vision_eos, audio_bos, audio_eos = OMNI_SPECIAL[model_type]
    clip = f"{audio_bos}{audio}{audio_eos}"
    return {"audio": f"{clip} listen {clip}", "image": f"{vision_bos}{image}{vision_eos} describe"}


def omni_engine(model_type, name):
    return Engine(omni_folder(model_type, os.path.join(ROOT, f"{model_type}-{name}")))


def omni_compare(model_type, theirs, ours):
    """The Omni thinkers' processing (vLLM's own, and with the plug-in) on two clips given as 16 kHz arrays, and
    on an image: ids, placeholders and every tensor."""
    out = {}
    for kind, prompt in omni_prompts(model_type).items():
        got = []
        for engine in (ours, theirs):
            mm = ({"audio": [(a, 16000) for a in OMNI_AUDIO]} if kind == "audio"
                  else asyncio.run(engine.load(images=[REQUEST["images"][0]])))
            got.append(engine.process(prompt, mm))
        a, b = got
        same = all(torch.equal(x[k].data, y[k].data) if isinstance(x[k].data, torch.Tensor) else x[k].data == y[k].data
                   for m in a["mm_kwargs"] for x, y in zip(a["mm_kwargs"][m], b["mm_kwargs"][m]) for k in x)
        out[kind] = {"same_ids": list(a["prompt_token_ids"]) == list(b["prompt_token_ids"]), "same_tensors": same,
                     "keys": sorted({k for m in a["mm_kwargs"] for it in a["mm_kwargs"][m] for k in it}),
                     "placeholders": {m: [[p.offset, p.length] for p in ps] for m, ps in a["mm_placeholders"].items()}
                     == {m: [[p.offset, p.length] for p in ps] for m, ps in b["mm_placeholders"].items()}}
    return out


def client_mode(stock, ours):
    """GPU_MM_SERVICE=unix://...: the plug-in's drop-ins send vLLM's decoded frames to a gpu-mm service (one started
    here, serving the qwen2_vl family with its defaults: each call brings its own settings) in shared memory; the
    same requests as in-process give vLLM's own ids, placeholders and features, and the service computed them."""
    import pathlib

    from gpu_mm.integrations.service import use_service

    out = {}
    folder = pathlib.Path(tempfile.mkdtemp(prefix="gpu-mm-vllm-service-"))
    with serving(folder, "qwen2_vl") as (tcp, uds):
        use_service(uds)
        try:
            for mode in (True, False):
                key = f"qwen2_5_vl/{'device' if mode else 'cpu'}_normalize"
                out[key] = compare(stock[("qwen2_5_vl", mode)], ours[("qwen2_5_vl", mode)])
        finally:
            use_service(None)
        out["served"] = served(tcp)
    return out


def loader_vs_vllm(model_type):
    """The two loaders on the same bytes, as vLLM's connector calls them."""
    from vllm.multimodal.media.image import ImageMediaIO
    from vllm.multimodal.media.video import VideoMediaIO

    out = {}
    for name in (OWN_LOADER[model_type], GPU_MM_LOADER[model_type]):
        frames, meta = VideoMediaIO(ImageMediaIO(), video_backend=name).load_bytes(VIDEO).media
        out[name] = (frames, meta)
    (f1, m1), (f2, m2) = out.values()
    return {"meta_vllm": m1, "meta_gpu_mm": m2, "shapes": [list(f1.shape), list(f2.shape)],
            "types": [type(f1).__name__, type(f2).__name__], "dtypes": [str(f1.dtype), str(f2.dtype)],
            "frame_diff": float(np.abs(f1.astype(np.int16) - f2.astype(np.int16)).max()),
            "frame_mean_diff": float(np.abs(f1.astype(np.int16) - f2.astype(np.int16)).mean())}


def loader_runs():
    """The loader's PyAV decode with a clip's keyframe runs at once (threads lent) against one decoder and against
    vLLM's own loader, on a clip of four GOPs with one slice per frame."""
    from vllm.multimodal.media.image import ImageMediaIO
    from vllm.multimodal.media.video import VideoMediaIO

    from gpu_mm.integrations.vllm import _Loads
    from gpu_mm.media.video import pyav
    from gpu_mm.settings import Settings

    clip = make_video(120, 120, 160, fps=15, gop=30, bframes=2, single_slice=True)
    runs: list[int] = []
    real = pyav.PyAVDecoder.get_frames_in_runs

    def counted(self, src, info, indices, starts):
        runs.append(len(starts))
        return real(self, src, info, indices, starts)

    pyav.PyAVDecoder.get_frames_in_runs = counted
    frames, lent_after, planned = {}, {}, {}
    try:
        for lend in (0, 3):
            loads = _Loads(Settings(decode_threads=lend))
            plan = loads.plan("qwen2_vl", clip, {})
            planned[lend] = (plan.decoders, plan.nbytes)
            frames[lend], meta = loads.decode(plan)
            lent_after[lend] = loads.spare.lent
            loads.close()
    finally:
        pyav.PyAVDecoder.get_frames_in_runs = real
    theirs, _ = VideoMediaIO(ImageMediaIO(), video_backend=OWN_LOADER["qwen2_vl"]).load_bytes(clip).media
    return {"runs": runs, "lent_after": list(lent_after.values()), "planned": list(planned.values()),
            "shapes": [list(f.shape) for f in frames.values()],
            "same_as_one_decoder": bool(np.array_equal(frames[0], frames[3])),
            "diff_vllm": float(np.abs(theirs.astype(np.int16) - frames[3].astype(np.int16)).max()),
            "backend": meta["video_backend"]}


def sampling_grid():
    """gpu-mm's sampling against vLLM's own Qwen loaders' index rule over many clips and settings."""
    from vllm.multimodal.video import Qwen2VLVideoBackend, Qwen3VLVideoBackend
    from vllm.multimodal.video_decoders.base import VideoSourceMetadata, VideoTargetMetadata

    from gpu_mm.integrations.vllm import sample_indices

    checked, mismatches = 0, []
    for family, backend in (("qwen2_vl", Qwen2VLVideoBackend), ("qwen3_vl", Qwen3VLVideoBackend)):
        for total in (1, 2, 3, 4, 5, 7, 8, 9, 30, 45, 61, 100, 451, 997, 1800, 5000):
            for video_fps in (1.0, 7.5, 15.0, 23.976, 25.0, 29.97, 30.0, 60.0):
                for fps, kw in ((2, {}), (1, {}), (4, {"min_frames": 8}), (60, {"max_frames": 1000}),
                                (2, {"max_frames": 16})):
                    src = VideoSourceMetadata(total, video_fps, total / video_fps)
                    tgt = VideoTargetMetadata(num_frames=-1, fps=fps, max_duration=300)
                    try:
                        theirs = backend.compute_frames_index_to_sample(src, tgt, **kw)
                    except Exception as exc:  # noqa: BLE001
                        theirs = f"error: {type(exc).__name__}"
                    try:
                        ours = sample_indices(family, total, video_fps, fps=fps, **kw)
                    except Exception as exc:  # noqa: BLE001
                        ours = f"error: {type(exc).__name__}"
                    checked += 1
                    same = ours == theirs or (isinstance(ours, str) and isinstance(theirs, str))
                    if not same:
                        mismatches.append([family, total, video_fps, fps, kw, str(theirs)[:80], str(ours)[:80]])
    from vllm.multimodal.video import VideoBackend

    for total in (1, 2, 3, 5, 30, 45, 61, 451, 1800):
        for video_fps in (1.0, 7.5, 23.976, 30.0, 60.0):
            for num_frames in (-1, 1, 8, 32, 1000):
                for fps in (-1, 0.5, 1, 2, 30):
                    src = VideoSourceMetadata(total, video_fps, total / video_fps)
                    tgt = VideoTargetMetadata(num_frames=num_frames, fps=fps, max_duration=300)
                    theirs = VideoBackend.compute_frames_index_to_sample(src, tgt)
                    ours = sample_indices("uniform", total, video_fps, fps=fps, num_frames=num_frames)
                    checked += 1
                    if ours != theirs:
                        mismatches.append(["uniform", total, video_fps, fps, num_frames, str(theirs)[:80],
                                           str(ours)[:80]])
    return {"checked": checked, "mismatches": mismatches[:10]}


def errors():
    """Bad media through vLLM's connector, and vLLM's own HTTP mapping of what the plug-in raises."""
    from vllm.entrypoints.serve.exception_handling.error_response import create_error_response
    from vllm.multimodal.media import MediaConnector

    import gpu_mm

    conn = MediaConnector()
    out = {}
    for name, payload in {"garbage": b"\x00\x01not a video" * 50, "truncated": VIDEO[: len(VIDEO) // 3],
                          "image_as_video": IMAGES[0]}.items():
        t0 = time.perf_counter()
        try:
            asyncio.run(conn.fetch_video_async(data_uri(payload, "video/mp4"), video_processor="Qwen2VLVideoProcessor"))
            out[name] = {"raised": None}
        except Exception as exc:  # noqa: BLE001
            resp = create_error_response(exc)
            out[name] = {"raised": type(exc).__name__, "gpu_mm": isinstance(exc, gpu_mm.GpuMMError),
                         "media_error": isinstance(exc, gpu_mm.MediaError), "message": str(exc)[:200],
                         "http": resp.error.code, "seconds": time.perf_counter() - t0}
    return out


def admission():
    """At most max_concurrent_calls decoding and memory_budget_bytes of frames in flight, max_queued waiting;
    beyond: 503 at once; past the deadline: 504, the abandoned decode keeping its place and bytes until it
    ends; a video whose frames alone exceed the budget: a limit (400) at once."""
    from vllm.entrypoints.serve.exception_handling.error_response import create_error_response
    from vllm.multimodal.media.image import ImageMediaIO
    from vllm.multimodal.media.video import VideoMediaIO

    from gpu_mm.integrations import vllm as plugin

    load_bytes = (6 * 3 + 33) * 120 * 160  # the clip's 6 sampled frames and its decoder's state
    out = {"load_bytes": load_bytes}
    io_ = VideoMediaIO(ImageMediaIO(), video_backend="gpu_mm_qwen2_vl")

    def attempt(results, key):
        t0 = time.perf_counter()
        try:
            results[key] = {"loaded": list(io_.load_bytes(VIDEO).media[0].shape)}
        except Exception as exc:  # noqa: BLE001
            results[key] = {"raised": type(exc).__name__, "http": create_error_response(exc).error.code,
                            "message": str(exc), "seconds": time.perf_counter() - t0}

    def first_held(results, **settings):
        """The loader with ``settings``, and a first load started whose decode waits for ``release``. No threads
        lent: a load's bytes are its frames' and one decoder's state."""
        plugin.register(("loader",), decode_threads=0, **settings)
        loads = plugin._loads()
        release, started = threading.Event(), threading.Event()
        real = loads.decode

        def held(plan):
            started.set()
            release.wait(30)
            return real(plan)

        loads.decode = held
        first = threading.Thread(target=attempt, args=(results, "first"))
        first.start()
        started.wait(10)
        return loads, release, first

    def settle(loads):
        for _ in range(200):
            if loads.running == 0 and loads.waiting == 0:
                break
            time.sleep(0.05)
        return {"running": loads.running, "waiting": loads.waiting, "bytes": loads.bytes}

    # Bounded by count: one decoding, one waiting, the third refused.
    results = {}
    loads, release, first = first_held(results, max_concurrent_calls=1, max_queued=1, timeout_s=0.5)
    out["while_one_runs"] = {"running": loads.running, "bytes": loads.bytes}
    second = threading.Thread(target=attempt, args=(results, "queued"))
    second.start()
    time.sleep(0.1)
    out["with_one_waiting"] = {"running": loads.running, "waiting": loads.waiting}
    attempt(results, "third")
    second.join(10)
    time.sleep(0.6)  # the first caller's deadline passes too; its decode still runs
    out["abandoned_decode_runs"] = {"running": loads.running, "waiting": loads.waiting, "bytes": loads.bytes}
    release.set()
    first.join(10)
    out["count"] = results
    out["after_count"] = settle(loads)

    # Bounded by bytes: room for one load; a second load waits for its bytes (two decoders free).
    results = {}
    loads, release, first = first_held(results, max_concurrent_calls=2, max_queued=4, timeout_s=0.5,
                                       memory_budget_bytes=load_bytes + load_bytes // 2)
    attempt(results, "second")
    out["bytes_bound_while_waiting"] = {"running": loads.running, "bytes": loads.bytes}
    release.set()
    first.join(10)
    out["after_bytes"] = settle(loads)
    # A clip whose load alone exceeds the budget: refused before any decoding.
    plugin.register(("loader",), max_concurrent_calls=2, max_queued=4, timeout_s=0.5,
                    memory_budget_bytes=load_bytes - 1)
    attempt(results, "too_big")
    out["bytes"] = results
    plugin.register(("loader",), max_concurrent_calls=None, max_queued=None, timeout_s=None,
                    memory_budget_bytes=None)
    # Each register() with new settings replaced the loader's work: the replaced ones' threads have ended.
    for _ in range(100):
        threads = [t.name for t in threading.enumerate() if t.name.startswith("gpu-mm-vllm-video")]
        if not threads:
            break
        time.sleep(0.05)
    out["loader_threads_at_end"] = threads
    return out


def fallback(theirs, ours):
    """Options gpu-mm does not implement (here a rescale factor other than 1/255) run transformers' own code
    inside the drop-ins: the results equal vLLM's own, and transformers' _preprocess ran."""
    from transformers import Qwen2VLImageProcessor

    calls = {"n": 0}
    original = Qwen2VLImageProcessor._preprocess

    def counting(self, *a, **k):
        calls["n"] += 1
        return original(self, *a, **k)

    request = {"prompt": f"{IMAGE_TOKEN} describe this", "images": [data_uri(IMAGES[0], "image/jpeg")]}

    def run(engine):
        mm = asyncio.run(engine.load(request["images"]))
        return engine.processor(request["prompt"], mm_items=engine.processor.info.parse_mm_data(mm),
                                hf_processor_mm_kwargs={"rescale_factor": 1 / 127.5})

    b = run(theirs)
    Qwen2VLImageProcessor._preprocess = counting
    try:
        a = run(ours)
    finally:
        Qwen2VLImageProcessor._preprocess = original
    return {"same_ids": list(a["prompt_token_ids"]) == list(b["prompt_token_ids"]),
            "diff": max_diff(pixels(a, "image"), pixels(b, "image")), "transformers_calls": calls["n"],
            "image_processor": type(ours.processor.info.get_hf_processor().image_processor).__name__}


def http_mapping():
    """What vLLM's own API server answers for the plug-in's errors: a FastAPI app with vLLM's exception
    handlers (``init_exception_handler``, as ``vllm serve`` installs them), driven over ASGI."""
    from fastapi import FastAPI
    from vllm.entrypoints.serve.exception_handling.register import init_exception_handler

    import gpu_mm
    from gpu_mm.integrations.vllm import VLLMOverloaded, VLLMTimeout

    errors = {"overloaded": VLLMOverloaded("video (5 B): gpu-mm video loads are at their bound"),
              "timeout": VLLMTimeout("video (5 B): not loaded within 0.5 s"),
              "bad_media": gpu_mm.DecodeError("video (5 B)", "corrupt stream")}
    app = FastAPI()
    init_exception_handler(app)
    app.state.args = argparse.Namespace(log_error_stack=False)  # the server's CLI arguments, as vllm serve sets
    for name, exc in errors.items():
        async def route(exc=exc):
            raise exc
        app.get(f"/{name}")(route)

    async def call(path):
        scope = {"type": "http", "method": "GET", "path": path, "raw_path": path.encode(), "headers": [],
                 "query_string": b"", "http_version": "1.1", "scheme": "http", "server": ("test", 80),
                 "client": ("test", 1), "root_path": ""}
        sent = []

        async def receive():
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message):
            sent.append(message)

        try:
            await app(scope, receive, send)
        except Exception:  # noqa: BLE001 - Starlette re-raises after answering with its last-resort handler
            pass
        status = next(m["status"] for m in sent if m["type"] == "http.response.start")
        body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
        return {"status": status, "body": json.loads(body)}

    return {name: asyncio.run(call(f"/{name}")) for name in errors}


def hostile_options():
    """Sampling settings a request may carry (vLLM merges a request's media_io_kwargs into the loader call)."""
    from vllm.entrypoints.serve.exception_handling.error_response import create_error_response
    from vllm.multimodal.media.image import ImageMediaIO
    from vllm.multimodal.media.video import VideoMediaIO

    out = {}
    for name, kw in {"tp0": {"temporal_patch_size": 0}, "fps_neg": {"fps": -1}, "fps_nan": {"fps": float("nan")},
                     "fps_str": {"fps": "2"}, "frames_huge": {"min_frames": 10**12}, "unknown": {"crop": 1},
                     "capped": {"fps": 60, "max_frames": 10**6}}.items():
        try:
            frames, meta = VideoMediaIO(ImageMediaIO(), video_backend="gpu_mm_qwen2_vl", **kw).load_bytes(VIDEO).media
            out[name] = {"loaded": len(meta["frames_indices"])}
        except Exception as exc:  # noqa: BLE001
            out[name] = {"raised": type(exc).__name__, "http": create_error_response(exc).error.code,
                         "message": str(exc)[:200]}
    return out


def switch():
    from gpu_mm.integrations.vllm import enabled_parts, register

    out = {}
    for raw in ("", "0", "1", "all", "loader", "processors, loader", "loaders"):
        try:
            out[raw] = sorted(enabled_parts({"GPU_MM_VLLM": raw}))
        except ValueError as exc:
            out[raw] = f"ValueError: {exc}"
    return out, register()  # GPU_MM_VLLM unset: registers nothing


def main():
    result = {}
    result["enabled_parts"], result["registered_when_off"] = switch()
    model_types = ["qwen2_vl", "qwen2_5_vl", "qwen3_vl"]
    families = ["glm4v", "internvl", "gemma3", "internvl_chat"]
    stock = {(m, n): build_stock(m, n) for m in model_types for n in (True, False)}
    stock.update({(m, True): build_stock(m, True) for m in families})
    omni = ["qwen2_5_omni", "qwen3_omni_moe"]
    stock_omni = {m: omni_engine(m, "vllm") for m in omni}
    # The real entry point: vLLM's plug-in loader with the operator's switch on.
    import vllm.plugins
    from vllm.multimodal.video import VIDEO_LOADER_REGISTRY

    os.environ["GPU_MM_VLLM"] = "1"
    vllm.plugins.plugins_loaded = False
    vllm.plugins.load_general_plugins()
    result["loader_for"] = {p: VIDEO_LOADER_REGISTRY.get_backend_for_video_processor(p)
                            for p in ("Qwen2VLVideoProcessor", "Qwen3VLVideoProcessor", "InternVLVideoProcessor",
                                      "Glm4vVideoProcessor", "Glm46VVideoProcessor")}
    import importlib

    from gpu_mm.integrations.vllm import MODELS
    result["processing_info"] = {name: getattr(importlib.import_module(mod), name)._processor_factory.info.__name__
                                 for mod, names in MODELS.items() for name in names}
    ours = {(m, n): build_ours(m, n) for m in model_types for n in (True, False)}
    result["ours_info"] = {m: type(ours[(m, True)].processor.info).__name__ for m in model_types}
    result["hf_components"] = {m: [type(ours[(m, True)].processor.info.get_hf_processor().image_processor).__name__,
                                   type(ours[(m, True)].processor.info.get_hf_processor().video_processor).__name__]
                               for m in model_types}
    result["compare"] = {f"{m}/{'device' if n else 'cpu'}_normalize": compare(stock[(m, n)], ours[(m, n)])
                         for m in model_types for n in (True, False)}
    image_only = {"prompt": f"{IMAGE_TOKEN} describe", "images": REQUEST["images"][:1]}
    result["compare_images_only"] = {m: compare(stock[(m, True)], ours[(m, True)], image_only) for m in model_types}
    video_only = {"prompt": f"{VIDEO_TOKEN} describe", "videos": REQUEST["videos"]}
    result["compare_videos_only"] = {f"{m}/{'device' if n else 'cpu'}_normalize": compare(stock[(m, n)],
                                                                                           ours[(m, n)], video_only)
                                     for m in model_types for n in (True, False)}
    ours.update({(m, True): build_ours(m, True) for m in families})
    # Which of vLLM's own InternVL processors computed with gpu-mm: counted where they call it (test-side); the
    # Whisper feature extractor drop-in's log-mels counted the same way.
    from gpu_mm.integrations import hf, vllm_internvl

    chat_calls, _ = counting(vllm_internvl, "_run")
    log_mels, _ = counting(hf, "log_mel")
    ours_omni = {m: omni_engine(m, "gpu-mm") for m in omni}
    result["omni_components"] = {m: [type(getattr(ours_omni[m].processor.info.get_hf_processor(), a)).__name__
                                     for a in ("image_processor", "video_processor", "feature_extractor")]
                                 for m in omni}
    result["omni"] = {m: omni_compare(m, stock_omni[m], ours_omni[m]) for m in omni}
    result["omni_log_mel_calls"] = len(log_mels)
    result["families_hf_components"] = {
        m: [type(getattr(ours[(m, True)].processor.info.get_hf_processor(), attr, None)).__name__
            for attr in ("image_processor", "video_processor")] for m in families}
    result["families"] = {f"{m}/{kind}": compare(stock[(m, True)], ours[(m, True)], request)
                          for m in families for kind, request in family_requests(m).items()}
    # Which drop-in classes computed with gpu-mm (each drop-in keeps the gpu-mm preprocessors it ran), not
    # transformers' fallback. (vLLM may hand the processor other component instances per call: by class.)
    result["drop_ins_that_computed"] = sorted({type(d).__name__ for d in hf._PREPROCESSORS.keys()} | set(chat_calls))
    result["client_mode"] = client_mode(stock, ours)
    result["loader"] = {m: loader_vs_vllm(m) for m in ("qwen2_vl", "qwen3_vl", "internvl")}
    result["loader_runs"] = loader_runs()
    result["sampling"] = sampling_grid()
    result["errors"] = errors()
    result["fallback"] = fallback(stock[("qwen2_vl", False)], ours[("qwen2_vl", False)])
    result["admission"] = admission()
    result["http"] = http_mapping()
    result["hostile_options"] = hostile_options()
    result["torch_threads"] = torch.get_num_threads()
    print(json.dumps(result, default=str))


if __name__ == "__main__":
    sys.exit(main())
