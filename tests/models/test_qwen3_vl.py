"""Qwen3-VL against transformers' own ``Qwen3VLProcessor`` (built in code, small tokenizer, no hub):
the same frames sampled, the same grids, the same timestamps and bit-identical features from the same
decoded pixels (gpu-mm decodes the clip itself with PyAV; the reference gets every frame decoded by PyAV
and samples them itself)."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import json
import re

import pytest
import torch
from PIL import Image

transformers = pytest.importorskip("transformers")
from transformers import (  # noqa: E402
    PreTrainedTokenizerFast,
    Qwen2VLImageProcessor,
    Qwen3VLProcessor,
    Qwen3VLVideoProcessor,
)
from transformers.video_utils import VideoMetadata  # noqa: E402

from gpu_mm import InvalidRequest, LimitExceeded, Preprocessor  # noqa: E402
from gpu_mm.models.qwen3_vl import Qwen3VLConfig  # noqa: E402
from gpu_mm.pipeline.families import Qwen2VLPreprocessor, Qwen3VLPreprocessor  # noqa: E402

from media_helpers import all_frames, clip, make_image  # noqa: E402

SPECIAL = ["<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>"]
PROMPT = "<|vision_start|><|video_pad|><|vision_end|> describe"


@pytest.fixture(scope="module")
def tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers

    # Words for the prompt's timestamps too ("<12.5 seconds>" -> "<", "1", "2", ".", "5", "seconds>"), so that
    # the decoded prompt still says them.
    words = ["<unk>", *SPECIAL, "describe", "<", ".", "seconds>", *"0123456789"]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(),
                                                 pre_tokenizers.Digits(individual_digits=True),
                                                 pre_tokenizers.Split(".", "isolated")])
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", additional_special_tokens=SPECIAL)


def reference(tokenizer, cfg: Qwen3VLConfig) -> Qwen3VLProcessor:
    """transformers' processor with the same settings as ``cfg`` (the published Qwen3-VL configs' values)."""
    image = Qwen2VLImageProcessor(
        patch_size=cfg.patch_size, temporal_patch_size=cfg.temporal_patch_size, merge_size=cfg.merge_size,
        size={"shortest_edge": cfg.image_min_pixels, "longest_edge": cfg.image_max_pixels},
        image_mean=list(cfg.image_mean), image_std=list(cfg.image_std))
    video = Qwen3VLVideoProcessor(
        patch_size=cfg.patch_size, temporal_patch_size=cfg.temporal_patch_size, merge_size=cfg.merge_size,
        size={"shortest_edge": cfg.video_min_pixels, "longest_edge": cfg.video_max_pixels}, fps=cfg.fps,
        min_frames=cfg.min_frames, max_frames=cfg.max_frames, image_mean=list(cfg.image_mean),
        image_std=list(cfg.image_std), cap_pixels_per_frame=cfg.cap_pixels_per_frame,
        max_video_tokens=cfg.max_video_tokens)
    return Qwen3VLProcessor(image_processor=image, video_processor=video, tokenizer=tokenizer)


def run_reference(proc: Qwen3VLProcessor, data: bytes, src_fps: float, **videos_kwargs):
    """transformers on every frame of ``data`` (PyAV-decoded), sampling them itself from the metadata."""
    frames = all_frames(data)
    meta = VideoMetadata(total_num_frames=frames.shape[0], fps=src_fps, frames_indices=list(range(frames.shape[0])))
    out = proc(text=[PROMPT], videos=[torch.from_numpy(frames)], return_tensors="pt",
               videos_kwargs={"video_metadata": [meta], "do_sample_frames": True, **videos_kwargs})
    # The frames transformers sampled (and timed the prompt with): its video processor's metadata says.
    sampled = proc.video_processor(videos=[torch.from_numpy(frames)], video_metadata=[meta], do_sample_frames=True,
                                   return_metadata=True, **videos_kwargs)["video_metadata"][0]
    return out, sampled


def assert_same_video(ours, theirs, proc, meta, tokenizer):
    assert torch.equal(ours.video_grid_thw, theirs["video_grid_thw"])
    torch.testing.assert_close(ours.pixel_values_videos, theirs["pixel_values_videos"], rtol=0, atol=0)
    indices = ours.items[0].frame_indices
    assert indices == list(meta.frames_indices)
    expected = proc._calculate_timestamps(list(indices), meta.fps, proc.video_processor.temporal_patch_size)
    assert ours.video_timestamps == [expected]
    # The prompt the installed transformers built says exactly these timestamps, one per temporal step, in order,
    # and as many video tokens as the grid has merged patches. (How the steps are wrapped moved between versions:
    # 5.25 wraps each step in vision start/end and drops the chat template's outer pair; 5.24 kept both.)
    text = tokenizer.decode(theirs["input_ids"][0])
    assert "<unk>" not in text
    stamps = re.findall(r"<(\d+\.\d)seconds>", text.replace(" ", ""))
    assert stamps == [f"{t:.1f}" for t in expected]
    merge = proc.video_processor.merge_size
    assert text.count("<|video_pad|>") == int(ours.video_grid_thw[0].prod()) // merge**2
    assert ours.to_dict().keys() == {"pixel_values_videos", "video_grid_thw"}


# (frames, fps, height, width): odd sampled counts, a clip shorter than min_frames, frames smaller than one
# merged patch (scaled up), a 4:3 and a portrait clip.
VIDEOS = [
    (47, 24, 96, 128),   # int(47 / 24 * 2) = 3 -> 4 (min_frames)
    (61, 10, 64, 80),    # 12 frames
    (75, 6, 96, 64),     # 25 frames: odd, the last repeated
    (5, 24, 64, 64),     # a clip shorter than min_frames: all 5 (odd)
    (9, 3, 20, 24),      # frames smaller than the 32-pixel factor
]


@pytest.mark.parametrize(("frames", "fps", "h", "w"), VIDEOS)
def test_video_equals_transformers(tokenizer, frames, fps, h, w):
    cfg = Qwen3VLConfig()
    data = clip("h264", frames, h, w, fps=fps)
    ours = Qwen3VLPreprocessor("cpu", config=cfg, cache_bytes=0)(videos=[data])
    proc = reference(tokenizer, cfg)
    theirs, meta = run_reference(proc, data, fps)
    assert_same_video(ours, theirs, proc, meta, tokenizer)


@pytest.mark.parametrize("cap", [False, True])
def test_clip_pixel_bounds_and_per_frame_cap_equal_transformers(tokenizer, cap):
    """A clip over its total-pixel bound is scaled down as a whole; with the cap, per frame too."""
    cfg = Qwen3VLConfig(video_max_pixels=16 * 96 * 96, cap_pixels_per_frame=cap, max_video_tokens=4)
    data = clip("h264", 72, 160, 224, fps=8)
    ours = Qwen3VLPreprocessor("cpu", config=cfg, cache_bytes=0)(videos=[data])
    proc = reference(tokenizer, cfg)
    theirs, meta = run_reference(proc, data, 8)
    assert_same_video(ours, theirs, proc, meta, tokenizer)
    assert ours.items[0].resized[0] < 160  # the bound did bite


def test_many_frames_clamped_to_max_frames(tokenizer):
    cfg = Qwen3VLConfig(max_frames=10, fps=4.0)
    data = clip("h264", 96, 64, 64, fps=8)  # 48 frames wanted, 10 allowed
    ours = Qwen3VLPreprocessor("cpu", config=cfg, cache_bytes=0)(videos=[data])
    proc = reference(tokenizer, cfg)
    theirs, meta = run_reference(proc, data, 8)
    assert_same_video(ours, theirs, proc, meta, tokenizer)
    assert len(ours.items[0].frame_indices) == 10


@pytest.mark.parametrize(("option", "theirs_kw"),
                         [({"nframes": 7}, {"num_frames": 7, "fps": None}), ({"fps": 1.0}, {"fps": 1.0})])
def test_request_options_equal_transformers_kwargs(tokenizer, option, theirs_kw):
    cfg = Qwen3VLConfig()
    data = clip("h264", 48, 64, 96, fps=12)
    ours = Qwen3VLPreprocessor("cpu", config=cfg, cache_bytes=0)(videos=[data], **option)
    proc = reference(tokenizer, cfg)
    theirs, meta = run_reference(proc, data, 12, **theirs_kw)
    assert_same_video(ours, theirs, proc, meta, tokenizer)


@pytest.mark.parametrize(("h", "w", "fmt"), [(300, 200, "JPEG"), (64, 64, "PNG"), (20, 700, "PNG")])
def test_images_equal_transformers(tokenizer, h, w, fmt):
    cfg = Qwen3VLConfig()
    data = make_image(h, w, fmt)
    ours = Qwen3VLPreprocessor("cpu", config=cfg, cache_bytes=0)(images=[data])
    theirs = reference(tokenizer, cfg).image_processor(images=[Image.open(io.BytesIO(data))], return_tensors="pt")
    assert torch.equal(ours.image_grid_thw, theirs["image_grid_thw"])
    # Same decoded pixels (the PIL image is the file's RGB), same ops: exact.
    torch.testing.assert_close(ours.pixel_values, theirs["pixel_values"], rtol=0, atol=0)
    assert ours.to_dict().keys() == {"pixel_values", "image_grid_thw"}


def test_decoded_frames_are_taken_as_sampled_at_fps(tokenizer):
    """Frames given as an array: all of them, resized under the clip bound, timestamps i / fps; equal to
    transformers with ``do_sample_frames=False`` and metadata saying the same fps."""
    frames = all_frames(clip("h264", 7, 96, 128))
    ours = Qwen3VLPreprocessor("cpu", cache_bytes=0)(videos=[frames], fps=2.0)
    proc = reference(tokenizer, Qwen3VLConfig())
    meta = VideoMetadata(total_num_frames=7, fps=2.0, frames_indices=list(range(7)))
    theirs = proc(text=[PROMPT], videos=[torch.from_numpy(frames)], return_tensors="pt",
                  videos_kwargs={"video_metadata": [meta], "do_sample_frames": False})
    assert_same_video(ours, theirs, proc, meta, tokenizer)
    assert ours.video_timestamps == [[0.25, 1.25, 2.25, 3.0]]


def test_single_frame_clip_is_one_padded_patch(tokenizer):
    """transformers refuses a clip shorter than one temporal patch; gpu-mm pads it (the frame repeated), which
    is what transformers gives for that frame twice."""
    data = clip("h264", 1, 64, 96)
    ours = Qwen3VLPreprocessor("cpu", cache_bytes=0)(videos=[data])
    frame = all_frames(data)[[0, 0]]
    proc = reference(tokenizer, Qwen3VLConfig())
    theirs = proc.video_processor(videos=[torch.from_numpy(frame)], do_sample_frames=False, return_tensors="pt")
    assert ours.video_grid_thw.tolist() == theirs["video_grid_thw"].tolist() == [[1, 4, 6]]
    torch.testing.assert_close(ours.pixel_values_videos, theirs["pixel_values_videos"], rtol=0, atol=0)
    assert ours.video_timestamps == [[0.0]]


def test_async_equals_sync():
    data = clip("h264", 30, 64, 64, fps=10)
    pre = Qwen3VLPreprocessor("cpu", cache_bytes=0)

    async def main():
        async with pre:
            return await pre.preprocess(images=[make_image(40, 60, "PNG")], videos=[data], video_start=0.5)

    b = pre(images=[make_image(40, 60, "PNG")], videos=[data], video_start=0.5)
    a = asyncio.run(main())
    assert torch.equal(a.pixel_values_videos, b.pixel_values_videos) and torch.equal(a.pixel_values, b.pixel_values)
    assert a.video_timestamps == b.video_timestamps and a.items[1].frame_indices[0] >= 5


def test_an_empty_time_window_is_a_typed_error():
    with pytest.raises(LimitExceeded, match="selects no frames"):
        Qwen3VLPreprocessor("cpu")(videos=[clip("h264", 12, 64, 64, fps=12)], video_start=5.0)


def test_option_a_family_does_not_read_is_refused():
    @dataclasses.dataclass(frozen=True)
    class NoWindow(Qwen3VLConfig):
        options = frozenset({"fps"})

    class Pre(Qwen3VLPreprocessor):
        config_class = NoWindow

    with pytest.raises(InvalidRequest, match="nframes"):
        Pre("cpu")(videos=[clip("h264", 12, 64, 64)], nframes=4)


# ---------------------------------------------------------------- from a model folder


def _folder(tmp_path, tokenizer, model_type: str, proc) -> str:
    proc.save_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": model_type}))
    return str(tmp_path)


def test_from_pretrained_builds_the_folders_family(tmp_path, tokenizer):
    cfg = Qwen3VLConfig(video_max_pixels=16 * 96 * 96, fps=1.0, max_frames=64, cap_pixels_per_frame=True)
    folder = _folder(tmp_path, tokenizer, "qwen3_vl_moe", reference(tokenizer, cfg))
    pre = Preprocessor.from_pretrained(folder, device="cpu", cache_bytes=0)
    assert type(pre) is Qwen3VLPreprocessor
    assert pre.config == cfg
    assert type(Qwen3VLPreprocessor.from_pretrained(folder, device="cpu")) is Qwen3VLPreprocessor
    with pytest.raises(ValueError, match="qwen3_vl_moe"):
        Qwen2VLPreprocessor.from_pretrained(folder, device="cpu")


@pytest.mark.parametrize(("model_type", "spgt"), [("qwen2_vl", False), ("qwen2_5_vl", True)])
def test_from_pretrained_qwen2_families_keep_their_processors_keys(tmp_path, tokenizer, model_type, spgt):
    from transformers import Qwen2VLProcessor, Qwen2VLVideoProcessor

    proc = Qwen2VLProcessor(image_processor=Qwen2VLImageProcessor(max_pixels=200704), tokenizer=tokenizer,
                            video_processor=Qwen2VLVideoProcessor())
    pre = Preprocessor.from_pretrained(_folder(tmp_path, tokenizer, model_type, proc), device="cpu")
    assert type(pre) is Qwen2VLPreprocessor and pre.config.image_max_pixels == 200704
    feats = pre(videos=[clip("h264", 24, 64, 64)])
    assert ("second_per_grid_ts" in feats.to_dict()) is spgt


def test_from_pretrained_without_config_json_uses_the_processor_class(tmp_path, tokenizer):
    reference(tokenizer, Qwen3VLConfig()).save_pretrained(tmp_path)
    assert type(Preprocessor.from_pretrained(tmp_path, device="cpu")) is Qwen3VLPreprocessor


def test_from_pretrained_refuses_what_it_cannot_serve(tmp_path):
    with pytest.raises(FileNotFoundError):
        Preprocessor.from_pretrained(tmp_path, device="cpu")
    (tmp_path / "preprocessor_config.json").write_text("{}")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llava"}))
    with pytest.raises(KeyError, match="known"):
        Preprocessor.from_pretrained(tmp_path, device="cpu")


def test_registry_refuses_a_second_family_under_a_taken_name():
    from gpu_mm.models import get_family, register_family
    from gpu_mm.pipeline.families import preprocessor_class

    assert get_family("qwen3_5") is get_family("Qwen3VLProcessor")
    assert preprocessor_class("qwen3_5") is preprocessor_class("Qwen3VLProcessor") is Qwen3VLPreprocessor
    assert preprocessor_class("qwen2_5_vl") is Qwen2VLPreprocessor

    @dataclasses.dataclass(frozen=True)
    class Impostor(Qwen3VLConfig):
        pass

    with pytest.raises(ValueError, match="already registered"):
        register_family(Impostor, get_family("qwen3_vl").features_class, preprocessor_name="ImpostorPreprocessor")
    assert preprocessor_class("qwen3_vl") is Qwen3VLPreprocessor


def test_a_family_is_data_and_its_preprocessor_class_pickles_by_name():
    import pickle

    pre = Qwen3VLPreprocessor("cpu", cache_bytes=0)
    assert type(pickle.loads(pickle.dumps(pre))) is Qwen3VLPreprocessor
    assert Qwen3VLPreprocessor.__module__ == "gpu_mm.pipeline.families"
    assert Qwen3VLPreprocessor.config_class is Qwen3VLConfig


# ---------------------------------------------------------------- the transformers drop-in


def _with_drop_in(tokenizer, cfg: Qwen3VLConfig) -> tuple[Qwen3VLProcessor, Qwen3VLProcessor]:
    from gpu_mm.integrations.hf import GpuMMQwen3VLVideoProcessor

    stock = reference(tokenizer, cfg)
    ours = Qwen3VLProcessor(image_processor=stock.image_processor, tokenizer=tokenizer,
                            video_processor=GpuMMQwen3VLVideoProcessor(**stock.video_processor.to_dict()))
    return ours, stock


def _pil_frames(frames):
    return [Image.fromarray(f) for f in frames]


# transformers refuses to sample frames from a list of images: that form goes unsampled only.
@pytest.mark.parametrize(("form", "sample"), [("tensor", True), ("tensor", False), ("numpy", True), ("numpy", False),
                                              ("pil_list", False), ("nested", True), ("nested", False)])
def test_drop_in_equals_the_stock_processor(tokenizer, monkeypatch, form, sample):
    """Every input form transformers takes, sampled from the metadata or not: the same prompt ids, grids and
    (exactly) features, with gpu-mm doing the pixel work (transformers' own ``_preprocess`` never runs)."""
    ours, stock = _with_drop_in(tokenizer, Qwen3VLConfig(cap_pixels_per_frame=True))
    frames = all_frames(clip("h264", 31, 64, 96, fps=6))
    video = {"tensor": torch.from_numpy(frames), "numpy": frames, "pil_list": _pil_frames(frames),
             "nested": [torch.from_numpy(frames)]}[form]
    meta = {"total_num_frames": 31, "fps": 6.0, "frames_indices": list(range(31))}

    def run(proc):
        return proc(text=[PROMPT], videos=video if form == "nested" else [video], return_tensors="pt",
                    videos_kwargs={"video_metadata": [VideoMetadata(**meta)], "do_sample_frames": sample})

    theirs = run(stock)
    calls = []
    original = Qwen3VLVideoProcessor._preprocess
    monkeypatch.setattr(Qwen3VLVideoProcessor, "_preprocess", lambda *a, **k: calls.append(1) or original(*a, **k))
    got = run(ours)
    assert not calls
    assert torch.equal(got["input_ids"], theirs["input_ids"])
    assert torch.equal(got["video_grid_thw"], theirs["video_grid_thw"])
    torch.testing.assert_close(got["pixel_values_videos"], theirs["pixel_values_videos"], rtol=0, atol=0)


def test_drop_in_hands_options_it_does_not_implement_to_transformers(tokenizer, monkeypatch):
    from gpu_mm.integrations.hf import GpuMMQwen3VLVideoProcessor

    frames = torch.from_numpy(all_frames(clip("h264", 8, 64, 64)))
    calls = []
    original = Qwen3VLVideoProcessor._preprocess
    monkeypatch.setattr(Qwen3VLVideoProcessor, "_preprocess", lambda *a, **k: calls.append(1) or original(*a, **k))
    for kw in ({"do_normalize": False}, {"resample": 2}, {"do_rescale": False}):
        got = GpuMMQwen3VLVideoProcessor()(videos=[frames], do_sample_frames=False, return_tensors="pt", **kw)
        ref = Qwen3VLVideoProcessor()(videos=[frames], do_sample_frames=False, return_tensors="pt", **kw)
        assert torch.equal(got["pixel_values_videos"], ref["pixel_values_videos"])
    assert len(calls) == 6  # each option went to transformers' own code, in both processors
