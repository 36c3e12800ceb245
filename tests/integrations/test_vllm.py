"""The vLLM plug-in against the real ``vllm`` package (0.33, installed with --no-deps; see .ci/run).

The same requests (a JPEG and a PNG as data URIs, a video as a data URI) go through vLLM's own Qwen-VL path
(its ``MediaConnector``, its Qwen video loaders on OpenCV, its multimodal processors with the stock
transformers processors) and through the plug-in (gpu-mm's loader and drop-ins), both built from weightless
model folders by vLLM's ``ModelConfig`` and ``MULTIMODAL_REGISTRY`` and called as vLLM's API server calls them.
The scenarios run in one child process (``vllm_scenarios.py``): vLLM's registries are process-wide.

Tolerance: none. Images are decoded by vLLM (Pillow) in both; video frames are decoded by OpenCV's FFmpeg and
by PyAV's FFmpeg, both converting YUV to RGB with swscale's defaults, and come out identical for the
H.264 clip used here; resize, rescale, normalize and patchify then match transformers exactly (test_hf).

Qwen3-VL videos: vLLM 0.33's own Qwen3-VL processor fails with transformers 5.24 on any prompt with a video
("Found 1 <|video_pad|> tokens in the text but no videos were passed"), in vLLM's code, before the pixels are
reached; the plug-in raises the very same error. So for Qwen3-VL the loader is compared with vLLM's own
Qwen3-VL loader (indices, metadata, frames), the images through the whole path, and the video drop-in with
transformers in test_hf.py.
"""

from __future__ import annotations

import functools
import json
import os
import pathlib
import subprocess
import sys

import pytest

pytest.importorskip("vllm")
pytest.importorskip("cv2")  # vLLM's own video loaders (the reference) decode with OpenCV

pytestmark = pytest.mark.slow

MODEL_TYPES = ["qwen2_vl", "qwen2_5_vl", "qwen3_vl"]
MODES = ["device_normalize", "cpu_normalize"]


@functools.lru_cache(maxsize=None)
def scenarios() -> dict:
    here = pathlib.Path(__file__).parent
    tests = here.parent  # tests/, where media_helpers lives
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GPU_MM_", "VLLM_"))}
    env["PYTHONPATH"] = os.pathsep.join([str(tests), os.environ.get("PYTHONPATH", "")])
    proc = subprocess.run([sys.executable, str(here / "vllm_scenarios.py")], capture_output=True, text=True,
                          timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_loaded_through_vllms_entry_point_when_asked():
    r = scenarios()
    assert r["loader_for"] == {"Qwen2VLVideoProcessor": "gpu_mm_qwen2_vl", "Qwen3VLVideoProcessor": "gpu_mm_qwen3_vl",
                               "InternVLVideoProcessor": "gpu_mm_uniform", "Glm4vVideoProcessor": "gpu_mm_uniform",
                               "Glm46VVideoProcessor": "gpu_mm_uniform"}
    assert r["processing_info"] == {
        "Qwen2VLForConditionalGeneration": "GpuMMQwen2VLProcessingInfo",
        "Qwen2_5_VLForConditionalGeneration": "GpuMMQwen2_5_VLProcessingInfo",
        "Qwen3VLForConditionalGeneration": "GpuMMQwen3VLProcessingInfo",
        "Qwen3VLMoeForConditionalGeneration": "GpuMMQwen3VLMoeProcessingInfo",
        "Glm4vForConditionalGeneration": "GpuMMGlm4vProcessingInfo",
        "Glm4vMoeForConditionalGeneration": "GpuMMGlm4vProcessingInfo",  # vLLM shares the info class
        "InternS1ForConditionalGeneration": "GpuMMInternS1ProcessingInfo",
        "Gemma3ForConditionalGeneration": "GpuMMGemma3ProcessingInfo",
        "InternVLChatModel": "GpuMMInternVLProcessingInfo",  # internvl_chat: vLLM's own processor classes
        "Qwen2_5OmniThinkerForConditionalGeneration": "GpuMMQwen2_5OmniThinkerProcessingInfo",
        "Qwen3OmniMoeThinkerForConditionalGeneration": "GpuMMQwen3OmniMoeThinkerProcessingInfo",
    }
    assert r["hf_components"] == {"qwen2_vl": ["GpuMMQwen2VLImageProcessor", "GpuMMQwen2VLVideoProcessor"],
                                  "qwen2_5_vl": ["GpuMMQwen2VLImageProcessor", "GpuMMQwen2VLVideoProcessor"],
                                  "qwen3_vl": ["GpuMMQwen2VLImageProcessor", "GpuMMQwen3VLVideoProcessor"]}


def _same(r: dict) -> None:
    assert r["vllm_error"] is None and r["gpu_mm_error"] is None, r
    ours, theirs = r["gpu_mm"], r["vllm"]
    assert ours["ids"] == theirs["ids"]
    assert ours["placeholders"] == theirs["placeholders"]
    assert ours["items"] == theirs["items"]  # grids, second_per_grid_ts, pixel shapes and dtypes
    assert all(d == 0.0 for d in r["image_diff"] + r["video_diff"]), (r["image_diff"], r["video_diff"])


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("model_type", ["qwen2_vl", "qwen2_5_vl"])
def test_images_and_video_give_vllms_own_ids_placeholders_and_features(model_type, mode):
    r = scenarios()["compare"][f"{model_type}/{mode}"]
    _same(r)
    items = r["gpu_mm"]["items"]
    # uint8 patches for vLLM to normalize on the GPU; else float32 patches, which vLLM casts to the model's dtype.
    dtype = "torch.uint8" if mode == "device_normalize" else "torch.bfloat16"
    assert [i["pixel_values"]["dtype"] for i in items["image"]] == [dtype, dtype]
    assert items["video"][0]["pixel_values_videos"]["dtype"] == dtype
    assert items["video"][0]["video_grid_thw"][0] == 3  # 6 frames at 2 fps of the 3 s clip, 2 per step


@pytest.mark.parametrize("mode", MODES)
def test_client_mode_sends_vllms_decoded_frames_to_the_service_and_changes_nothing(mode):
    """GPU_MM_SERVICE=unix://...: the processors' drop-ins hand vLLM's decoded frames to a gpu-mm service started by
    the test (shared memory, each call's own settings as its spec): vLLM's own ids, placeholders and features, bit
    for bit, computed by the service (per request one call for its two images, one for its video: 4 in all)."""
    r = scenarios()["client_mode"]
    _same(r[f"qwen2_5_vl/{mode}"])
    assert r["served"] == 4


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("model_type", ["qwen2_vl", "qwen2_5_vl"])
def test_video_only_requests_equal_vllms_own(model_type, mode):
    _same(scenarios()["compare_videos_only"][f"{model_type}/{mode}"])


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_image_only_requests_equal_vllms_own(model_type):
    _same(scenarios()["compare_images_only"][model_type])


@pytest.mark.parametrize("mode", MODES)
def test_qwen3_vl_video_fails_in_vllm_itself_and_the_plugin_changes_nothing(mode):
    """vLLM 0.33 + transformers 5.24: its Qwen3-VL processor drops the videos before transformers' call."""
    for key in ("compare", "compare_videos_only"):
        r = scenarios()[key][f"qwen3_vl/{mode}"]
        assert r["vllm_error"] and "no videos were passed" in r["vllm_error"]
        assert r["gpu_mm_error"] == r["vllm_error"]


def test_the_other_families_processors_carry_the_drop_ins():
    r = scenarios()
    assert r["processing_info"]["Glm4vForConditionalGeneration"] == "GpuMMGlm4vProcessingInfo"
    assert r["processing_info"]["InternS1ForConditionalGeneration"] == "GpuMMInternS1ProcessingInfo"
    assert r["processing_info"]["Gemma3ForConditionalGeneration"] == "GpuMMGemma3ProcessingInfo"
    assert r["families_hf_components"] == {
        "glm4v": ["GpuMMGlm4vImageProcessor", "GpuMMGlm4vVideoProcessor"],
        "internvl": ["GpuMMGotOcr2ImageProcessor", "GpuMMInternVLVideoProcessor"],
        "gemma3": ["GpuMMGemma3ImageProcessor", "NoneType"],
        "internvl_chat": ["GpuMMInternVLChatImageProcessor", "GpuMMInternVLChatVideoProcessor"]}


@pytest.mark.parametrize("case", ["glm4v/images", "internvl/images", "internvl/video", "gemma3/images",
                                  "internvl_chat/images", "internvl_chat/video"])
def test_the_other_families_give_vllms_own_ids_placeholders_and_features(case):
    """Through vLLM's own path (its connector, its processor for the family, its prompt expansion): GLM-4.1V's
    patch rows (uint8, vLLM normalizes on the device), InternVL's tiles and frames, Gemma 3's images (float: vLLM
    turns device normalization off for them), each bit for bit; and gpu-mm computed them. InternVL's original
    checkpoints (``internvl_chat``, a weightless folder loaded with trust_remote_code as the published ones are):
    vLLM's own processor classes with gpu-mm's tiles, which differ from vLLM's by float32 rounding of the
    normalization (see tests/models/test_internvl_chat.py) and are then cast to the model's bfloat16: equal here,
    and at most one bfloat16 step (2**-6 for values up to 2.7) wherever a rounding lands on the other side."""
    r = scenarios()
    if case.startswith("internvl_chat"):
        got = r["families"][case]
        assert got["vllm_error"] is None and got["gpu_mm_error"] is None, got
        assert got["gpu_mm"] == got["vllm"]  # ids, placeholders, counts, pixel shapes and dtypes
        assert all(d <= 2**-6 for d in got["image_diff"] + got["video_diff"])
        assert got["image_diff" if case.endswith("images") else "video_diff"]
    else:
        _same(r["families"][case])
    computed = {"glm4v/images": "GpuMMGlm4vImageProcessor", "internvl/images": "GpuMMGotOcr2ImageProcessor",
                "internvl/video": "GpuMMInternVLVideoProcessor", "gemma3/images": "GpuMMGemma3ImageProcessor",
                "internvl_chat/images": "GpuMMInternVLChatImageProcessor",
                "internvl_chat/video": "GpuMMInternVLChatVideoProcessor"}
    assert computed[case] in r["drop_ins_that_computed"]


@pytest.mark.parametrize("model_type", ["qwen2_5_omni", "qwen3_omni_moe"])
def test_the_omni_thinkers_give_vllms_own_audio_and_image_features(model_type):
    """Qwen2.5-Omni and Qwen3-Omni through vLLM's own processing (weightless folders): two clips (16 kHz arrays) and
    an image give the same ids, placeholders and tensors (``input_audio_features``, ``feature_attention_mask``,
    ``audio_feature_lengths``; ``pixel_values``, ``image_grid_thw``) with the plug-in as without, its Whisper
    feature extractor drop-in computing the audio (counted)."""
    r = scenarios()
    assert r["omni_components"][model_type] == ["GpuMMQwen2VLImageProcessor", "GpuMMQwen2VLVideoProcessor",
                                                "GpuMMWhisperFeatureExtractor"]
    for kind, got in r["omni"][model_type].items():
        assert got["same_ids"] and got["placeholders"] and got["same_tensors"], (kind, got)
    assert "input_audio_features" in r["omni"][model_type]["audio"]["keys"]
    assert r["omni_log_mel_calls"] >= 2  # one audio call per family, each computed by gpu-mm


def test_glm_video_fails_in_vllm_itself_and_the_plugin_changes_nothing():
    """vLLM 0.33 + transformers 5.25: its GLM-4.1V processor drops the videos before transformers' call, as for
    Qwen3-VL (the pixel work is compared with transformers in tests/models/test_glm4v.py)."""
    r = scenarios()["families"]["glm4v/video"]
    assert r["vllm_error"] and "no videos were passed" in r["vllm_error"]
    assert r["gpu_mm_error"] == r["vllm_error"]


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen3_vl", "internvl"])
def test_loader_returns_vllms_frames_and_metadata(family):
    """The Qwen loaders sample 2 fps (6 of the clip's 45 frames); InternVL's video processor gets vLLM's default
    loader's 32 evenly spread frames from both."""
    r = scenarios()["loader"][family]
    assert r["types"] == ["ndarray", "ndarray"] and r["dtypes"] == ["uint8", "uint8"]
    frames = 32 if family == "internvl" else 6
    assert r["shapes"][0] == r["shapes"][1] == [frames, 120, 160, 3]
    theirs, ours = dict(r["meta_vllm"]), dict(r["meta_gpu_mm"])
    assert theirs.pop("video_backend") == "opencv" and ours.pop("video_backend") == "gpu_mm:pyav"
    assert ours == theirs
    assert r["frame_diff"] == 0.0


def test_loader_decodes_keyframe_runs_at_once_with_the_same_frames():
    """Three threads lent: the 16 sampled frames of a four-GOP clip decode as four runs at once, the same frames as
    one decoder and as vLLM's own Qwen loader; nothing stays lent. None lent: one decoder."""
    r = scenarios()["loader_runs"]
    assert r["runs"] == [4] and r["lent_after"] == [0, 0]
    # The admission bytes count each decoder's state (33 bytes per source pixel) beside the frames.
    (one, one_bytes), (four, split_bytes) = r["planned"]
    assert (one, four) == (1, 4) and one_bytes == (16 * 3 + 33) * 120 * 160
    assert split_bytes - one_bytes == 3 * 33 * 120 * 160
    assert r["shapes"] == [[16, 120, 160, 3]] * 2
    assert r["same_as_one_decoder"] and r["diff_vllm"] == 0.0 and r["backend"] == "gpu_mm:pyav"


def test_sampling_equals_vllms_own_loaders_rules():
    """gpu-mm's arithmetic against vLLM's ``compute_frames_index_to_sample`` for both Qwen families (1280 cases of
    clip length, source fps, fps and frame bounds; both refuse the same too-short clips) and for vLLM's default
    loader (1125 cases of clip length, source fps, ``num_frames`` and ``fps``)."""
    r = scenarios()["sampling"]
    assert r["checked"] == 1280 + 1125 and r["mismatches"] == []


def test_off_unless_asked_for():
    parts = scenarios()["enabled_parts"]
    assert parts[""] == parts["0"] == []
    assert parts["1"] == parts["all"] == ["loader", "processors"]
    assert parts["loader"] == ["loader"] and parts["processors, loader"] == ["loader", "processors"]
    assert parts["loaders"].startswith("ValueError")
    assert scenarios()["registered_when_off"] == {"loader": [], "processors": []}


def test_bad_media_is_a_typed_gpu_mm_error_that_vllm_answers_with_400():
    errors = scenarios()["errors"]
    assert set(errors) == {"garbage", "truncated", "image_as_video"}
    for name, e in errors.items():
        assert e["gpu_mm"] and e["media_error"] and e["http"] == 400, (name, e)
        assert e["message"].startswith("video (bytes, "), e  # names the item
    assert errors["image_as_video"]["raised"] == "LimitExceeded"


def test_options_gpu_mm_does_not_implement_run_transformers_own_code():
    r = scenarios()["fallback"]
    assert r["image_processor"] == "GpuMMQwen2VLImageProcessor"
    assert r["transformers_calls"] == 1 and r["same_ids"] and r["diff"] == [0.0]


def test_admission_bound_and_deadline_map_to_503_and_504_and_hold_places_until_work_ends():
    a = scenarios()["admission"]
    count = a["count"]
    assert a["while_one_runs"] == {"running": 1, "bytes": a["load_bytes"]}
    assert a["with_one_waiting"] == {"running": 1, "waiting": 1}
    # Refused while the first load was still held: it did not wait for a place.
    assert count["third"]["raised"] == "VLLMOverloaded" and count["third"]["http"] == 503
    assert count["queued"]["raised"] == "VLLMTimeout" and count["queued"]["http"] == 504
    assert "waited for a decoder" in count["queued"]["message"]
    assert count["first"]["raised"] == "VLLMTimeout"  # its caller gave up ...
    assert "decoding" in count["first"]["message"]
    # ... but its decode still ran, holding its place and its bytes, and the waiter left.
    assert a["abandoned_decode_runs"] == {"running": 1, "waiting": 0, "bytes": a["load_bytes"]}
    assert a["after_count"] == {"running": 0, "waiting": 0, "bytes": 0}
    assert a["loader_threads_at_end"] == []  # loaders replaced by new settings left no threads behind


def test_decoded_frames_in_flight_are_bounded_by_the_memory_budget():
    a = scenarios()["admission"]
    # Two decoders free, but the budget holds one clip's frames: the second load waited for bytes, timed out.
    assert a["bytes_bound_while_waiting"] == {"running": 1, "bytes": a["load_bytes"]}
    assert a["bytes"]["second"]["raised"] == "VLLMTimeout" and a["bytes"]["second"]["http"] == 504
    assert a["bytes"]["first"]["raised"] == "VLLMTimeout"  # held past its deadline by the test
    assert a["after_bytes"] == {"running": 0, "waiting": 0, "bytes": 0}
    too_big = a["bytes"]["too_big"]
    assert too_big["raised"] == "LimitExceeded" and too_big["http"] == 400
    assert "over the loader's budget" in too_big["message"] and too_big["message"].startswith("video (bytes, ")


def test_vllms_api_server_answers_the_plugins_errors_with_503_504_and_400():
    """vLLM's own exception handlers (as ``vllm serve`` installs them) on the errors the plug-in raises."""
    http = scenarios()["http"]
    assert {name: r["status"] for name, r in http.items()} == {"overloaded": 503, "timeout": 504, "bad_media": 400}
    assert "corrupt stream" in http["bad_media"]["body"]["error"]["message"]
    assert "at their bound" in http["overloaded"]["body"]["error"]["message"]


def test_hostile_sampling_options_are_400s_and_large_ones_are_capped_as_vllm_caps_them():
    r = scenarios()["hostile_options"]
    for name in ("tp0", "fps_neg", "fps_nan", "fps_str", "frames_huge", "unknown"):
        assert r[name].get("raised") == "InvalidRequest" and r[name]["http"] == 400, (name, r[name])
    assert r["capped"] == {"loaded": 44}  # fps 30 at most: 45 frames, floored to an even 44
