"""transformers' own image-processor, video-processor, processor and sequence-feature-extractor test mixins (from
the installed version's source distribution, see ``upstream_transformers.py``) run against the stock Qwen-VL, GLM,
InternVL (GOT-OCR2), Gemma 3 and Whisper classes and against gpu-mm's drop-ins.

Each mixin test runs twice, with the same tester: once with transformers' classes, once with the drop-ins.
Every test that passes with the stock classes must pass with the drop-ins. A test that fails with the stock
classes too (the generic mixins assume a ``[batch, C, H, W]`` output, where Qwen-VL concatenates patch rows)
is skipped, its stock failure named; the input forms those tests exercise are compared directly in
``test_hf.py``.
"""

from __future__ import annotations

import unittest
import warnings

import pytest

pytest.importorskip("transformers")
from transformers import (  # noqa: E402
    Gemma3ImageProcessor,
    Gemma3ImageProcessorPil,
    Glm4vImageProcessor,
    Glm4vImageProcessorPil,
    Glm4vVideoProcessor,
    Glm46VVideoProcessor,
    GotOcr2ImageProcessor,
    GotOcr2ImageProcessorPil,
    InternVLVideoProcessor,
    PreTrainedTokenizerFast,
    Qwen2VLImageProcessor,
    Qwen2VLImageProcessorPil,
    Qwen2VLProcessor,
    Qwen2VLVideoProcessor,
    Qwen3VLProcessor,
    Qwen3VLVideoProcessor,
    WhisperFeatureExtractor,
)
from upstream_transformers import import_mixins  # noqa: E402

from gpu_mm.integrations.hf import (  # noqa: E402
    GpuMMGemma3ImageProcessor,
    GpuMMGlm4vImageProcessor,
    GpuMMGlm4vVideoProcessor,
    GpuMMGlm46VVideoProcessor,
    GpuMMGotOcr2ImageProcessor,
    GpuMMInternVLVideoProcessor,
    GpuMMQwen2VLImageProcessor,
    GpuMMQwen2VLVideoProcessor,
    GpuMMQwen3VLVideoProcessor,
    GpuMMWhisperFeatureExtractor,
)
from gpu_mm.ops import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD  # noqa: E402

_mixins = import_mixins()
if isinstance(_mixins, str):
    pytest.skip(_mixins, allow_module_level=True)
image_common, video_common, processing_common, sequence_common = _mixins

QWEN2_IMAGE = {"do_resize": True, "size": {"shortest_edge": 56 * 56, "longest_edge": 28 * 28 * 1280},
               "do_normalize": True, "image_mean": list(OPENAI_CLIP_MEAN), "image_std": list(OPENAI_CLIP_STD),
               "do_convert_rgb": True, "patch_size": 14, "temporal_patch_size": 2, "merge_size": 2}
GLM_IMAGE = {**QWEN2_IMAGE, "size": {"shortest_edge": 112 * 112, "longest_edge": 28 * 28 * 2 * 1280}}
# InternVL's tiles (crop_to_patches as InternVLProcessor asks) and Gemma 3's pan-and-scan crops, small sizes.
GOT_OCR2_IMAGE = {"do_resize": True, "size": {"height": 56, "width": 56}, "do_normalize": True,
                  "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225], "do_convert_rgb": True,
                  "crop_to_patches": True, "min_patches": 1, "max_patches": 6}
GEMMA3_IMAGE = {"do_resize": True, "size": {"height": 32, "width": 32}, "do_normalize": True,
                "image_mean": [0.5] * 3, "image_std": [0.5] * 3, "do_convert_rgb": True, "do_pan_and_scan": True,
                "pan_and_scan_min_crop_size": 16, "pan_and_scan_max_num_crops": 4,
                "pan_and_scan_min_ratio_to_activate": 1.2}


# ---------------------------------------------------------------- images


def _image_case(classes: dict[str, type], settings: dict = QWEN2_IMAGE) -> type:
    class Tester(image_common.ImageProcessingTester):
        def __init__(self, parent):
            super().__init__(parent, batch_size=7, num_channels=3, min_resolution=56, max_resolution=400,
                             **settings)

        def _get_image_processing_classes(self):
            return dict(classes)

    class Case(image_common.ImageProcessingTestMixin, unittest.TestCase):
        __test__ = False  # run by the comparison below, not collected on its own
        image_processor_tester_class = Tester

    return Case


STOCK_IMAGE = _image_case({"torchvision": Qwen2VLImageProcessor, "pil": Qwen2VLImageProcessorPil})
GPU_MM_IMAGE = _image_case({"torchvision": GpuMMQwen2VLImageProcessor, "pil": Qwen2VLImageProcessorPil})
IMAGE_CASES = {
    "qwen2_vl": (STOCK_IMAGE, GPU_MM_IMAGE),
    "glm4v": (_image_case({"torchvision": Glm4vImageProcessor, "pil": Glm4vImageProcessorPil}, GLM_IMAGE),
              _image_case({"torchvision": GpuMMGlm4vImageProcessor, "pil": Glm4vImageProcessorPil}, GLM_IMAGE)),
    "internvl": (
        _image_case({"torchvision": GotOcr2ImageProcessor, "pil": GotOcr2ImageProcessorPil}, GOT_OCR2_IMAGE),
        _image_case({"torchvision": GpuMMGotOcr2ImageProcessor, "pil": GotOcr2ImageProcessorPil}, GOT_OCR2_IMAGE)),
    "gemma3": (
        _image_case({"torchvision": Gemma3ImageProcessor, "pil": Gemma3ImageProcessorPil}, GEMMA3_IMAGE),
        _image_case({"torchvision": GpuMMGemma3ImageProcessor, "pil": Gemma3ImageProcessorPil}, GEMMA3_IMAGE)),
}


# ---------------------------------------------------------------- videos


class _VideoTester:
    """The inputs and expected shapes of a Qwen-VL video processor for transformers' video mixin."""

    def __init__(self, parent, processor_dict, patch, batch_size=5, num_frames=8, num_channels=3,
                 min_resolution=32, max_resolution=80):
        self.parent, self.processor_dict, self.patch = parent, processor_dict, patch
        self.batch_size, self.num_frames, self.num_channels = batch_size, num_frames, num_channels
        self.min_resolution, self.max_resolution = min_resolution, max_resolution

    def prepare_video_processor_dict(self):
        return dict(self.processor_dict)

    def prepare_video_inputs(self, equal_resolution=False, return_tensors="pil"):
        return video_common.prepare_video_inputs(
            batch_size=self.batch_size, num_frames=self.num_frames, num_channels=self.num_channels,
            min_resolution=self.min_resolution, max_resolution=self.max_resolution,
            equal_resolution=equal_resolution, return_tensors=return_tensors)

    def expected_output_video_shape(self, videos):
        # Not computed here: the mixin compares it with the output's shape, which the case checks by grid.
        return None


def _video_case(cls: type, processor_dict: dict, patch: int, whole_frames: bool = False) -> type:
    class Case(video_common.VideoProcessingTestMixin, unittest.TestCase):
        __test__ = False  # run by the comparison below, not collected on its own
        fast_video_processing_class = cls

        def setUp(self):
            super().setUp()
            self.video_processor_tester = _VideoTester(self, processor_dict, patch)

        @property
        def video_processor_dict(self):
            return self.video_processor_tester.prepare_video_processor_dict()

        def assert_expected_videos_shape(self, encoded, expected, num_videos):
            if whole_frames:  # InternVL: every frame a whole image, videos stacked
                size = processor_dict["size"]
                self.assertEqual(tuple(encoded.shape[-3:]), (3, size["height"], size["width"]))
                return
            # Qwen-VL concatenates every video's patch rows: rows of 3 x temporal patch x patch**2 values.
            self.assertEqual(encoded.ndim, 2)
            self.assertEqual(encoded.shape[1], 3 * 2 * patch**2)
            self.assertEqual(encoded.shape[0] % (processor_dict.get("merge_size", 2) ** 2), 0)

    return Case


QWEN2_VIDEO = {"do_resize": True, "size": {"shortest_edge": 32 * 28 * 28, "longest_edge": 64 * 28 * 28},
               "do_normalize": True, "image_mean": list(OPENAI_CLIP_MEAN), "image_std": list(OPENAI_CLIP_STD),
               "do_convert_rgb": True, "patch_size": 14, "temporal_patch_size": 2, "merge_size": 2,
               "cap_pixels_per_frame": False}
QWEN3_VIDEO = {"do_resize": True, "size": {"shortest_edge": 4096, "longest_edge": 16 * 64 * 64},
               "do_normalize": True, "image_mean": [0.5] * 3, "image_std": [0.5] * 3, "do_convert_rgb": True,
               "patch_size": 16, "temporal_patch_size": 2, "merge_size": 2, "cap_pixels_per_frame": False}
# GLM samples frames itself only with metadata, which the mixin's inputs lack: frames given are the sampled ones.
GLM_VIDEO = {"do_resize": True, "size": {"shortest_edge": 112 * 112, "longest_edge": 16 * 56 * 56},
             "do_normalize": True, "image_mean": list(OPENAI_CLIP_MEAN), "image_std": list(OPENAI_CLIP_STD),
             "do_convert_rgb": True, "patch_size": 14, "temporal_patch_size": 2, "merge_size": 2,
             "do_sample_frames": False}
INTERNVL_VIDEO = {"do_resize": True, "size": {"height": 28, "width": 28}, "do_normalize": True,
                  "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225], "do_convert_rgb": True}
VIDEO_CASES = {
    "internvl": (_video_case(InternVLVideoProcessor, INTERNVL_VIDEO, 28, whole_frames=True),
                 _video_case(GpuMMInternVLVideoProcessor, INTERNVL_VIDEO, 28, whole_frames=True)),
    "glm4v": (_video_case(Glm4vVideoProcessor, GLM_VIDEO, 14), _video_case(GpuMMGlm4vVideoProcessor, GLM_VIDEO, 14)),
    "glm46v": (_video_case(Glm46VVideoProcessor, GLM_VIDEO, 14),
               _video_case(GpuMMGlm46VVideoProcessor, GLM_VIDEO, 14)),
    "qwen2_vl": (_video_case(Qwen2VLVideoProcessor, QWEN2_VIDEO, 14),
                 _video_case(GpuMMQwen2VLVideoProcessor, QWEN2_VIDEO, 14)),
    "qwen3_vl": (_video_case(Qwen3VLVideoProcessor, QWEN3_VIDEO, 16),
                 _video_case(GpuMMQwen3VLVideoProcessor, QWEN3_VIDEO, 16)),
}


# ---------------------------------------------------------------- the processor (tokenizer + both processors)


def _tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers

    special = ["<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>", "[PAD]"]
    words = "lower newer upper older this is a test describe the image video".split()
    vocab = {"<unk>": 0, **{t: i + 1 for i, t in enumerate(special)}, **{w: 6 + i for i, w in enumerate(words)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="[PAD]",
                                   additional_special_tokens=special[:4])


def _processor_case(image_cls: type, video_cls: type, processor_cls: type = Qwen2VLProcessor) -> type:
    class Case(processing_common.ProcessorTesterMixin, unittest.TestCase):
        __test__ = False  # run by the comparison below, not collected on its own
        processor_class = processor_cls

        @classmethod
        def _setup_tokenizer(cls):
            return _tokenizer()

        @classmethod
        def _setup_image_processor(cls):
            return image_cls()

        @classmethod
        def _setup_video_processor(cls):
            return video_cls()

        def get_component(self, attribute, use_tiny_ckpt=True, **kwargs):
            # Saved folders name the stock classes (as they must): the drop-in case loads the drop-ins back.
            if attribute == "image_processor":
                return image_cls.from_pretrained(self.tmpdirname, **kwargs)
            if attribute == "video_processor":
                return video_cls.from_pretrained(self.tmpdirname, **kwargs)
            return super().get_component(attribute, use_tiny_ckpt=use_tiny_ckpt, **kwargs)

        def get_processor(self, use_tiny_ckpt=True):
            processor = super().get_processor(use_tiny_ckpt)
            processor.image_processor = image_cls.from_pretrained(self.tmpdirname)
            processor.video_processor = video_cls.from_pretrained(self.tmpdirname)
            return processor

    return Case


PROCESSOR_CASES = {
    "qwen2_vl": (_processor_case(Qwen2VLImageProcessor, Qwen2VLVideoProcessor),
                 _processor_case(GpuMMQwen2VLImageProcessor, GpuMMQwen2VLVideoProcessor)),
    "qwen3_vl": (_processor_case(Qwen2VLImageProcessor, Qwen3VLVideoProcessor, Qwen3VLProcessor),
                 _processor_case(GpuMMQwen2VLImageProcessor, GpuMMQwen3VLVideoProcessor, Qwen3VLProcessor)),
}


# ---------------------------------------------------------------- audio


class _AudioTester:
    """Inputs for transformers' sequence feature-extractor mixin: random float sequences of 400 to 2000 values (the
    mixin pads and truncates them), a Whisper extractor at the Omni settings (16 kHz, 128 mel bins, 300 s chunks)."""

    def __init__(self, parent, batch_size=7, min_seq_length=400, max_seq_length=2000, feature_size=128):
        self.parent, self.batch_size = parent, batch_size
        self.min_seq_length, self.max_seq_length, self.feature_size = min_seq_length, max_seq_length, feature_size
        self.seq_length_diff = (max_seq_length - min_seq_length) // (batch_size - 1)

    def prepare_feat_extract_dict(self):
        return {"feature_size": self.feature_size, "hop_length": 160, "chunk_length": 300, "padding_value": 0.0,
                "sampling_rate": 16000, "return_attention_mask": False}

    def prepare_inputs_for_common(self, equal_length=False, numpify=False):
        import numpy as np

        rng = np.random.default_rng(0)
        lengths = ([self.max_seq_length] * self.batch_size if equal_length else
                   range(self.min_seq_length, self.max_seq_length, self.seq_length_diff))
        inputs = [rng.random((n, self.feature_size)).tolist() for n in lengths]
        return [np.asarray(x) for x in inputs] if numpify else inputs


def _audio_case(cls: type) -> type:
    class Case(sequence_common.SequenceFeatureExtractionTestMixin, unittest.TestCase):
        __test__ = False  # run by the comparison below, not collected on its own
        feature_extraction_class = cls

        def setUp(self):
            self.feat_extract_tester = _AudioTester(self)

    return Case


AUDIO_CASES = {"whisper": (_audio_case(WhisperFeatureExtractor), _audio_case(GpuMMWhisperFeatureExtractor))}


# ---------------------------------------------------------------- stock vs drop-in, test by test


def _run(case: type, name: str) -> tuple[str, str]:
    """Run one mixin test (with its class set-up); its outcome and, when not passed, the reason."""
    import random

    import numpy as np
    import torch

    # The mixins draw random images: the same draw for the stock and the drop-in run, so that a tolerance
    # check compares the two classes on the same inputs, not two samples of the inputs.
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    result = unittest.TestResult()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the mixins' own deprecation noise; outcomes are what is compared
        unittest.TestSuite([case(name)]).run(result)
    if result.skipped:
        return "skipped", result.skipped[0][1]
    problems = result.failures + result.errors
    if problems:
        return "failed", problems[0][1]
    return "passed", ""


def _compare(stock: type, ours: type, name: str) -> None:
    outcome, why = _run(stock, name)
    if outcome != "passed":
        last = next((line for line in reversed(why.strip().splitlines()) if line.strip()), why)
        pytest.skip(f"{outcome} with transformers' own classes too: {last[:200]}")
    outcome, why = _run(ours, name)
    assert outcome == "passed", f"{name} passes with transformers' classes but not with gpu-mm's:\n{why}"


def _names(case: type) -> list[str]:
    return sorted(n for n in dir(case) if n.startswith("test_") and callable(getattr(case, n)))


@pytest.mark.parametrize("family", sorted(IMAGE_CASES))
@pytest.mark.parametrize("name", _names(STOCK_IMAGE))
def test_image_mixin(family, name):
    stock, ours = IMAGE_CASES[family]
    _compare(stock, ours, name)


@pytest.mark.parametrize("family", sorted(VIDEO_CASES))
@pytest.mark.parametrize("name", _names(VIDEO_CASES["qwen2_vl"][0]))
def test_video_mixin(family, name):
    stock, ours = VIDEO_CASES[family]
    _compare(stock, ours, name)


@pytest.mark.parametrize("family", sorted(PROCESSOR_CASES))
@pytest.mark.parametrize("name", _names(PROCESSOR_CASES["qwen2_vl"][0]))
def test_processor_mixin(family, name):
    stock, ours = PROCESSOR_CASES[family]
    _compare(stock, ours, name)


@pytest.mark.parametrize("name", _names(AUDIO_CASES["whisper"][0]))
def test_feature_extractor_mixin(name):
    stock, ours = AUDIO_CASES["whisper"]
    _compare(stock, ours, name)


def test_the_comparison_runs_the_drop_ins():
    """Guard: the drop-in cases really hold the drop-ins (a typo would compare stock with stock)."""
    tester = GPU_MM_IMAGE("test_init_without_params")
    tester.setUp()
    assert tester.image_processing_classes["torchvision"] is GpuMMQwen2VLImageProcessor
    assert {VIDEO_CASES[f][1].fast_video_processing_class for f in VIDEO_CASES} == {
        GpuMMQwen2VLVideoProcessor, GpuMMQwen3VLVideoProcessor, GpuMMGlm4vVideoProcessor, GpuMMGlm46VVideoProcessor,
        GpuMMInternVLVideoProcessor}
    for family, drop_in in (("glm4v", GpuMMGlm4vImageProcessor), ("internvl", GpuMMGotOcr2ImageProcessor),
                            ("gemma3", GpuMMGemma3ImageProcessor)):
        case = IMAGE_CASES[family][1]("test_init_without_params")
        case.setUp()
        assert case.image_processing_classes["torchvision"] is drop_in
