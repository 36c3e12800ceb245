"""Scenarios for the SGLang plug-in, run in a child process by test_sglang.py (importing
sglang changes process-wide state). Prints one JSON object with what each scenario observed.

SGLang's own Qwen-VL processor is the reference. Its video path pins host memory, which needs a CUDA
driver; the only thing patched here is SGLang's "is this a CPU engine" test (two predicates) so it skips
``pin_memory()`` on this CPU-only machine. Everything else is SGLang 0.5.x's code as installed.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import pathlib
import sys
import threading
import time

import torch
from sglang.srt.managers.io_struct import GenerateReqInput
from sglang.srt.runtime_context import get_context
from sglang.srt.utils.common import ImageData, VideoData

import gpu_mm
from gpu_mm.bench.sglang import ARCHITECTURES, IMAGE_TOKEN, VIDEO_TOKEN, allow_cpu_video, build, call
from gpu_mm.pipeline.execute import Executor
from gpu_mm.pipeline.families import Qwen2VLPreprocessor

from media_helpers import make_image, make_video
from service_helpers import counting, served, serving

allow_cpu_video()

IMG, VID, ARCH = IMAGE_TOKEN, VIDEO_TOKEN, ARCHITECTURES

# 45 frames at 15 fps = 3 s; SGLang's rule samples 6 frames (2 fps) -> 3 temporal grid steps of 1 s each.
VIDEO = make_video(45, 120, 160, fps=15)
IMAGES = [make_image(100, 140, "JPEG", seed=1), make_image(300, 200, "PNG", seed=2)]


def _data_uri(data, mime):
    return f"data:{mime};base64," + base64.b64encode(data).decode()


def summary(out):
    return {
        "input_ids": list(out.input_ids),
        "padded": list(out.padded_input_ids) if out.padded_input_ids is not None else None,
        "items": [{"modality": it.modality.name, "offsets": [list(o) for o in it.offsets],
                   "shape": list(it.feature.shape),
                   "grid": {k: v.tolist() for k, v in it.model_specific_data.items() if "grid_thw" in k},
                   "spgt": (it.model_specific_data["second_per_grid_ts"].tolist()
                            if "second_per_grid_ts" in it.model_specific_data else None)}
                  for it in out.mm_items],
        "mrope": out.mrope_positions.tolist(),
        "delta": torch.as_tensor(out.mrope_position_delta).tolist(),
    }


def feature_diff(a, b):
    return [float((x.feature.float() - y.feature.float()).abs().max()) for x, y in zip(a.mm_items, b.mm_items)]


async def compare(model_type, server_args, **settings):
    theirs, ours = build(model_type, server_args, **settings)
    # Before any request: the plug-in started its slots (and their processes, the CPU default) when SGLang built it;
    # each slot's thread launches its process as it starts, so give them a moment, no request yet.
    pre = ours._gpu_mm_preprocessor
    waited = time.monotonic() + 30
    while pre.workers == "processes" and pre.statistics().process_starts < pre.concurrency.slots \
            and time.monotonic() < waited:
        await asyncio.sleep(0.05)
    started_at_build = pre.statistics().process_starts
    text = f"{IMG} describe this and {VID} this {IMG}"
    # Media as the OpenAI-compatible routes pass them: ImageData / VideoData carrying data: URIs.
    images = [ImageData(url=_data_uri(IMAGES[0], "image/jpeg")), IMAGES[1]]
    videos = [VideoData(url=_data_uri(VIDEO, "video/mp4"))]
    a = await call(ours, text, list(images), list(videos))
    b = await call(theirs, text, list(images), list(videos))
    # A prompt given as token ids (SGLang's input_ids path; spaceless so the toy tokenizer round-trips).
    ids = ours._tokenizer.encode(f"{IMG}describe{VID}this{IMG}")
    c = await call(ours, None, list(IMAGES), [VIDEO], prompt=list(ids))
    d = await call(theirs, None, list(IMAGES), [VIDEO], prompt=list(ids))
    stats = ours.gpu_mm_processor().statistics()
    return {
        "ours": summary(a), "theirs": summary(b), "ours_from_ids": summary(c), "theirs_from_ids": summary(d),
        "feature_max_abs_diff": feature_diff(a, b),
        "ours_feature_devices": [str(it.feature.device) for it in a.mm_items],
        "fallbacks": dict(ours.gpu_mm_fallbacks),
        "completed": stats.completed, "in_flight": stats.in_flight,
        "workers": ours._gpu_mm_preprocessor.statistics().workers,
        "process_starts": ours._gpu_mm_preprocessor.statistics().process_starts,
        "process_starts_at_build": started_at_build,
    }


async def fallbacks(server_args):
    theirs, ours = build("qwen2_vl", server_args)
    # A request carrying processor output already: SGLang's own path takes it, unchanged.
    pre = Qwen2VLPreprocessor("cpu")(images=[IMAGES[1]])
    po = {"format": "processor_output", "pixel_values": pre.pixel_values, "image_grid_thw": pre.image_grid_thw}
    ids = ours._tokenizer.encode(f"{IMG} this")
    pos = [i for i, t in enumerate(ids) if t == 1][0]
    n = int(pre.image_grid_thw.prod()) // 4
    ids = ids[:pos] + [1] * n + ids[pos + 1:]
    a = await call(ours, None, [po], prompt=ids)
    b = await call(theirs, None, [dict(po)], prompt=list(ids))
    return {"same": summary(a) == summary(b), "fallbacks": dict(ours.gpu_mm_fallbacks),
            "gpu_mm_calls": ours.gpu_mm_processor().statistics().completed}


def bad_settings(server_args):
    """Settings that cannot work fail when SGLang builds the processor (server start), not per request."""
    out = {}
    for name, settings in (("device", {"device": "cuda:7" if not torch.cuda.is_available() else "tpu"}),
                           ("decoder", {"video_decoder": "no-such-decoder"}),
                           ("image_decoder", {"image_decoder": "nvjpeg" if not torch.cuda.is_available() else "pil"})):
        try:
            build("qwen2_vl", server_args, **settings)
            out[name] = None
        except Exception as exc:  # noqa: BLE001
            out[name] = {"type": type(exc).__name__, "gpu_mm_error": isinstance(exc, gpu_mm.GpuMMError),
                         "message": str(exc)}
    return out


async def bad_input(server_args):
    _, ours = build("qwen2_vl", server_args)
    out = {}
    for name, videos in (("truncated", [VIDEO[: len(VIDEO) // 3]]), ("empty", [b""]), ("garbage", [b"\x00" * 5000])):
        t0 = time.monotonic()
        try:
            await call(ours, f"{VID} this", None, videos)
            out[name] = {"raised": None}
        except Exception as exc:  # noqa: BLE001 - recording what surfaced
            out[name] = {"raised": type(exc).__name__, "value_error": isinstance(exc, ValueError),
                         "http_status": describe(exc)["http_status"],
                         "gpu_mm_error": isinstance(exc, gpu_mm.GpuMMError), "message": str(exc),
                         "seconds": time.monotonic() - t0}
    good = await call(ours, f"{VID} this", None, [VIDEO])
    stats = ours.gpu_mm_processor().statistics()
    out["after"] = {"ok": len(good.mm_items) == 1, "in_flight": stats.in_flight, "failed": stats.failed}
    return out


def describe(exc):
    """An exception as the test sees it, with the HTTP status SGLang's own error handler gives it."""
    from sglang.srt.entrypoints.http_server import _create_error_response

    gpu_mm_types = [c.__name__ for c in type(exc).__mro__ if c.__module__ == "gpu_mm.errors"]
    # SGLang's handler takes ValueErrors; anything else escapes it and the server answers 500.
    status = _create_error_response(exc).status_code if isinstance(exc, ValueError) else 500
    return {"type": type(exc).__name__, "gpu_mm": gpu_mm_types, "value_error": isinstance(exc, ValueError),
            "http_status": status}


async def limits(server_args):
    """A stalled item times out at its deadline without freeing its slot; a full processor refuses at once."""
    gate = threading.Event()
    started = threading.Event()
    orig = Executor._execute

    def stalling(self, slot, item):
        if item.plan.kind == "video":
            started.set()
            gate.wait(30)
        return orig(self, slot, item)

    Executor._execute = stalling
    try:
        # Slot threads: the stall is patched into this process.
        _, ours = build("qwen2_vl", server_args, timeout_s=0.5, max_concurrent_calls=1, max_queued=0, workers="threads")
        t0 = time.monotonic()
        stalled = asyncio.ensure_future(call(ours, f"{VID} this", None, [VIDEO]))
        for _ in range(3000):  # bounded: a patch that stopped matching must fail, not hang
            if started.is_set() or stalled.done():
                break
            await asyncio.sleep(0.01)
        try:
            await call(ours, f"{IMG} this", [IMAGES[0]])
            overloaded = None
        except Exception as exc:  # noqa: BLE001
            overloaded = describe(exc)
        stalled_pending_at_refusal = not stalled.done()
        try:
            await stalled
            timed_out = None
        except Exception as exc:  # noqa: BLE001
            timed_out = describe(exc)
        timed_out_after = time.monotonic() - t0
        held = ours.gpu_mm_processor().statistics().in_flight  # the stalled work still runs: slot kept
        gate.set()
        for _ in range(500):
            if ours.gpu_mm_processor().statistics().in_flight == 0:
                break
            await asyncio.sleep(0.01)
        freed = ours.gpu_mm_processor().statistics().in_flight
        after = await call(ours, f"{IMG} this", [IMAGES[0]])
        return {"overloaded": overloaded, "stalled_pending_at_refusal": stalled_pending_at_refusal,
                "timed_out": timed_out,
                "timed_out_after_s": timed_out_after, "in_flight_while_stalled": held, "in_flight_after": freed,
                "works_after": len(after.mm_items) == 1}
    finally:
        gate.set()
        Executor._execute = orig


def _items(out):
    return [[it.modality.name, [list(o) for o in it.offsets], list(it.feature.shape)] for it in out.mm_items]


async def families(server_args):
    """GLM-4.1V and Gemma 3: SGLang's own processor and gpu-mm's (SGLang's with the drop-ins), each built from the
    same weightless model folder, on the same requests."""
    import tempfile

    import transformers
    from sglang.srt.multimodal.processors.gemma3 import Gemma3SGLangImageProcessor
    from sglang.srt.multimodal.processors.glm4v import Glm4vImageProcessor

    from gpu_mm.integrations import hf
    from gpu_mm.integrations.sglang_processors.families import GpuMMGemma3Processor, GpuMMGlm4vProcessor

    from family_folders import family_folder

    cases = {"glm4v": (Glm4vImageProcessor, GpuMMGlm4vProcessor, "<|begin_of_image|><|image|><|end_of_image|>",
                       "<|begin_of_video|><|video|><|end_of_video|>"),
             "gemma3": (Gemma3SGLangImageProcessor, GpuMMGemma3Processor, "<start_of_image>", None)}
    out = {}
    computed = set()  # drop-in classes that computed (their instances may be collected once a model's are done)
    for model_type, (stock, plugin, image, video) in cases.items():
        folder = family_folder(model_type, tempfile.mkdtemp(prefix=f"gpu-mm-{model_type}-"))
        config = transformers.AutoConfig.from_pretrained(folder)
        theirs = stock(config, server_args, transformers.AutoProcessor.from_pretrained(folder), "default")
        ours = plugin(config, server_args, transformers.AutoProcessor.from_pretrained(folder), "default")
        requests = {"images": (f"{image} describe {image}", list(IMAGES), None)}
        if video:
            requests["video"] = (f"{video} describe", None, [_data_uri(VIDEO, "video/mp4")])
        result = {"components": [type(getattr(ours._processor, a, None)).__name__
                                 for a in ("image_processor", "video_processor")]}
        for name, (text, images, videos) in requests.items():
            result[name] = await side_by_side(ours, theirs, text, images, videos)
        out[model_type] = result
        computed |= {type(d).__name__ for d in list(hf._PREPROCESSORS.keys())}
        # GPU_MM_SERVICE=unix://...: the same requests with the drop-ins' calls sent to a service of the family (one
        # started here, its defaults: each call brings its own settings); SGLang's own results, bit for bit.
        from gpu_mm.integrations.service import use_service

        service_dir = pathlib.Path(tempfile.mkdtemp(prefix=f"gpu-mm-{model_type}-service-"))
        with serving(service_dir, model_type) as (tcp, uds):
            use_service(uds)
            try:
                for name, (text, images, videos) in requests.items():
                    a, b = await call(ours, text, images, videos), await call(theirs, text, images, videos)
                    result[f"{name}_via_service"] = {
                        "same_ids": list(a.input_ids) == list(b.input_ids), "same_items": _items(a) == _items(b),
                        "feature_max_abs_diff": feature_diff(a, b)}
            finally:
                use_service(None)
            result["served"] = served(tcp)
    out["drop_ins_that_computed"] = sorted(computed)
    return out


async def side_by_side(ours, theirs, text, images, videos, audios=None):
    """One request through the plug-in's processor and SGLang's own: what failed, or how the two outputs compare
    (ids, items, per-item tensors, M-RoPE positions, features)."""
    got = {}
    for side, proc in (("gpu_mm", ours), ("sglang", theirs)):
        try:
            got[side] = await call(proc, text, images, videos, audios=audios)
        except Exception as exc:  # noqa: BLE001 - reported to the test, which decides
            got[side] = f"{type(exc).__name__}: {exc}"[:300]
    a, b = got["gpu_mm"], got["sglang"]
    if isinstance(a, str) or isinstance(b, str):
        return {"gpu_mm_error": a if isinstance(a, str) else None, "sglang_error": b if isinstance(b, str) else None}
    return {
        "same_ids": list(a.input_ids) == list(b.input_ids), "n_ids": len(a.input_ids),
        "items": _items(a), "same_items": _items(a) == _items(b),
        "feature_max_abs_diff": feature_diff(a, b),
        "same_extra": all(torch.equal(torch.as_tensor(x.model_specific_data[k]),
                                      torch.as_tensor(y.model_specific_data[k]))
                          for x, y in zip(a.mm_items, b.mm_items) for k in x.model_specific_data),
        "same_mrope": (a.mrope_positions is None and b.mrope_positions is None)
        or bool(torch.equal(torch.as_tensor(a.mrope_positions), torch.as_tensor(b.mrope_positions))),
    }


async def omni(server_args):
    """Qwen3-Omni: SGLang's own Qwen-VL processor and gpu-mm's (the same with the image, video and audio drop-ins),
    each built from the same weightless model folder, on images, two clips (a 16 kHz WAV and a 44.1 kHz MP3, as data
    URIs) and a video: ids, items, offsets, M-RoPE positions and features; and how many log-mels gpu-mm computed."""
    import tempfile

    import transformers
    from sglang.srt.multimodal.processors.qwen_vl import QwenVLImageProcessor

    from gpu_mm.integrations import hf
    from gpu_mm.integrations.sglang_processors.families import GpuMMQwenOmniProcessor
    from gpu_mm.media.synth import make_audio

    from family_folders import omni_folder

    log_mels, restore = counting(hf, "log_mel")
    folder = omni_folder("qwen3_omni_moe", tempfile.mkdtemp(prefix="gpu-mm-qwen3-omni-"))
    config = transformers.AutoConfig.from_pretrained(folder)
    theirs = QwenVLImageProcessor(config, server_args, transformers.AutoProcessor.from_pretrained(folder), "default")
    ours = GpuMMQwenOmniProcessor(config, server_args, transformers.AutoProcessor.from_pretrained(folder), "default")
    image, audio = "<|vision_start|><|image_pad|><|vision_end|>", "<|audio_start|><|audio_pad|><|audio_end|>"
    clips = [_data_uri(make_audio(3.0, seed=1), "audio/wav"),
             _data_uri(make_audio(7.5, 44100, codec="libmp3lame", fmt="mp3", seed=2), "audio/mpeg")]
    requests = {
        "images_and_audio": (f"{image} describe {image} and {audio} listen {audio}", list(IMAGES), None, clips),
        "image_and_audio": (f"{image} describe {audio} listen", IMAGES[:1], None, clips[:1]),
        "audio": (f"{audio} listen {audio}", None, None, clips),
        "video": ("<|vision_start|><|video_pad|><|vision_end|> describe", None, [_data_uri(VIDEO, "video/mp4")],
                  None),
    }
    out = {"components": [type(getattr(ours._processor, a, None)).__name__
                          for a in ("image_processor", "video_processor", "feature_extractor")]}
    for name, (text, images, videos, audios) in requests.items():
        out[name] = await side_by_side(ours, theirs, text, images, videos, audios)
    out["log_mel_calls"] = len(log_mels)
    out["drop_ins_that_computed"] = sorted({type(d).__name__ for d in list(hf._PREPROCESSORS.keys())})
    restore()
    return out


async def client_mode(server_args):
    """GPU_MM_SERVICE: the plug-in sends its pixel work to a gpu-mm service started with the plug-in's spec; the
    same requests give SGLang's own ids and items and the in-process plug-in's features. A service serving another
    spec is refused when the processor is built."""
    import tempfile

    from gpu_mm.integrations.sglang import install
    from gpu_mm.models.base import spec_to_json

    out = {}
    folder = tempfile.mkdtemp(prefix="gpu-mm-service-")
    for model_type in ("qwen2_5_vl", "qwen3_vl"):
        theirs, local = build(model_type, server_args)
        spec_file = os.path.join(folder, f"{model_type}.json")
        with open(spec_file, "w") as f:
            json.dump(spec_to_json(local._gpu_mm_config), f)
        path = os.path.join(folder, f"{model_type}.sock")
        with serving(pathlib.Path(folder), spec=spec_file, uds=path) as (_, uds):
            _, remote = build(model_type, server_args, service=uds)
            text = f"{IMG} describe this and {VID} this {IMG}"
            images = [ImageData(url=_data_uri(IMAGES[0], "image/jpeg")), IMAGES[1]]
            videos = [VideoData(url=_data_uri(VIDEO, "video/mp4"))]
            a = await call(remote, text, list(images), list(videos))
            b = await call(local, text, list(images), list(videos))
            c = await call(theirs, text, list(images), list(videos))
            out[model_type] = {
                "runner": type(remote.gpu_mm_processor()).__name__, "fallbacks": dict(remote.gpu_mm_fallbacks),
                "completed": remote.gpu_mm_processor().completed,
                "same_ids_as_sglang": list(a.input_ids) == list(c.input_ids),
                "same_items_as_sglang": _items(a) == _items(c),
                "feature_diff_vs_in_process": feature_diff(a, b),
            }
            remote.shutdown()
            await asyncio.sleep(0.05)  # the close it schedules on this loop runs
    # A service of the family with its defaults (no --spec): each request brings the processor's spec, so it
    # serves SGLang's sampling and resizes all the same; decoded arrays go in shared memory.
    with serving(pathlib.Path(folder), "qwen2_5_vl", uds=os.path.join(folder, "defaults.sock")) as (_, uds):
        _, remote = build("qwen2_5_vl", server_args, service=uds)
        _, local = build("qwen2_5_vl", server_args)
        frames = torch.from_numpy(make_video_frames()).numpy()
        a = await call(remote, f"{IMG} describe {VID} this", [IMAGES[0]], [frames])
        b = await call(local, f"{IMG} describe {VID} this", [IMAGES[0]], [frames])
        out["defaults_service"] = {"fallbacks": dict(remote.gpu_mm_fallbacks),
                                   "completed": remote.gpu_mm_processor().completed,
                                   "same_ids": list(a.input_ids) == list(b.input_ids),
                                   "feature_diff_vs_in_process": feature_diff(a, b)}
        remote.shutdown()
        await asyncio.sleep(0.05)
    # A service of another family: refused at start, naming the family to serve.
    try:
        with serving(pathlib.Path(folder), "glm4v", uds=os.path.join(folder, "glm.sock")) as (_, uds):
            build("qwen2_5_vl", server_args, service=uds)
        out["mismatch"] = None
    except ValueError as exc:
        out["mismatch"] = str(exc)[:600]
    finally:
        install(service=None)
    return out


def make_video_frames():
    """The test clip's first 6 frames, decoded (T x H x W x 3 uint8), as a caller handing decoded frames has them."""
    from gpu_mm.media.sources import load_source
    from gpu_mm.media.video import get_video_decoder, probe_video

    src = load_source(VIDEO, "video")
    return get_video_decoder("pyav").get_frames_at(src, probe_video(src), list(range(6))).numpy()


def tokenizer_manager():
    """SGLang's real TokenizerManager, built as the engine builds it (ServerArgs for a local model folder,
    published for the tokenizer role), once as shipped and once with the operator's switch
    (``SGLANG_EXTERNAL_MM_PROCESSOR_PACKAGE``); the same request tokenized by both."""
    import os
    import tempfile

    from sglang.srt.managers.tokenizer_manager import TokenizerManager
    from sglang.srt.runtime_context import publish
    from sglang.srt.server_args import PortArgs, ServerArgs

    from gpu_mm.bench.sglang import toy_config, toy_processor

    model = tempfile.mkdtemp(prefix="gpu-mm-model-")
    toy_processor("qwen2_5_vl").save_pretrained(model)
    toy_config("qwen2_5_vl").save_pretrained(model)
    server_args = ServerArgs(model_path=model, device="cpu")
    publish(server_args, role="tokenizer")
    os.environ.pop("SGLANG_EXTERNAL_MM_PROCESSOR_PACKAGE", None)
    managers = {"sglang": TokenizerManager(server_args, PortArgs.init_new(server_args))}
    os.environ["SGLANG_EXTERNAL_MM_PROCESSOR_PACKAGE"] = "gpu_mm.integrations.sglang_processors"
    managers["gpu_mm"] = TokenizerManager(server_args, PortArgs.init_new(server_args))

    async def tokenize(tm):
        req = GenerateReqInput(text=f"{IMG} describe {VID} this", image_data=[IMAGES[1]], video_data=[VIDEO])
        req.normalize_batch_and_arguments()
        tm.max_req_input_len = 4096  # set by the engine after start-up
        tm._init_req_state(req, None)  # what generate_request does before tokenizing
        return await tm._tokenize_one_request(req)

    out = {name: asyncio.run(tokenize(tm)) for name, tm in managers.items()}
    a, b = out["gpu_mm"], out["sglang"]
    ia, ib = a.mm_inputs.mm_items, b.mm_inputs.mm_items
    return {
        "processor": {name: type(tm.mm_processor).__name__ for name, tm in managers.items()},
        "tokenized_type": type(a).__name__,
        "input_ids": list(a.input_ids) == list(b.input_ids),
        "n_tokens": len(a.input_ids),
        "offsets": [it.offsets for it in ia] == [it.offsets for it in ib],
        "modalities": [it.modality.name for it in ia],
        "feature_max_abs_diff": [float((x.feature - y.feature).abs().max()) for x, y in zip(ia, ib)],
        "gpu_mm_completed": managers["gpu_mm"].mm_processor.gpu_mm_processor().statistics().completed,
    }


def main():
    if sys.argv[1:] == ["tokenizer_manager"]:
        print(json.dumps(tokenizer_manager()))
        return
    results = {}
    with get_context().override_server_args(mm_process_config={}) as server_args:
        from sglang.srt.managers.multimodal_processor import PROCESSOR_MAPPING

        from gpu_mm.integrations.sglang import install

        install()
        results["registered"] = {m.__name__: c.__name__ for m, c in PROCESSOR_MAPPING.items()
                                 if m.__name__ in {*ARCH.values(), "Glm4vForConditionalGeneration",
                                                   "Gemma3ForConditionalGeneration", "InternVLChatModel",
                                                   "Qwen3OmniMoeForConditionalGeneration"}}

        async def run_all():
            for mt in ARCH:
                results[mt] = await compare(mt, server_args)
            results["fallback"] = await fallbacks(server_args)
            results["bad_input"] = await bad_input(server_args)
            results["limits"] = await limits(server_args)
            results["bad_settings"] = bad_settings(server_args)
            results["families"] = await families(server_args)
            results["omni"] = await omni(server_args)
            results["client_mode"] = await client_mode(server_args)
            # GPU_MM_WORKERS=threads: each slot's work on its thread (on the CPU the default is a process per slot).
            results["qwen2_vl_slot_threads"] = await compare("qwen2_vl", server_args, workers="threads")

        asyncio.run(run_all())
    print(json.dumps(results))


if __name__ == "__main__":
    main()
    # The results are complete once printed. Interpreter teardown of sglang's native extensions aborted once
    # in CI ("terminate called without an active exception") after every scenario had run; what is measured
    # here is the requests, so the process ends without that teardown.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
