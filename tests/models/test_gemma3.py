"""Gemma 3 against transformers' own ``Gemma3ImageProcessor`` / ``Gemma3Processor`` (built in code, small
tokenizer, no hub): the same outputs (the whole image, then its pan-and-scan crops), bit-identical pixels from the
same decoded image, the same ``num_crops`` and the prompt's image-token count. Also the generic paths a
whole-image family takes: a pool block, slot processes, the cache."""

from __future__ import annotations

import io
import json

import pytest
import torch
from PIL import Image

transformers = pytest.importorskip("transformers")
from transformers import Gemma3ImageProcessor, Gemma3Processor, PreTrainedTokenizerFast  # noqa: E402

from gpu_mm import InvalidRequest, Preprocessor  # noqa: E402
from gpu_mm.handoff import FeaturePool  # noqa: E402
from gpu_mm.models.gemma3 import Gemma3Config, pan_and_scan_crops  # noqa: E402
from gpu_mm.pipeline.families import preprocessor_class  # noqa: E402

from media_helpers import clip, make_image  # noqa: E402

# transformers' Gemma3Processor builds token type ids with np.array(tensor), which numpy 2 warns about.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")

Gemma3Preprocessor = preprocessor_class("gemma3")
SMALL = (224, 224)  # the published 896 works the same; a smaller size keeps the suite fast


@pytest.fixture(scope="module")
def tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers

    special = ["<start_of_image>", "<end_of_image>", "<image_soft_token>"]
    words = ["<unk>", *special, "describe", "Here", "is", "the", "original", "image", "and", "here", "are", "some",
             "crops", "to", "help", "you", "see", "better"]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", additional_special_tokens=special,
        extra_special_tokens={"boi_token": "<start_of_image>", "eoi_token": "<end_of_image>",
                              "image_token": "<image_soft_token>"})


def reference(tokenizer, cfg: Gemma3Config) -> Gemma3Processor:
    image = Gemma3ImageProcessor(
        size={"height": cfg.size[0], "width": cfg.size[1]}, image_mean=list(cfg.image_mean),
        image_std=list(cfg.image_std), do_pan_and_scan=cfg.do_pan_and_scan,
        pan_and_scan_min_crop_size=cfg.pan_and_scan_min_crop_size,
        pan_and_scan_max_num_crops=cfg.pan_and_scan_max_num_crops,
        pan_and_scan_min_ratio_to_activate=cfg.pan_and_scan_min_ratio_to_activate)
    return Gemma3Processor(image_processor=image, tokenizer=tokenizer, image_seq_length=cfg.mm_tokens_per_image)


def theirs_for(proc: Gemma3Processor, datas: list[bytes], **kw):
    images = [Image.open(io.BytesIO(d)).convert("RGB") for d in datas]
    text = " ".join(["<start_of_image>"] * len(images)) + " describe"
    return proc(text=[text], images=[images], return_tensors="pt", images_kwargs=kw)


# (height, width): square (no crops), landscape 3:1 (3 crops), portrait, a ratio just under the 1.2 threshold,
# one whose crops would be under the minimum crop size, over max crops (capped at 4), odd sizes (ceil crops, the
# last cut short by the edge).
SIZES = [(300, 300), (300, 900), (1000, 401), (500, 599), (200, 500), (100, 1700), (333, 1001)]


@pytest.mark.parametrize("pan_and_scan", [False, True])
@pytest.mark.parametrize(("h", "w"), SIZES)
def test_images_equal_transformers(tokenizer, h, w, pan_and_scan):
    cfg = Gemma3Config(size=SMALL, do_pan_and_scan=pan_and_scan)
    data = make_image(h, w, "PNG")
    ours = Gemma3Preprocessor("cpu", config=cfg, cache_bytes=0)(images=[data])
    proc = reference(tokenizer, cfg)
    theirs = theirs_for(proc, [data], do_pan_and_scan=pan_and_scan)  # the processor's default is off
    ref = proc.image_processor(images=[Image.open(io.BytesIO(data))], return_tensors="pt")
    assert ours.num_crops.tolist() == ref["num_crops"].tolist()
    assert ours.pixel_values.shape == (1 + int(ours.num_crops[0]), 3, *SMALL)
    torch.testing.assert_close(ours.pixel_values, theirs["pixel_values"], rtol=0, atol=0)
    text = tokenizer.decode(theirs["input_ids"][0])
    assert text.count("<image_soft_token>") == ours.items[0].num_tokens
    assert ours.to_dict().keys() == {"pixel_values", "num_crops"}


def test_pan_and_scan_per_request_and_several_images(tokenizer):
    """``do_pan_and_scan=True`` on a call (transformers' own keyword) turns it on for that call only; several
    images keep their order, each whole image before its crops."""
    cfg = Gemma3Config(size=SMALL)
    datas = [make_image(300, 900, "JPEG"), make_image(200, 200, "PNG"), make_image(800, 300, "PNG")]
    pre = Gemma3Preprocessor("cpu", config=cfg, cache_bytes=0)
    ours = pre(images=datas, do_pan_and_scan=True)
    theirs = theirs_for(reference(tokenizer, cfg), datas, do_pan_and_scan=True)
    assert ours.num_crops.tolist() == [3, 0, 3]
    torch.testing.assert_close(ours.pixel_values, theirs["pixel_values"], rtol=0, atol=0)
    assert sum(i.num_tokens for i in ours.items) == tokenizer.decode(theirs["input_ids"][0]).count(
        "<image_soft_token>")
    assert pre(images=datas).num_crops.tolist() == [0, 0, 0]


@pytest.mark.parametrize(("h", "w"), SIZES)
def test_crop_boxes_equal_transformers_slices(h, w):
    image = torch.zeros((3, h, w))
    theirs = Gemma3ImageProcessor().pan_and_scan_batched(image, 256, 4, 1.2)
    ours = pan_and_scan_crops(h, w, 256, 4, 1.2)
    assert [tuple(c.shape[-2:]) for c in theirs] == [(bh, bw) for _, _, bh, bw in ours]


def test_the_family_takes_no_video_and_refuses_options_it_does_not_read():
    pre = Gemma3Preprocessor("cpu", config=Gemma3Config(size=SMALL))
    with pytest.raises(InvalidRequest, match="video\\[0\\].*no videos"):
        pre(videos=[clip("h264", 4, 64, 64)])
    with pytest.raises(InvalidRequest, match="max_pixels"):
        pre(images=[make_image(64, 64, "PNG")], max_pixels=1000)
    with pytest.raises(InvalidRequest, match="do_pan_and_scan"):
        pre(images=[make_image(64, 64, "PNG")], do_pan_and_scan="yes")


def test_pool_block_processes_and_cache_give_the_same_features():
    """The generic paths with whole-image outputs: rows written into a pool block (with ``num_crops`` as one
    number per image), slot processes, a cache hit."""
    cfg = Gemma3Config(size=SMALL, do_pan_and_scan=True)
    datas = [make_image(300, 900, "PNG"), make_image(120, 100, "JPEG")]
    plain = Gemma3Preprocessor("cpu", config=cfg, cache_bytes=0)(images=datas)
    with FeaturePool(max_blocks=2) as pool:
        pooled = Gemma3Preprocessor("cpu", config=cfg, output_pool=pool)(images=datas)
        assert torch.equal(pooled.pixel_values, plain.pixel_values)
        assert pooled.num_crops.tolist() == plain.num_crops.tolist() == [3, 0]
        pool.release(pooled.handle)
    with Gemma3Preprocessor("cpu", config=cfg, workers="processes", num_slots=1, cache_bytes=0) as pre:
        assert torch.equal(pre(images=datas).pixel_values, plain.pixel_values)
    cached = Gemma3Preprocessor("cpu", config=cfg)
    cached(images=datas)
    again = cached(images=datas)
    assert [i.cache for i in again.items] == ["hit", "hit"]
    assert torch.equal(again.pixel_values, plain.pixel_values) and again.num_crops.tolist() == [3, 0]


def test_from_pretrained_follows_the_folders_processor(tmp_path, tokenizer):
    """Size and token count from the folder; pan-and-scan as ``Gemma3Processor`` loaded from the same folder
    computes it: off, although the folder's image config says on (the processor passes its own default on
    every call), and on for a call that asks."""
    cfg = Gemma3Config(size=SMALL, do_pan_and_scan=True, pan_and_scan_max_num_crops=3, mm_tokens_per_image=64)
    reference(tokenizer, cfg).save_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gemma3"}))
    pre = Preprocessor.from_pretrained(tmp_path, device="cpu", cache_bytes=0)
    assert type(pre) is Gemma3Preprocessor and pre.config == Gemma3Config(size=SMALL, mm_tokens_per_image=64)
    assert type(Preprocessor.for_model("gemma3")) is Gemma3Preprocessor
    stock = Gemma3Processor.from_pretrained(tmp_path)
    data = make_image(300, 900, "PNG")
    for kw in ({}, {"do_pan_and_scan": True}):
        ours = pre(images=[data], **kw)
        theirs = theirs_for(stock, [data], **kw)
        torch.testing.assert_close(ours.pixel_values, theirs["pixel_values"], rtol=0, atol=0)
        assert tokenizer.decode(theirs["input_ids"][0]).count("<image_soft_token>") == ours.items[0].num_tokens


def test_drop_in_equals_the_stock_processor(tokenizer):
    """``GpuMMGemma3ImageProcessor`` inside ``Gemma3Processor``: the same prompt and features as the stock class,
    pan-and-scan on and off; computed by gpu-mm (not transformers' fallback); saved, it names the stock class."""
    from gpu_mm.integrations import hf

    cfg = Gemma3Config(size=SMALL)
    stock = reference(tokenizer, cfg)
    ours = Gemma3Processor(image_processor=hf.GpuMMGemma3ImageProcessor(**stock.image_processor.to_dict()),
                           tokenizer=tokenizer, image_seq_length=cfg.mm_tokens_per_image)
    datas = [make_image(300, 900, "PNG"), make_image(120, 100, "JPEG")]
    for kw in ({}, {"do_pan_and_scan": True}):
        a, b = theirs_for(stock, datas, **kw), theirs_for(ours, datas, **kw)
        assert a.keys() == b.keys()
        for key in a:
            torch.testing.assert_close(b[key], a[key], rtol=0, atol=0, msg=key)
    assert hf._PREPROCESSORS.get(ours.image_processor)
    assert ours.image_processor.to_dict()["image_processor_type"] == "Gemma3ImageProcessor"
