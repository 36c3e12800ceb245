"""InternVL (``-hf`` checkpoints) against transformers' own ``GotOcr2ImageProcessor`` (``crop_to_patches``, as
``InternVLProcessor`` asks), ``InternVLVideoProcessor`` and ``InternVLProcessor`` (built in code, small tokenizer,
no hub): the same tile grid (ties included), bit-identical tiles and thumbnail from the same decoded image, the
same ``num_patches`` and prompt token counts; video frames sampled and resized the same."""

from __future__ import annotations

import io
import json

import pytest
import torch
from PIL import Image

transformers = pytest.importorskip("transformers")
from transformers import (  # noqa: E402
    GotOcr2ImageProcessor,
    InternVLProcessor,
    InternVLVideoProcessor,
    PreTrainedTokenizerFast,
)
from transformers.models.got_ocr2.image_processing_got_ocr2 import get_optimal_tiled_canvas  # noqa: E402
from transformers.video_utils import VideoMetadata  # noqa: E402

from gpu_mm import LimitExceeded, Preprocessor  # noqa: E402
from gpu_mm.handoff import FeaturePool  # noqa: E402
from gpu_mm.models.internvl import InternVLConfig, sample_indices, tile_grid  # noqa: E402
from gpu_mm.pipeline.families import preprocessor_class  # noqa: E402

from media_helpers import all_frames, clip, make_image  # noqa: E402

InternVLPreprocessor = preprocessor_class("internvl")
TILE = (56, 56)  # the published 448 works the same; small tiles keep the suite fast
SPECIAL = ["<img>", "</img>", "<IMG_CONTEXT>", "<video>"]


@pytest.fixture(scope="module")
def tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = ["<unk>", *SPECIAL, "describe", "Frame1:", "Frame2:", "Frame3:", "Frame4:"]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", additional_special_tokens=SPECIAL,
        extra_special_tokens={"start_image_token": "<img>", "end_image_token": "</img>",
                              "context_image_token": "<IMG_CONTEXT>", "video_token": "<video>"})


def reference(tokenizer, cfg: InternVLConfig) -> InternVLProcessor:
    size = {"height": cfg.tile_size[0], "width": cfg.tile_size[1]}
    image = GotOcr2ImageProcessor(size=size, image_mean=list(cfg.image_mean), image_std=list(cfg.image_std),
                                  min_patches=cfg.min_patches, max_patches=cfg.max_patches)
    video = InternVLVideoProcessor(size=size, image_mean=list(cfg.image_mean), image_std=list(cfg.image_std))
    return InternVLProcessor(image_processor=image, tokenizer=tokenizer, video_processor=video,
                             image_seq_length=cfg.image_seq_length)


def theirs_for(proc, datas):
    images = [Image.open(io.BytesIO(d)).convert("RGB") for d in datas]
    return proc(text=[" ".join(["<IMG_CONTEXT>"] * len(images)) + " describe"], images=images, return_tensors="pt")


# (height, width): one tile, square, wide and tall, a tiny image, 12 tiles in a row, ties on the aspect ratio
# (2:1 is 2x1 or 4x2: the image's area decides), odd sizes.
SIZES = [(56, 56), (100, 100), (60, 200), (300, 90), (5, 9), (20, 560), (112, 224), (448, 896), (97, 333)]


@pytest.mark.parametrize(("h", "w"), SIZES)
def test_images_equal_transformers(tokenizer, h, w):
    cfg = InternVLConfig(tile_size=TILE, image_seq_length=4)
    data = make_image(h, w, "PNG")
    ours = InternVLPreprocessor("cpu", config=cfg, cache_bytes=0)(images=[data])
    proc = reference(tokenizer, cfg)
    theirs = theirs_for(proc, [data])
    assert ours.num_patches.tolist() == [theirs["pixel_values"].shape[0]]
    torch.testing.assert_close(ours.pixel_values, theirs["pixel_values"], rtol=0, atol=0)
    assert tokenizer.decode(theirs["input_ids"][0]).count("<IMG_CONTEXT>") == ours.items[0].num_tokens
    assert ours.to_dict().keys() == {"pixel_values", "num_patches"}


def test_several_images_keep_their_order_and_counts(tokenizer):
    cfg = InternVLConfig(tile_size=TILE, image_seq_length=4, max_patches=6)
    datas = [make_image(60, 200, "PNG"), make_image(56, 56, "JPEG"), make_image(300, 90, "PNG")]
    ours = InternVLPreprocessor("cpu", config=cfg, cache_bytes=0)(images=datas)
    proc = reference(tokenizer, cfg)
    theirs = theirs_for(proc, datas)
    ref = proc.image_processor(images=[Image.open(io.BytesIO(d)).convert("RGB") for d in datas],
                               crop_to_patches=True, return_tensors="pt")
    assert ours.num_patches.tolist() == ref["num_patches"].tolist()
    torch.testing.assert_close(ours.pixel_values, theirs["pixel_values"], rtol=0, atol=0)


@pytest.mark.parametrize("max_tiles", [1, 6, 12])
def test_tile_grid_equals_transformers_for_every_shape(max_tiles):
    for h in range(1, 1400, 37):
        for w in (1, 17, 448, 449, 896, 1344, 2000, 5376):
            assert tile_grid(h, w, 448, 448, 1, max_tiles) == get_optimal_tiled_canvas((h, w), (448, 448), 1,
                                                                                       max_tiles)


def test_one_view_without_crop_to_patches():
    cfg = InternVLConfig(tile_size=TILE, crop_to_patches=False)
    ours = InternVLPreprocessor("cpu", config=cfg, cache_bytes=0)(images=[make_image(60, 200, "PNG")])
    ref = GotOcr2ImageProcessor(size={"height": 56, "width": 56}, image_mean=list(cfg.image_mean),
                                image_std=list(cfg.image_std))(
        images=[Image.open(io.BytesIO(make_image(60, 200, "PNG")))], return_tensors="pt")
    assert ours.num_patches.tolist() == [1]
    torch.testing.assert_close(ours.pixel_values, ref["pixel_values"], rtol=0, atol=0)


@pytest.mark.parametrize(("options", "theirs_kw"), [({}, {}), ({"nframes": 7}, {"num_frames": 7}),
                                                    ({"fps": 2.0}, {"fps": 2})])
def test_video_equals_transformers(tokenizer, options, theirs_kw):
    cfg = InternVLConfig(tile_size=TILE, image_seq_length=4)
    data = clip("h264", 30, 96, 128, fps=10)
    ours = InternVLPreprocessor("cpu", config=cfg, cache_bytes=0)(videos=[data], **options)
    frames = torch.from_numpy(all_frames(data))
    meta = VideoMetadata(total_num_frames=30, fps=10, duration=3.0)
    proc = reference(tokenizer, cfg)
    theirs = proc.video_processor(videos=[frames], video_metadata=[meta], do_sample_frames=bool(theirs_kw),
                                  return_tensors="pt", **theirs_kw)
    n = theirs["pixel_values_videos"].shape[1]
    assert ours.video_num_patches.tolist() == [n] and ours.items[0].num_tokens == n * cfg.image_seq_length
    torch.testing.assert_close(ours.pixel_values_videos, theirs["pixel_values_videos"][0], rtol=0, atol=0)
    if theirs_kw:
        indices = InternVLVideoProcessor().sample_frames(meta, **theirs_kw).tolist()
        assert ours.items[0].frame_indices == indices == sample_indices(30, n)
    assert ours.to_dict().keys() == {"pixel_values_videos", "video_num_patches"}


def test_prompt_tokens_for_a_video_equal_the_processor(tokenizer):
    cfg = InternVLConfig(tile_size=TILE, image_seq_length=4)
    data = clip("h264", 4, 64, 64)
    ours = InternVLPreprocessor("cpu", config=cfg, cache_bytes=0)(videos=[data])
    theirs = reference(tokenizer, cfg)(text=["<video> describe"], videos=[torch.from_numpy(all_frames(data))],
                                       return_tensors="pt")
    assert tokenizer.decode(theirs["input_ids"][0]).count("<IMG_CONTEXT>") == ours.items[0].num_tokens == 16


def test_more_frames_than_the_clip_is_a_typed_error():
    with pytest.raises(LimitExceeded, match="video\\[0\\].*cannot sample 40 frames"):
        InternVLPreprocessor("cpu", config=InternVLConfig(tile_size=TILE))(videos=[clip("h264", 12, 64, 64)],
                                                                          nframes=40)


def test_pool_block_and_cache_with_images_and_videos():
    cfg = InternVLConfig(tile_size=TILE)
    image, video = make_image(60, 200, "PNG"), clip("h264", 6, 64, 64)
    plain = InternVLPreprocessor("cpu", config=cfg, cache_bytes=0)(images=[image], videos=[video])
    with FeaturePool(max_blocks=2) as pool:
        pooled = InternVLPreprocessor("cpu", config=cfg, output_pool=pool)(images=[image], videos=[video])
        for key, value in plain.to_dict().items():
            assert torch.equal(pooled.to_dict()[key], value), key
        pool.release(pooled.handle)
    cached = InternVLPreprocessor("cpu", config=cfg)
    cached(images=[image], videos=[video])
    again = cached(images=[image], videos=[video])
    assert [i.cache for i in again.items] == ["hit", "hit"]
    assert torch.equal(again.pixel_values, plain.pixel_values)
    assert again.num_patches.tolist() == plain.num_patches.tolist() == [4]


def test_from_pretrained_reads_the_folders_settings(tmp_path, tokenizer):
    cfg = InternVLConfig(tile_size=TILE, max_patches=6, image_seq_length=4)
    reference(tokenizer, cfg).save_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "internvl"}))
    pre = Preprocessor.from_pretrained(tmp_path, device="cpu", cache_bytes=0)
    assert type(pre) is InternVLPreprocessor and pre.config == cfg
    stock = InternVLProcessor.from_pretrained(tmp_path)
    data = make_image(60, 200, "PNG")
    torch.testing.assert_close(pre(images=[data]).pixel_values, theirs_for(stock, [data])["pixel_values"],
                               rtol=0, atol=0)


def test_drop_in_equals_the_stock_processor(tokenizer):
    """``GpuMMGotOcr2ImageProcessor`` inside ``InternVLProcessor``: the same prompt and tiles as the stock class;
    computed by gpu-mm; saved, it names the stock class."""
    from gpu_mm.integrations import hf

    cfg = InternVLConfig(tile_size=TILE, image_seq_length=4, max_patches=6)
    stock = reference(tokenizer, cfg)
    ours = InternVLProcessor(image_processor=hf.GpuMMGotOcr2ImageProcessor(**stock.image_processor.to_dict()),
                             tokenizer=tokenizer, video_processor=stock.video_processor,
                             image_seq_length=cfg.image_seq_length)
    datas = [make_image(60, 200, "PNG"), make_image(56, 56, "JPEG"), make_image(5, 9, "PNG")]
    a, b = theirs_for(stock, datas), theirs_for(ours, datas)
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=0, msg=key)
    assert hf._PREPROCESSORS.get(ours.image_processor)
    assert ours.image_processor.to_dict()["image_processor_type"] == "GotOcr2ImageProcessor"


def test_video_drop_in_equals_the_stock_processor(tokenizer):
    """``GpuMMInternVLVideoProcessor`` inside ``InternVLProcessor``: the same prompt and pixels (the processor puts
    the frames into ``pixel_values``) as the stock class, for frames it samples itself; computed by gpu-mm."""
    from gpu_mm.integrations import hf

    cfg = InternVLConfig(tile_size=TILE, image_seq_length=4)
    stock = reference(tokenizer, cfg)
    ours = InternVLProcessor(image_processor=stock.image_processor, tokenizer=tokenizer,
                             video_processor=hf.GpuMMInternVLVideoProcessor(**stock.video_processor.to_dict()),
                             image_seq_length=cfg.image_seq_length)
    frames = torch.from_numpy(all_frames(clip("h264", 30, 96, 128, fps=10)))
    calls = [proc(text=["<video> describe"], videos=[frames], return_tensors="pt",
                  videos_kwargs={"video_metadata": [VideoMetadata(total_num_frames=30, fps=10, duration=3.0)],
                                 "do_sample_frames": True, "num_frames": 4})
             for proc in (stock, ours)]
    assert calls[0].keys() == calls[1].keys()
    for key in calls[0]:
        torch.testing.assert_close(calls[1][key], calls[0][key], rtol=0, atol=0, msg=key)
    assert hf._PREPROCESSORS.get(ours.video_processor)
