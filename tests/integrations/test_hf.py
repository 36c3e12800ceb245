"""The transformers drop-ins inside a real ``Qwen2VLProcessor`` (tokenizer built locally, no hub):
the same input_ids and features as transformers' own processors; unsupported options fall through."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

transformers = pytest.importorskip("transformers")
from transformers import (  # noqa: E402
    PreTrainedTokenizerFast,
    Qwen2VLImageProcessor,
    Qwen2VLProcessor,
    Qwen2VLVideoProcessor,
)

from gpu_mm.integrations.hf import GpuMMQwen2VLImageProcessor, GpuMMQwen2VLVideoProcessor  # noqa: E402

from media_helpers import all_frames, clip, make_image  # noqa: E402

SPECIAL = ["<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>"]


@pytest.fixture(scope="module")
def tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"<unk>": 0, **{t: i + 1 for i, t in enumerate(SPECIAL)}, "describe": 5, "this": 6, "and": 7}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", additional_special_tokens=SPECIAL)


def _processors(tokenizer):
    ours = Qwen2VLProcessor(image_processor=GpuMMQwen2VLImageProcessor(), tokenizer=tokenizer,
                            video_processor=GpuMMQwen2VLVideoProcessor())
    ref = Qwen2VLProcessor(image_processor=Qwen2VLImageProcessor(), tokenizer=tokenizer,
                           video_processor=Qwen2VLVideoProcessor())
    return ours, ref


def test_same_input_ids_and_features_as_transformers(tokenizer):
    ours, ref = _processors(tokenizer)
    images = [Image.open(io.BytesIO(make_image(300, 200, "JPEG"))), Image.open(io.BytesIO(make_image(64, 64, "PNG")))]
    frames = torch.from_numpy(all_frames(clip("h264", 8, 96, 128)))
    text = ["<|vision_start|><|image_pad|><|vision_end|> describe this and "
            "<|vision_start|><|image_pad|><|vision_end|> and <|vision_start|><|video_pad|><|vision_end|>"]
    kw = dict(text=text, images=images, videos=[frames], return_tensors="pt",
              videos_kwargs={"do_sample_frames": False, "cap_pixels_per_frame": False})
    a, b = ours(**kw), ref(**kw)
    assert set(a.keys()) == set(b.keys())
    assert torch.equal(a["input_ids"], b["input_ids"])
    for key in ("image_grid_thw", "video_grid_thw"):
        assert torch.equal(a[key], b[key])
    # Same decoded pixels, same ops: exact.
    torch.testing.assert_close(a["pixel_values"], b["pixel_values"], rtol=0, atol=0)
    torch.testing.assert_close(a["pixel_values_videos"], b["pixel_values_videos"], rtol=0, atol=0)


def test_gpu_mm_actually_runs(monkeypatch):
    """Guard against a drop-in that silently delegates everything to transformers."""
    calls = []
    orig = Qwen2VLImageProcessor.preprocess
    monkeypatch.setattr(Qwen2VLImageProcessor, "preprocess",
                        lambda self, *a, **k: calls.append(1) or orig(self, *a, **k))
    out = GpuMMQwen2VLImageProcessor()(images=[np.zeros((56, 56, 3), np.uint8)], return_tensors="pt")
    assert out["image_grid_thw"].tolist() == [[1, 4, 4]] and not calls
    GpuMMQwen2VLImageProcessor()(images=[np.zeros((56, 56, 3), np.uint8)], do_normalize=False, return_tensors="pt")
    assert calls  # an option gpu-mm does not implement went to transformers


def test_min_max_pixels_and_sampling_fallthrough():
    img = [np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8)]
    a = GpuMMQwen2VLImageProcessor(min_pixels=3136, max_pixels=200704)(images=img, return_tensors="pt")
    b = Qwen2VLImageProcessor(min_pixels=3136, max_pixels=200704)(images=img, return_tensors="pt")
    assert torch.equal(a["image_grid_thw"], b["image_grid_thw"])
    torch.testing.assert_close(a["pixel_values"], b["pixel_values"], rtol=0, atol=0)
