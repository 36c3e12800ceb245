"""InternVL's original checkpoints (``internvl_chat``) against the engine code that serves them: vLLM's
``InternVLChatImageProcessor`` / ``InternVLChatVideoProcessor`` (the model repository's own preprocessing: Pillow
bicubic, ImageNet mean/std), called on the same decoded pixels. The tile grid is vLLM's for every shape (ties
included), tiles and thumbnail agree, and so do the prompt's token counts.

Tolerance: vLLM computes ``(x / 255 - mean) / std`` (torchvision's ``ToTensor`` then ``Normalize``), gpu-mm
``(x - 255 mean) / (255 std)`` (one rounding fewer): the same value rounded differently, at most a few float32
ulps of values up to 2.7 in magnitude, so 1e-6 absolute. The resized pixels themselves are Pillow's in both.
"""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

vllm_internvl = pytest.importorskip("vllm.transformers_utils.processors.internvl")

from gpu_mm import InternVLChatConfig, InternVLChatPreprocessor, Preprocessor  # noqa: E402
from gpu_mm.models.internvl import chat_tile_grid  # noqa: E402

from media_helpers import all_frames, clip, make_image  # noqa: E402

TOL = 1e-6  # the normalization's rounding order, see the module docstring
TILE = 56  # the published 448 works the same; small tiles keep the suite fast


def vllm_image_processor(cfg: InternVLChatConfig):
    return vllm_internvl.InternVLChatImageProcessor(
        image_size=cfg.tile_size[0], min_dynamic_patch=cfg.min_patches, max_dynamic_patch=cfg.max_patches,
        dynamic_image_size=True, use_thumbnail=cfg.use_thumbnail)


@pytest.mark.parametrize("max_tiles", [1, 6, 12])
def test_tile_grid_equals_vllms_for_every_shape(max_tiles):
    """Every image shape of a grid of sizes, exact ties (1.25 lies as far from 1/2... as from 2/1) included."""
    ratios = vllm_internvl.get_internvl_target_ratios(1, max_tiles)
    shapes = [(h, w) for h in (1, 7, 28, 100, 224, 447, 448, 449, 896, 1000, 3000)
              for w in (1, 5, 56, 112, 125, 224, 448, 560, 1344, 4000)]
    for h, w in shapes:
        blocks, tw, th = vllm_internvl.calculate_internvl_targets(
            orig_width=w, orig_height=h, target_ratios=ratios, image_size=448, use_thumbnail=False)
        cols, rows = chat_tile_grid(h, w, 448, 1, max_tiles)
        assert (cols * 448, rows * 448, cols * rows) == (tw, th, blocks), (h, w)


@pytest.mark.parametrize("h,w", [(8, 9), (40, 300), (300, 40), (112, 140), (100, 125), (257, 381), (56, 56)])
@pytest.mark.parametrize("thumbnail", [True, False])
def test_images_equal_vllms_internvl_chat_processing(h, w, thumbnail):
    cfg = InternVLChatConfig(tile_size=(TILE, TILE), max_patches=6, use_thumbnail=thumbnail)
    datas = [make_image(h, w, "JPEG", seed=3), make_image(w, h, "PNG", seed=4)]
    theirs = vllm_image_processor(cfg)(images=[Image.open(io.BytesIO(d)).convert("RGB") for d in datas],
                                       return_tensors="pt")
    with InternVLChatPreprocessor("cpu", config=cfg) as pre:
        ours = pre(images=datas)
    assert ours.num_patches.tolist() == theirs["image_num_patches"].tolist()
    assert ours.pixel_values.shape == theirs["pixel_values_flat"].shape
    assert float((ours.pixel_values - theirs["pixel_values_flat"]).abs().max()) <= TOL
    # vLLM's prompt gives an image num_patches * image_seq_length context tokens (get_image_repl)
    assert [it.num_tokens for it in ours.items] == [n * cfg.image_seq_length for n in theirs["image_num_patches"]]


def test_video_frames_equal_vllms():
    cfg = InternVLChatConfig(tile_size=(TILE, TILE))
    data = clip("h264", 9, 60, 90)
    frames = all_frames(data)  # (T, H, W, 3) uint8, as vLLM's loader hands them over
    theirs = vllm_internvl.InternVLChatVideoProcessor(image_size=TILE)(videos=[frames], return_tensors="pt")
    with InternVLChatPreprocessor("cpu", config=cfg) as pre:
        ours = pre(videos=[data])
    assert ours.video_num_patches.tolist() == theirs["video_num_patches"].tolist() == [9]
    assert float((ours.pixel_values_videos - theirs["pixel_values_flat_video"]).abs().max()) <= TOL


def test_pillow_resize_is_pillows_own_bytes():
    """The resize rule itself, uint8 for uint8: Pillow's ``Image.resize`` bicubic, from a decoder's channels-last
    buffer and from a contiguous one."""
    from gpu_mm import ops

    rgb = np.random.default_rng(0).integers(0, 256, (37, 53, 3), dtype=np.uint8)
    want = np.array(Image.fromarray(rgb).resize((20, 31), Image.Resampling.BICUBIC))
    channels_last = torch.from_numpy(rgb).permute(2, 0, 1)[None]
    for frames in (channels_last, channels_last.contiguous()):
        got = ops.resize(frames, (31, 20), "pil-bicubic")
        assert got.shape == (1, 3, 31, 20) and torch.equal(got[0].permute(1, 2, 0), torch.from_numpy(want))


def test_from_pretrained_reads_config_json_alone(tmp_path):
    """An internvl_chat folder holds config.json (and maybe a CLIP preprocessor config the engines ignore): the
    tile count, thumbnail and token count come from config.json."""
    (tmp_path / "config.json").write_text(json.dumps({
        "model_type": "internvl_chat", "min_dynamic_patch": 1, "max_dynamic_patch": 4, "dynamic_image_size": True,
        "use_thumbnail": False, "downsample_ratio": 0.5, "vision_config": {"image_size": 448, "patch_size": 14}}))
    pre = Preprocessor.from_pretrained(tmp_path, device="cpu")
    try:
        assert isinstance(pre, InternVLChatPreprocessor)
        assert (pre.config.max_patches, pre.config.use_thumbnail, pre.config.image_seq_length) == (4, False, 256)
        assert pre.config.tile_size == (448, 448)
    finally:
        pre.close()
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "internvl_chat", "dynamic_image_size": False}))
    with Preprocessor.from_pretrained(tmp_path, device="cpu") as pre:
        assert (pre.config.min_patches, pre.config.max_patches) == (1, 1)
        assert pre(images=[make_image(100, 300, "PNG")]).num_patches.tolist() == [1]


def test_vllms_processor_with_the_drop_ins_gives_its_own_ids_and_features():
    """vLLM's ``InternVLChatProcessor`` (prompt expansion, tile counts, output names: vLLM's) once as shipped and
    once with the plug-in's drop-ins adopted (as its processing info hands them over): the same ids and features,
    and gpu-mm computed them."""
    pytest.importorskip("vllm.multimodal")
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from gpu_mm.integrations import vllm as plugin
    from gpu_mm.integrations import vllm_internvl as drop_ins

    special = ["<img>", "</img>", "<IMG_CONTEXT>", "<|video_pad|>", "<image>", "<video>"]
    words = ["<unk>", *special, "describe", *(f"Frame{i}:" for i in range(1, 10))]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", additional_special_tokens=special)

    def build():
        return vllm_internvl.InternVLChatProcessor(
            image_processor=vllm_internvl.InternVLChatImageProcessor(
                image_size=TILE, min_dynamic_patch=1, max_dynamic_patch=6, dynamic_image_size=True,
                use_thumbnail=True),
            tokenizer=tokenizer, video_processor=vllm_internvl.InternVLChatVideoProcessor(image_size=TILE),
            image_seq_length=4, ctx_video_token="<|video_pad|>")

    datas = [make_image(100, 150, "JPEG", seed=5), make_image(40, 300, "PNG", seed=6)]
    images = [Image.open(io.BytesIO(d)).convert("RGB") for d in datas]
    frames = all_frames(clip("h264", 4, 60, 90))
    call = {"text": "<image> describe <image> <video>", "images": images, "videos": [frames], "return_tensors": "pt"}
    theirs = build()(**call)
    ours_proc = plugin.adopt_drop_ins(build())
    assert type(ours_proc.image_processor).__name__ == "GpuMMInternVLChatImageProcessor"
    assert type(ours_proc.video_processor).__name__ == "GpuMMInternVLChatVideoProcessor"
    ours = ours_proc(**call)
    assert ours["input_ids"].tolist() == theirs["input_ids"].tolist()
    for key in ("image_num_patches", "video_num_patches"):
        assert ours[key].tolist() == theirs[key].tolist()
    for key in ("pixel_values_flat", "pixel_values_flat_video"):
        assert float((ours[key] - theirs[key]).abs().max()) <= TOL
    assert drop_ins._PREPROCESSORS.get(ours_proc.image_processor)  # gpu-mm ran it
    assert drop_ins._PREPROCESSORS.get(ours_proc.video_processor)
