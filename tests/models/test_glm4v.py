"""GLM-4.1V / 4.5V and GLM-4.6V against transformers' own ``Glm4vProcessor`` / ``Glm46VProcessor`` (built in code,
small tokenizer, no hub): the same frames sampled, the same sizes (an image's budget counts the temporal patch; a
video's is shared by its frames), the same timestamps in the prompt and bit-identical features from the same
decoded pixels (gpu-mm decodes the clip itself with PyAV; the reference gets every frame decoded by PyAV and
samples them itself, with the duration its own video loaders set: frames / fps)."""

from __future__ import annotations

import io
import json
import re

import pytest
import torch
from PIL import Image

transformers = pytest.importorskip("transformers")
from transformers import (  # noqa: E402
    Glm4vImageProcessor,
    Glm4vProcessor,
    Glm4vVideoProcessor,
    Glm46VProcessor,
    Glm46VVideoProcessor,
    PreTrainedTokenizerFast,
)
from transformers.video_utils import VideoMetadata  # noqa: E402

from gpu_mm import InvalidRequest, LimitExceeded, Preprocessor  # noqa: E402
from gpu_mm.models.glm4v import (  # noqa: E402
    Glm4vConfig,
    Glm46VConfig,
    sample_indices_glm4v,
    sample_indices_glm46v,
)
from gpu_mm.pipeline.families import preprocessor_class  # noqa: E402

from media_helpers import all_frames, clip, make_image  # noqa: E402

# transformers' Glm4vProcessor builds mm_token_type_ids with np.array(tensor), which numpy 2 warns about.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")

SPECIAL = ["<|image|>", "<|video|>", "<|begin_of_image|>", "<|end_of_image|>", "<|begin_of_video|>",
           "<|end_of_video|>"]
PROMPT = "<|begin_of_video|><|video|><|end_of_video|> describe"


@pytest.fixture(scope="module")
def tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = ["<unk>", *SPECIAL, "describe", ".", "seconds", *"0123456789"]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(),
                                                 pre_tokenizers.Digits(individual_digits=True),
                                                 pre_tokenizers.Split(".", "isolated")])
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", additional_special_tokens=SPECIAL)


def reference(tokenizer, cfg: Glm4vConfig):
    """transformers' processor with ``cfg``'s settings."""
    image = Glm4vImageProcessor(size={"shortest_edge": cfg.image_min_pixels, "longest_edge": cfg.image_max_pixels})
    size = {"shortest_edge": cfg.video_min_pixels, "longest_edge": cfg.video_max_pixels}
    if isinstance(cfg, Glm46VConfig):
        return Glm46VProcessor(image_processor=image, tokenizer=tokenizer, video_processor=Glm46VVideoProcessor(
            size=size))
    video = Glm4vVideoProcessor(size=size, fps=cfg.fps, max_duration=cfg.max_duration)
    return Glm4vProcessor(image_processor=image, tokenizer=tokenizer, video_processor=video)


def run_reference(proc, data: bytes, src_fps: float, **videos_kwargs):
    frames = torch.from_numpy(all_frames(data))
    n = frames.shape[0]

    def meta():
        return VideoMetadata(total_num_frames=n, fps=src_fps, duration=n / src_fps, frames_indices=list(range(n)))

    out = proc(text=[PROMPT], videos=[frames], return_tensors="pt",
               videos_kwargs={"video_metadata": [meta()], "do_sample_frames": True, **videos_kwargs})
    sampled = proc.video_processor(videos=[frames], video_metadata=[meta()], do_sample_frames=True,
                                   return_metadata=True, **videos_kwargs)["video_metadata"][0]
    return out, sampled


def assert_same_video(ours, theirs, proc, meta, tokenizer, glm46v: bool):
    assert torch.equal(ours.video_grid_thw, theirs["video_grid_thw"])
    torch.testing.assert_close(ours.pixel_values_videos, theirs["pixel_values_videos"], rtol=0, atol=0)
    assert ours.items[0].frame_indices == list(meta.frames_indices)
    stamps = ours.video_timestamps[0]
    assert stamps == list(meta.timestamps[::2])
    # The installed processor's prompt: one step per temporal patch, each followed by its time, and as many
    # image tokens in all as the grid has merged patches.
    text = tokenizer.decode(theirs["input_ids"][0]).replace(" ", "")
    assert "<unk>" not in text
    written = re.findall(r"<\|end_of_image\|>([0-9.]+)(?:seconds)?", text)
    assert written == [f"{t:.1f}" if glm46v else str(int(t)) for t in stamps]
    assert text.count("<|image|>") == ours.items[0].num_tokens == int(ours.video_grid_thw[0].prod()) // 4
    assert ours.to_dict().keys() == {"pixel_values_videos", "video_grid_thw"}


# (frames, fps, height, width): odd and even counts, frames smaller than one merged patch (scaled up), a clip
# over max_duration (a small max_duration keeps it short), a portrait clip.
VIDEOS = [
    (47, 24, 96, 128),
    (61, 10, 64, 80),
    (75, 6, 96, 64),
    (9, 3, 20, 24),
    (3, 24, 64, 64),
]


@pytest.mark.parametrize("family", [Glm4vConfig, Glm46VConfig])
@pytest.mark.parametrize(("frames", "fps", "h", "w"), VIDEOS)
def test_video_equals_transformers(tokenizer, family, frames, fps, h, w):
    cfg = family(video_max_pixels=2 * 28 * 28 * 60)  # a small clip budget: the frame size follows the count
    data = clip("h264", frames, h, w, fps=fps)
    pre = preprocessor_class(cfg.family)("cpu", config=cfg, cache_bytes=0)
    if family is Glm46VConfig and frames / fps < 1 / 6:  # under one sampled step: no frame (see below)
        with pytest.raises(LimitExceeded, match="too short"):
            pre(videos=[data])
        return
    ours = pre(videos=[data])
    proc = reference(tokenizer, cfg)
    theirs, meta = run_reference(proc, data, fps)
    assert_same_video(ours, theirs, proc, meta, tokenizer, family is Glm46VConfig)


def test_a_clip_longer_than_max_duration_is_spread_over(tokenizer):
    cfg = Glm4vConfig(max_duration=4)
    data = clip("h264", 100, 64, 64, fps=10)  # 10 s > 4 s: 8 frames spread over the clip
    ours = preprocessor_class("glm4v")("cpu", config=cfg, cache_bytes=0)(videos=[data])
    proc = reference(tokenizer, cfg)
    theirs, meta = run_reference(proc, data, 10)
    assert ours.items[0].frame_indices[-1] > 80
    assert_same_video(ours, theirs, proc, meta, tokenizer, False)


def test_fps_option_equals_transformers_kwarg(tokenizer):
    cfg = Glm4vConfig()
    data = clip("h264", 48, 64, 96, fps=12)
    ours = preprocessor_class("glm4v")("cpu", config=cfg, cache_bytes=0)(videos=[data], fps=1.0)
    proc = reference(tokenizer, cfg)
    theirs, meta = run_reference(proc, data, 12, fps=1.0)
    assert len(ours.items[0].frame_indices) == 4
    assert_same_video(ours, theirs, proc, meta, tokenizer, False)


@pytest.mark.parametrize(("total", "fps"), [(1, 24), (2, 30), (7, 2), (240, 24), (301 * 30, 30), (50, 0.5)])
def test_glm4v_sampler_equals_transformers(total, fps):
    meta = VideoMetadata(total_num_frames=total, fps=fps, duration=total / fps)
    theirs = Glm4vVideoProcessor().sample_frames(meta).tolist()
    assert sample_indices_glm4v(total, fps, 2.0, 300) == theirs


@pytest.mark.parametrize(("total", "fps"), [(1, 24), (30, 30), (29 * 30, 30), (31 * 30, 30), (299 * 25, 25),
                                            (400 * 24, 24), (2500 * 2, 2), (13, 7)])
def test_glm46v_sampler_equals_transformers(total, fps):
    meta = VideoMetadata(total_num_frames=total, fps=fps, duration=total / fps)
    theirs = Glm46VVideoProcessor().sample_frames(meta).tolist()
    if not theirs:  # transformers samples no frame from a clip this short; gpu-mm refuses it by name
        with pytest.raises(ValueError, match="too short"):
            sample_indices_glm46v(total, fps)
        return
    assert sample_indices_glm46v(total, fps) == theirs


# Images: tiny (scaled up), thin, a budget that binds, JPEG and PNG.
@pytest.mark.parametrize(("h", "w", "fmt"), [(300, 200, "JPEG"), (64, 64, "PNG"), (20, 700, "PNG"),
                                             (10, 12, "PNG"), (900, 1400, "JPEG")])
def test_images_equal_transformers(tokenizer, h, w, fmt):
    cfg = Glm4vConfig(image_max_pixels=2 * 28 * 28 * 400)
    data = make_image(h, w, fmt)
    ours = preprocessor_class("glm4v")("cpu", config=cfg, cache_bytes=0)(images=[data])
    proc = reference(tokenizer, cfg)
    theirs = proc(text=["<|begin_of_image|><|image|><|end_of_image|>"], images=[Image.open(io.BytesIO(data))],
                  return_tensors="pt")
    assert torch.equal(ours.image_grid_thw, theirs["image_grid_thw"])
    torch.testing.assert_close(ours.pixel_values, theirs["pixel_values"], rtol=0, atol=0)
    assert tokenizer.decode(theirs["input_ids"][0]).count("<|image|>") == ours.items[0].num_tokens
    assert ours.to_dict().keys() == {"pixel_values", "image_grid_thw"}


def test_decoded_frames_are_taken_as_sampled_at_fps(tokenizer):
    frames = all_frames(clip("h264", 7, 96, 128))
    ours = preprocessor_class("glm4v")("cpu", cache_bytes=0)(videos=[frames], fps=2.0)
    proc = reference(tokenizer, Glm4vConfig())
    meta = VideoMetadata(total_num_frames=7, fps=2.0, frames_indices=list(range(7)))
    theirs = proc(text=[PROMPT], videos=[torch.from_numpy(frames)], return_tensors="pt",
                  videos_kwargs={"video_metadata": [meta], "do_sample_frames": False})
    assert torch.equal(ours.video_grid_thw, theirs["video_grid_thw"])
    torch.testing.assert_close(ours.pixel_values_videos, theirs["pixel_values_videos"], rtol=0, atol=0)
    assert ours.video_timestamps == [[0.0, 1.0, 2.0, 3.0]]


def test_options_the_family_does_not_read_are_refused():
    with pytest.raises(InvalidRequest, match="nframes"):
        preprocessor_class("glm4v")("cpu")(videos=[clip("h264", 12, 64, 64)], nframes=4)
    with pytest.raises(InvalidRequest, match="fps"):  # GLM-4.6V picks its own rate
        preprocessor_class("glm46v")("cpu")(videos=[clip("h264", 12, 64, 64)], fps=1.0)


def test_a_clip_too_short_for_glm46v_is_a_typed_error():
    """transformers' GLM-4.6V sampler returns no frame for a clip under 1/6 s (and its processor then fails);
    gpu-mm refuses the item by name."""
    meta = VideoMetadata(total_num_frames=3, fps=24, duration=3 / 24)
    assert Glm46VVideoProcessor().sample_frames(meta).tolist() == []
    with pytest.raises(LimitExceeded, match="video\\[0\\].*too short"):
        preprocessor_class("glm46v")("cpu")(videos=[clip("h264", 3, 64, 64, fps=24)])


@pytest.mark.parametrize(("model_type", "family"), [("glm4v", "glm4v"), ("glm4v_moe", "glm4v"),
                                                   ("glm46v", "glm46v")])
def test_from_pretrained_builds_the_folders_family(tmp_path, tokenizer, model_type, family):
    cls = Glm46VConfig if family == "glm46v" else Glm4vConfig
    cfg = cls(image_max_pixels=2 * 28 * 28 * 500, video_max_pixels=28 * 28 * 2 * 1000, video_min_pixels=3136)
    if family == "glm4v":
        cfg = cls(image_max_pixels=cfg.image_max_pixels, video_max_pixels=cfg.video_max_pixels,
                  video_min_pixels=3136, fps=1.0, max_duration=120)
    reference(tokenizer, cfg).save_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": model_type}))
    pre = Preprocessor.from_pretrained(tmp_path, device="cpu", cache_bytes=0)
    assert type(pre) is preprocessor_class(family) and pre.config == cfg
    assert type(pre).__name__ == ("Glm46VPreprocessor" if family == "glm46v" else "Glm4vPreprocessor")
    assert type(Preprocessor.for_model(model_type)) is type(pre)


# ---------------------------------------------------------------- the transformers drop-ins


@pytest.mark.parametrize("family", ["glm4v", "glm46v"])
def test_drop_ins_equal_the_stock_processors(tokenizer, family):
    """The drop-ins inside the family's processor: the same prompt and features as the stock classes, sampling
    included (transformers samples before the pixel work), images and a video in one call; saved, they name the
    stock classes."""
    from gpu_mm.integrations.hf import GpuMMGlm4vImageProcessor, GpuMMGlm4vVideoProcessor, GpuMMGlm46VVideoProcessor

    cfg = Glm46VConfig() if family == "glm46v" else Glm4vConfig()
    stock = reference(tokenizer, cfg)
    video_cls = GpuMMGlm46VVideoProcessor if family == "glm46v" else GpuMMGlm4vVideoProcessor
    ours = type(stock)(image_processor=GpuMMGlm4vImageProcessor(**stock.image_processor.to_dict()),
                       tokenizer=tokenizer, video_processor=video_cls(**stock.video_processor.to_dict()))
    data = clip("h264", 61, 64, 80, fps=10)
    frames = torch.from_numpy(all_frames(data))
    meta = {"total_num_frames": 61, "fps": 10, "duration": 6.1, "frames_indices": list(range(61))}
    image = Image.open(io.BytesIO(make_image(90, 130, "PNG")))
    text = ["<|begin_of_image|><|image|><|end_of_image|> " + PROMPT]
    calls = [proc(text=text, images=[image], videos=[frames], return_tensors="pt",
                  videos_kwargs={"video_metadata": [VideoMetadata(**meta)], "do_sample_frames": True})
             for proc in (stock, ours)]
    assert calls[0].keys() == calls[1].keys()
    for key in calls[0]:
        torch.testing.assert_close(calls[1][key], calls[0][key], rtol=0, atol=0, msg=key)
    from gpu_mm.integrations import hf

    # gpu-mm computed both (a drop-in keeps one preprocessor per config it ran), not transformers' fallback.
    assert hf._PREPROCESSORS.get(ours.image_processor) and hf._PREPROCESSORS.get(ours.video_processor)
    saved = ours.video_processor.to_dict()
    assert saved["video_processor_type"] == type(stock.video_processor).__name__
