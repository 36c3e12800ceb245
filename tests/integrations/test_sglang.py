"""The SGLang plug-in against the real ``sglang`` package (0.5.x, installed with --no-deps).

The same requests (two images and a video; and a prompt given as token ids) go through SGLang's own
Qwen-VL processor and through the plug-in, called as SGLang's TokenizerManager calls it. The scenarios run
in one child process (``sglang_scenarios.py``): importing sglang changes process-wide state. The only
patch there: SGLang's two "CPU engine" predicates, so that its video path skips ``pin_memory()``, which
needs a CUDA driver this machine lacks.

Tolerances: images are decoded by the same libjpeg-turbo / Pillow in both and come out exact. Video frames
are resized bilinearly in both, SGLang through torchvision's v1 float kernel, gpu-mm through its v2 uint8
kernel (3x faster here), which round differently: at most 1 level of 255 before normalization, i.e.
1 / (255 * min(std)) after it. For Qwen3-VL, SGLang's path resizes those frames a second time (transformers'
bicubic resize to the model's clip bounds), and so does gpu-mm: a bicubic tap's weights sum to 1 in
absolute value at most 1.25 per axis, so a 1-level difference can grow to 1.25**2 ~ 1.6 levels, plus one
more for rounding: at most 3 levels (std 0.5).
"""

from __future__ import annotations

import functools
import json
import os
import pathlib
import subprocess
import sys

import pytest

pytest.importorskip("sglang")

from gpu_mm.ops import OPENAI_CLIP_STD

ONE_LEVEL = 1 / (255 * min(OPENAI_CLIP_STD))
VIDEO_TOLERANCE = {"qwen2_vl": ONE_LEVEL, "qwen2_5_vl": ONE_LEVEL, "qwen3_vl": 3 / (255 * 0.5)}
# The clip: 45 frames at 15 fps (3 s). SGLang's rule samples 6 frames (2 fps) = 3 temporal grid steps, each
# covering temporal_patch_size / sample_fps = 2 / 2 = 1 s.
SECONDS_PER_GRID = 2 / (6 / 3)
TOKENS_PER_SECOND = 2


# Every test reads what one child process computes for the module (about a minute on 2 cores).
pytestmark = pytest.mark.slow


@functools.lru_cache(maxsize=None)
def _sglang_video_reference_missing() -> str | None:
    """SGLang's own video path (the reference here) decodes with torchcodec, which needs the system's FFmpeg
    libraries: the reason it cannot run, or None. Checked in a child process, since loading torchcodec here
    would keep decord (used by other tests) out of this one."""
    code = "from gpu_mm.media.video import get_video_decoder; get_video_decoder('torchcodec')"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    return None if proc.returncode == 0 else (proc.stderr.strip().splitlines() or ["torchcodec unusable"])[-1]


@functools.lru_cache(maxsize=None)
def scenarios(*args: str) -> dict:
    missing = _sglang_video_reference_missing()
    if missing:
        pytest.skip(f"SGLang's own video path needs torchcodec with FFmpeg: {missing}")
    here = pathlib.Path(__file__).parent
    tests = here.parent  # tests/, where media_helpers lives
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tests), os.environ.get("PYTHONPATH", "")])}
    env = {k: v for k, v in env.items() if not k.startswith(("GPU_MM_", "SGLANG_EXTERNAL_MM_PROCESSOR"))}
    proc = subprocess.run([sys.executable, str(here / "sglang_scenarios.py"), *args], capture_output=True,
                          text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_sglangs_tokenizer_manager_routes_requests_through_the_plugin():
    """The operator's switch in a real TokenizerManager (built from ServerArgs for a local model folder):
    the same request tokenized with and without it gives the same ids and items, features from gpu-mm."""
    r = scenarios("tokenizer_manager")
    assert r["processor"] == {"sglang": "QwenVLImageProcessor", "gpu_mm": "GpuMMQwenVLProcessor"}
    assert r["tokenized_type"] == "TokenizedGenerateReqInput"
    assert r["input_ids"] and r["offsets"] and r["modalities"] == ["IMAGE", "VIDEO"]
    image, video = r["feature_max_abs_diff"]
    assert image == 0.0 and video <= ONE_LEVEL + 1e-6
    assert r["gpu_mm_completed"] == 1


def test_registered_for_the_qwen_vl_glm_gemma_and_omni_families_and_not_internvl():
    assert scenarios()["registered"] == {"Qwen2VLForConditionalGeneration": "GpuMMQwenVLProcessor",
                                         "Qwen2_5_VLForConditionalGeneration": "GpuMMQwenVLProcessor",
                                         "Qwen3VLForConditionalGeneration": "GpuMMQwenVLProcessor",
                                         "Glm4vForConditionalGeneration": "GpuMMGlm4vProcessor",
                                         "Gemma3ForConditionalGeneration": "GpuMMGemma3Processor",
                                         "Qwen3OmniMoeForConditionalGeneration": "GpuMMQwenOmniProcessor",
                                         # SGLang computes InternVL's tiles itself (see the plug-in's families module)
                                         "InternVLChatModel": "InternVLProcessor"}


@pytest.mark.parametrize("model_type", ["qwen2_5_vl", "qwen3_vl"])
def test_client_mode_sends_the_pixel_work_to_a_service_and_changes_nothing(model_type):
    """GPU_MM_SERVICE=unix://...: a gpu-mm service started (by the test) with the plug-in's spec computes the
    request; SGLang's own ids and items, the in-process plug-in's features bit for bit."""
    r = scenarios()["client_mode"][model_type]
    assert r["runner"] == "ServiceRunner" and r["fallbacks"] == {} and r["completed"] == 1
    assert r["same_ids_as_sglang"] and r["same_items_as_sglang"]
    assert r["feature_diff_vs_in_process"] == [0.0, 0.0, 0.0]


def test_client_mode_sends_each_requests_spec_so_a_service_of_the_family_serves_and_takes_decoded_frames():
    """A service of the family started with its defaults (not SGLang's sampling and bilinear video resizes): each
    request carries the processor's spec, so the features are the in-process plug-in's bit for bit, decoded frames
    included (in shared memory, no fallback to SGLang's path); a service of another family is refused at start,
    naming the family to serve."""
    r = scenarios()["client_mode"]
    got = r["defaults_service"]
    assert got["fallbacks"] == {} and got["completed"] == 1 and got["same_ids"]
    assert got["feature_diff_vs_in_process"] == [0.0, 0.0]
    message = r["mismatch"]
    assert message and "'glm4v' family" in message and "--model qwen2_vl" in message


@pytest.mark.parametrize("case", ["glm4v/images", "glm4v/video", "gemma3/images"])
def test_glm_and_gemma_give_sglangs_own_ids_items_and_features(case):
    """SGLang's own GLM-4.1V and Gemma 3 processors, and the plug-in's (the same with gpu-mm's drop-ins), from the
    same model folder: identical ids, items, offsets, M-RoPE positions and features, bit for bit (SGLang decodes and
    samples, gpu-mm resizes, normalizes and patchifies); and gpu-mm computed them."""
    r = scenarios()["families"]
    model_type, request = case.split("/")
    got = r[model_type][request]
    assert "gpu_mm_error" not in got, got
    assert got["same_ids"] and got["same_items"] and got["same_mrope"]
    assert got["feature_max_abs_diff"] and all(d == 0.0 for d in got["feature_max_abs_diff"])
    assert r["glm4v"]["components"] == ["GpuMMGlm4vImageProcessor", "GpuMMGlm4vVideoProcessor"]
    assert r["gemma3"]["components"] == ["GpuMMGemma3ImageProcessor", "NoneType"]
    computed = {"glm4v/images": "GpuMMGlm4vImageProcessor", "glm4v/video": "GpuMMGlm4vVideoProcessor",
                "gemma3/images": "GpuMMGemma3ImageProcessor"}
    assert computed[case] in r["drop_ins_that_computed"]


@pytest.mark.parametrize("case", ["glm4v/images", "glm4v/video", "gemma3/images"])
def test_glm_and_gemma_in_client_mode_send_the_drop_ins_calls_to_a_service_and_change_nothing(case):
    """GPU_MM_SERVICE=unix://...: the drop-ins inside SGLang's GLM and Gemma 3 processors hand SGLang's decoded
    pixels to a service of the family (started by the test) in shared memory, with each call's settings: SGLang's
    own ids, items and features, bit for bit, and the service computed them."""
    r = scenarios()["families"]
    model_type, request = case.split("/")
    got = r[model_type][f"{request}_via_service"]
    assert got["same_ids"] and got["same_items"], got
    assert got["feature_max_abs_diff"] and all(d == 0.0 for d in got["feature_max_abs_diff"])
    assert r[model_type]["served"] >= len([k for k in r[model_type] if k.endswith("_via_service")])


@pytest.mark.parametrize("request_name", ["image_and_audio", "audio", "video"])
def test_qwen3_omni_gives_sglangs_own_ids_items_and_features(request_name):
    """SGLang's own Qwen3-Omni processing and the plug-in's (the same with gpu-mm's image, video and audio drop-ins)
    from the same weightless model folder: identical ids, items, offsets, per-item tensors (the audio mask and
    lengths too) and M-RoPE positions, features bit for bit; gpu-mm computed the log-mel and the pixels."""
    r = scenarios()["omni"]
    got = r[request_name]
    assert "gpu_mm_error" not in got, got
    assert got["same_ids"] and got["same_items"] and got["same_extra"] and got["same_mrope"]
    assert got["feature_max_abs_diff"] and all(d == 0.0 for d in got["feature_max_abs_diff"])
    assert r["components"] == ["GpuMMQwen2VLImageProcessor", "GpuMMQwen2VLVideoProcessor",
                               "GpuMMWhisperFeatureExtractor"]
    assert r["log_mel_calls"] >= 2 and {"GpuMMQwen2VLImageProcessor", "GpuMMQwen2VLVideoProcessor"} <= set(
        r["drop_ins_that_computed"])


def test_qwen3_omni_fails_in_sglang_itself_for_two_images_and_two_clips_and_the_plugin_changes_nothing():
    """SGLang 0.5's own Qwen3-Omni path fails on two images beside two clips; the plug-in fails alike."""
    got = scenarios()["omni"]["images_and_audio"]
    assert got.get("sglang_error") and got.get("gpu_mm_error") == got["sglang_error"]


@pytest.mark.parametrize("model_type", ["qwen2_vl", "qwen2_5_vl", "qwen3_vl"])
def test_same_tokens_items_and_features_as_sglangs_processor(model_type):
    r = scenarios()[model_type]
    ours, theirs = r["ours"], r["theirs"]
    assert r["fallbacks"] == {} and r["completed"] == 2  # both requests went through gpu-mm's processor
    assert ours["input_ids"] == theirs["input_ids"]
    assert ours["padded"] == theirs["padded"]
    strip = [{k: v for k, v in it.items() if k != "spgt"} for it in ours["items"]]
    assert strip == [{k: v for k, v in it.items() if k != "spgt"} for it in theirs["items"]]
    assert [it["modality"] for it in ours["items"]] == ["IMAGE", "IMAGE", "VIDEO"]  # SGLang's order
    img1, img2, vid = r["feature_max_abs_diff"]
    assert img1 == 0.0 and img2 == 0.0  # same decoded pixels, same ops
    assert 0.0 < vid <= VIDEO_TOLERANCE[model_type] + 1e-6  # resize rounding, see the module docstring
    assert r["ours_feature_devices"] == ["cpu"] * 3
    # A prompt given as token ids: the same ids and items as SGLang's own processor makes from them.
    assert r["ours_from_ids"]["input_ids"] == r["theirs_from_ids"]["input_ids"]
    offsets = [[it["offsets"] for it in r[k]["items"]] for k in ("ours_from_ids", "theirs_from_ids")]
    assert offsets[0] == offsets[1]


def test_slot_processes_inside_sglang_give_the_same_features():
    """Slot processes (the CPU's default, gpu_mm.Settings.workers "auto") and GPU_MM_WORKERS=threads give the same
    requests the same features."""
    processes, threads = scenarios()["qwen2_vl"], scenarios()["qwen2_vl_slot_threads"]
    assert threads["workers"] == "threads" and threads["process_starts"] == 0
    assert processes["workers"] == "processes" and processes["process_starts"] >= 1
    # Started when SGLang built the processor, not by the first request (which would wait seconds for them).
    assert processes["process_starts_at_build"] == processes["process_starts"]
    assert processes["fallbacks"] == {} and processes["completed"] == 2
    assert processes["ours"] == threads["ours"] and processes["ours_from_ids"] == threads["ours_from_ids"]
    assert processes["feature_max_abs_diff"] == threads["feature_max_abs_diff"]


@pytest.mark.parametrize("model_type", ["qwen2_vl", "qwen3_vl"])
def test_positions_equal_sglangs(model_type):
    r = scenarios()[model_type]
    assert r["ours"]["mrope"] == r["theirs"]["mrope"] and r["ours"]["delta"] == r["theirs"]["delta"]


def test_qwen3_vl_prompt_says_each_temporal_steps_time_as_sglang_does():
    """SGLang's Qwen3-VL prompt precedes each temporal step with ``<t seconds>``; the toy tokenizer has one id
    per time (``<0.3`` = 13 ...), so equal ids mean equal timestamps. The clip: 6 frames sampled from 45 at
    15 fps (indices 0, 8, 17, 26, 35, 44), steps at (0 + 8/15) / 2 s, ... = 0.3, 1.4, 2.6 s."""
    r = scenarios()["qwen3_vl"]
    times = [t for t in r["ours"]["input_ids"] if t >= 10]
    assert times == [t for t in r["theirs"]["input_ids"] if t >= 10] == [13, 24, 36]
    video = r["ours"]["items"][2]
    assert video["modality"] == "VIDEO" and len(video["offsets"]) == 3  # one span per temporal step


def test_qwen2_5_vl_video_time_positions_use_the_real_sampling_rate():
    """gpu-mm reports temporal_patch_size / sample_fps (as qwen-vl-utils + transformers); SGLang 0.5.23 gives
    transformers frames without their fps and gets 2 / 24, which collapses the video's time positions."""
    r = scenarios()["qwen2_5_vl"]
    ours, theirs = r["ours"], r["theirs"]
    assert ours["items"][2]["spgt"] == [pytest.approx(SECONDS_PER_GRID)]
    assert theirs["items"][2]["spgt"] == [pytest.approx(2 / 24)]
    (start, end), = ours["items"][2]["offsets"]
    t_ours = sorted(set(ours["mrope"][0][start : end + 1]))
    t_theirs = sorted(set(theirs["mrope"][0][start : end + 1]))
    step = int(SECONDS_PER_GRID * TOKENS_PER_SECOND)
    assert t_ours == [t_ours[0] + k * step for k in range(3)]  # one step per temporal grid
    assert len(t_theirs) == 1  # all three grid steps at one time position
    # Height and width positions, and everything before the video, are the same.
    assert ours["mrope"][1][start : end + 1] != [] and ours["mrope"][0][:start] == theirs["mrope"][0][:start]
    for axis in (1, 2):
        ours_rel = [x - t_ours[0] for x in ours["mrope"][axis][start : end + 1]]
        assert ours_rel == [x - t_theirs[0] for x in theirs["mrope"][axis][start : end + 1]]


def test_preprocessed_input_goes_to_sglangs_own_path_unchanged():
    r = scenarios()["fallback"]
    assert r["same"]
    assert r["fallbacks"] == {"preprocessed input (processor_output / precomputed_embedding)": 1}
    assert r["gpu_mm_calls"] == 0


def test_unusable_settings_fail_at_server_start():
    r = scenarios()["bad_settings"]
    # No CUDA here: "cuda:7" is BackendUnavailable; on a GPU machine "tpu" is not a device (ValueError).
    assert r["device"]["type"] in ("BackendUnavailable", "ValueError"), r
    assert r["decoder"]["type"] == "ValueError" and "no-such-decoder" in r["decoder"]["message"], r
    assert r["image_decoder"]["type"] == "ValueError" and "image_decoder" in r["image_decoder"]["message"], r


def test_bad_video_is_a_typed_value_error_naming_the_item_and_nothing_leaks():
    r = scenarios()["bad_input"]
    for name in ("truncated", "empty", "garbage"):
        case = r[name]
        assert case["gpu_mm_error"] and case["value_error"] and case["http_status"] == 400, case
        assert case["message"].startswith("video[0]"), case
        assert case["seconds"] < 5, case
    assert r["after"] == {"ok": True, "in_flight": 0, "failed": 3}


def test_deadline_and_admission_bound_hold_inside_sglang():
    r = scenarios()["limits"]
    # max_concurrent_calls=1, max_queued=0: refused at once, while the first call still ran.
    assert "Overloaded" in r["overloaded"]["gpu_mm"] and r["overloaded"]["http_status"] == 503
    assert r["stalled_pending_at_refusal"]
    # Answered 504 by SGLang's own HTTP error handler, not the 500 a bare TimeoutError gets there.
    assert "ProcessingTimeout" in r["timed_out"]["gpu_mm"] and r["timed_out"]["http_status"] == 504
    assert 0.45 <= r["timed_out_after_s"] < 3.0  # timeout_s=0.5
    assert r["in_flight_while_stalled"] == 1  # the stalled work keeps its slot until it really ends
    assert r["in_flight_after"] == 0
    assert r["works_after"]
