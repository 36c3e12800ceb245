"""The transformers drop-ins against the stock classes (tokenizer built locally, no hub): the same ids and
features for every input form transformers accepts, gpu-mm doing the pixel work where it can (checked by
watching transformers' own ``_preprocess``), and folders saved with the drop-ins that stock transformers
opens, in a process where gpu-mm cannot even be imported."""

from __future__ import annotations

import io
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

transformers = pytest.importorskip("transformers")
from transformers import (  # noqa: E402
    AutoImageProcessor,
    AutoVideoProcessor,
    PreTrainedTokenizerFast,
    Qwen2VLImageProcessor,
    Qwen2VLProcessor,
    Qwen2VLVideoProcessor,
    Qwen3VLVideoProcessor,
)

from gpu_mm.integrations.hf import (  # noqa: E402
    GpuMMQwen2VLImageProcessor,
    GpuMMQwen2VLVideoProcessor,
    GpuMMQwen3VLVideoProcessor,
)

from media_helpers import all_frames, clip, make_image  # noqa: E402

SPECIAL = ["<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>"]
PROMPT = ("<|vision_start|><|image_pad|><|vision_end|> describe this and "
          "<|vision_start|><|image_pad|><|vision_end|> and <|vision_start|><|video_pad|><|vision_end|>")


@pytest.fixture(scope="module")
def tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"<unk>": 0, **{t: i + 1 for i, t in enumerate(SPECIAL)}, "describe": 5, "this": 6, "and": 7}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", additional_special_tokens=SPECIAL)


class Watch:
    """Counts calls of transformers' own ``_preprocess`` (the pixel work gpu-mm replaces)."""

    def __init__(self, monkeypatch, *classes):
        self.calls = 0
        for cls in classes:
            original = cls._preprocess

            def counting(*a, _original=original, **k):
                self.calls += 1
                return _original(*a, **k)

            monkeypatch.setattr(cls, "_preprocess", counting)


def assert_same(ours, theirs):
    assert set(ours.keys()) == set(theirs.keys())
    for key in theirs:
        if isinstance(theirs[key], torch.Tensor):
            # Same decoded pixels, same ops: exact.
            torch.testing.assert_close(ours[key], theirs[key], rtol=0, atol=0, msg=key)
        else:
            assert ours[key] == theirs[key], key


def _rng_image(h, w, c=3, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, c), dtype=np.uint8) if c else \
        np.random.default_rng(seed).integers(0, 256, (h, w), dtype=np.uint8)


# ---------------------------------------------------------------- inside a stock processor


def test_same_input_ids_and_features_as_transformers(tokenizer, monkeypatch):
    ours = Qwen2VLProcessor(image_processor=GpuMMQwen2VLImageProcessor(), tokenizer=tokenizer,
                            video_processor=GpuMMQwen2VLVideoProcessor())
    ref = Qwen2VLProcessor(image_processor=Qwen2VLImageProcessor(), tokenizer=tokenizer,
                           video_processor=Qwen2VLVideoProcessor())
    images = [Image.open(io.BytesIO(make_image(300, 200, "JPEG"))), Image.open(io.BytesIO(make_image(64, 64, "PNG")))]
    frames = torch.from_numpy(all_frames(clip("h264", 8, 96, 128)))
    kw = dict(text=[PROMPT], images=images, videos=[frames], return_tensors="pt",
              videos_kwargs={"do_sample_frames": False, "cap_pixels_per_frame": False})
    theirs = ref(**kw)
    watch = Watch(monkeypatch, Qwen2VLImageProcessor, Qwen2VLVideoProcessor)
    assert_same(ours(**kw), theirs)
    assert watch.calls == 0  # every pixel computed by gpu-mm


# ---------------------------------------------------------------- images: every input form


IMAGE_INPUTS = {
    "pil_rgb": lambda: Image.fromarray(_rng_image(120, 90)),
    "pil_rgba": lambda: Image.fromarray(_rng_image(64, 100, 4)),
    "pil_gray": lambda: Image.fromarray(_rng_image(70, 70, 0)),
    "numpy_hwc": lambda: _rng_image(56, 140),
    "torch_chw": lambda: torch.from_numpy(_rng_image(100, 60)).permute(2, 0, 1),
    "numpy_batch_4d": lambda: np.stack([_rng_image(80, 80, seed=1), _rng_image(80, 80, seed=2)]),
    "nested_list": lambda: [[_rng_image(60, 60, seed=3)], [_rng_image(90, 60, seed=4)]],
}


@pytest.mark.parametrize("form", list(IMAGE_INPUTS))
def test_every_image_input_form_is_computed_by_gpu_mm_and_equal(monkeypatch, form):
    images = IMAGE_INPUTS[form]()
    theirs = Qwen2VLImageProcessor()(images=images, return_tensors="pt")
    watch = Watch(monkeypatch, Qwen2VLImageProcessor)
    assert_same(GpuMMQwen2VLImageProcessor()(images=images, return_tensors="pt"), theirs)
    assert watch.calls == 0


@pytest.mark.parametrize(("images", "kwargs"), [
    (lambda: [_rng_image(60, 80).astype(np.float32) / 255], {"do_rescale": False}),  # float pixels in [0, 1]
    (lambda: [_rng_image(60, 80).astype(np.float32)], {}),  # float32 with the default do_rescale
    (lambda: [_rng_image(60, 80)], {"do_normalize": False}),  # rescaled but not normalized
    (lambda: [_rng_image(60, 80)], {"do_rescale": False}),  # normalized but not rescaled
    (lambda: [_rng_image(60, 80)], {"resample": 2}),
    (lambda: [_rng_image(56, 84)], {"do_resize": False}),
    (lambda: [_rng_image(56, 56)], {"rescale_factor": 1 / 127.5}),
])
def test_what_gpu_mm_does_not_compute_goes_to_transformers_unchanged(monkeypatch, images, kwargs):
    """Never refused: inputs and options outside what gpu-mm computes get transformers' own result."""
    data = images()
    try:
        theirs = Qwen2VLImageProcessor()(images=data, return_tensors="pt", **kwargs)
    except Exception as exc:  # noqa: BLE001 - transformers refuses it: so must the drop-in, the same way
        with pytest.raises(type(exc)):
            GpuMMQwen2VLImageProcessor()(images=data, return_tensors="pt", **kwargs)
        return
    watch = Watch(monkeypatch, Qwen2VLImageProcessor)
    assert_same(GpuMMQwen2VLImageProcessor()(images=data, return_tensors="pt", **kwargs), theirs)
    assert watch.calls == 1  # transformers' own pixel work ran, once


def test_min_max_pixels_follow_transformers(monkeypatch):
    img = [_rng_image(480, 640)]
    theirs = Qwen2VLImageProcessor(min_pixels=3136, max_pixels=200704)(images=img, return_tensors="pt")
    watch = Watch(monkeypatch, Qwen2VLImageProcessor)
    ours = GpuMMQwen2VLImageProcessor(min_pixels=3136, max_pixels=200704)(images=img, return_tensors="pt")
    assert_same(ours, theirs)
    size = {"shortest_edge": 3136, "longest_edge": 100352}
    ours = GpuMMQwen2VLImageProcessor()(images=img, return_tensors="pt", size=size)
    assert_same(ours, Qwen2VLImageProcessor()(images=img, return_tensors="pt", size=size))
    assert watch.calls == 1  # only the stock call inside this block


UINT8 = {"do_rescale": False, "do_normalize": False}  # what vLLM's mm_device_do_normalize asks for


@pytest.mark.parametrize("form", ["pil_rgb", "numpy_hwc", "torch_chw", "nested_list"])
def test_uint8_pixels_without_rescale_or_normalize_are_computed_by_gpu_mm_and_equal(monkeypatch, form):
    """vLLM asks for raw resized pixels (it normalizes on the GPU): uint8 patch rows, exactly transformers'."""
    images = IMAGE_INPUTS[form]()
    theirs = Qwen2VLImageProcessor()(images=images, return_tensors="pt", **UINT8)
    assert theirs["pixel_values"].dtype == torch.uint8
    watch = Watch(monkeypatch, Qwen2VLImageProcessor)
    assert_same(GpuMMQwen2VLImageProcessor()(images=images, return_tensors="pt", **UINT8), theirs)
    assert watch.calls == 0


# ---------------------------------------------------------------- videos: frame lists, nesting, sampling, the cap


def _frames(n=9, h=64, w=80, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, 3), dtype=np.uint8)


VIDEO_INPUTS = {
    "pil_frames": lambda: [[Image.fromarray(f) for f in _frames()]],
    "numpy": lambda: [_frames()],
    "torch_tchw": lambda: [torch.from_numpy(_frames()).permute(0, 3, 1, 2)],
    "nested_arrays": lambda: [list(_frames(seed=1)), list(_frames(7, 48, 48, seed=2))],
    "one_video_unbatched": lambda: _frames(5),
}


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen3_vl"])
@pytest.mark.parametrize("form", list(VIDEO_INPUTS))
@pytest.mark.parametrize("cap", [False, True])
@pytest.mark.parametrize("pixels", ["normalized", "uint8"])
def test_every_video_input_form_is_computed_by_gpu_mm_and_equal(monkeypatch, family, form, cap, pixels):
    stock, drop_in = ((Qwen2VLVideoProcessor, GpuMMQwen2VLVideoProcessor) if family == "qwen2_vl"
                      else (Qwen3VLVideoProcessor, GpuMMQwen3VLVideoProcessor))
    videos = VIDEO_INPUTS[form]()
    kw = dict(return_tensors="pt", do_sample_frames=False, cap_pixels_per_frame=cap,
              **(UINT8 if pixels == "uint8" else {}))
    theirs = stock()(videos=videos, **kw)
    watch = Watch(monkeypatch, stock)
    assert_same(drop_in()(videos=videos, **kw), theirs)
    assert watch.calls == 0


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen3_vl"])
def test_frames_sampled_from_metadata_by_transformers_then_computed_by_gpu_mm(monkeypatch, family):
    stock, drop_in = ((Qwen2VLVideoProcessor, GpuMMQwen2VLVideoProcessor) if family == "qwen2_vl"
                      else (Qwen3VLVideoProcessor, GpuMMQwen3VLVideoProcessor))
    videos = [_frames(40, seed=5)]
    kw = dict(return_tensors="pt", do_sample_frames=True, fps=2, return_metadata=True,
              video_metadata=[{"total_num_frames": 40, "fps": 10, "duration": 4.0}], cap_pixels_per_frame=False)
    theirs = stock()(videos=videos, **kw)
    watch = Watch(monkeypatch, stock)
    ours = drop_in()(videos=videos, **kw)
    assert watch.calls == 0
    assert list(ours["video_metadata"][0].frames_indices) == list(theirs["video_metadata"][0].frames_indices)
    assert_same({k: v for k, v in ours.items() if k != "video_metadata"},
                {k: v for k, v in theirs.items() if k != "video_metadata"})


# ---------------------------------------------------------------- saved folders stay stock


def test_saved_drop_ins_load_with_stock_auto_classes_and_back_as_drop_ins(tmp_path):
    for drop_in, stock, auto, kw in (
            (GpuMMQwen2VLImageProcessor, Qwen2VLImageProcessor, AutoImageProcessor, {"backend": "torchvision"}),
            (GpuMMQwen2VLVideoProcessor, Qwen2VLVideoProcessor, AutoVideoProcessor, {}),
            (GpuMMQwen3VLVideoProcessor, Qwen3VLVideoProcessor, AutoVideoProcessor, {})):
        folder = tmp_path / drop_in.__name__
        processor = drop_in()
        processor(**({"images": [_rng_image(56, 56)]} if drop_in is GpuMMQwen2VLImageProcessor
                     else {"videos": [_frames(4)], "do_sample_frames": False}))  # used first: nothing leaks in
        processor.save_pretrained(folder)
        loaded = auto.from_pretrained(folder, **kw)
        assert type(loaded) is stock and loaded.to_dict() == processor.to_dict()
        assert type(drop_in.from_pretrained(folder)) is drop_in


ROUND_TRIP = r'''
import pickle, sys
sys.modules["gpu_mm"] = None  # gpu-mm not importable here
from transformers import AutoProcessor
folder, inputs_path = sys.argv[1:]
processor = AutoProcessor.from_pretrained(folder)
with open(inputs_path, "rb") as f:
    inputs = pickle.load(f)
out = processor(**inputs)
print(type(processor.image_processor).__name__, type(processor.video_processor).__name__, file=sys.stderr)
sys.stdout.buffer.write(pickle.dumps({k: v for k, v in out.items()}))
'''


@pytest.mark.slow
def test_round_trip_to_a_process_without_gpu_mm(tmp_path, tokenizer):
    """save_pretrained with the drop-ins -> stock AutoProcessor where gpu-mm cannot be imported -> the same
    ids and features."""
    ours = Qwen2VLProcessor(image_processor=GpuMMQwen2VLImageProcessor(max_pixels=200704), tokenizer=tokenizer,
                            video_processor=GpuMMQwen2VLVideoProcessor())
    folder = tmp_path / "model"
    ours.save_pretrained(folder)
    inputs = dict(text=[PROMPT], images=[_rng_image(300, 200), _rng_image(64, 64)], videos=[_frames(8)],
                  return_tensors="pt", videos_kwargs={"do_sample_frames": False, "cap_pixels_per_frame": False})
    with open(tmp_path / "inputs.pkl", "wb") as f:
        pickle.dump(inputs, f)
    proc = subprocess.run([sys.executable, "-c", ROUND_TRIP, str(folder), str(tmp_path / "inputs.pkl")],
                          capture_output=True, timeout=240)
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    assert proc.stderr.decode().split()[-2:] == ["Qwen2VLImageProcessor", "Qwen2VLVideoProcessor"]
    assert_same(ours(**inputs), pickle.loads(proc.stdout))
