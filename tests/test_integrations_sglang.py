"""The SGLang plug-in against the real ``sglang`` package (0.5.x, installed with --no-deps): the same
image request through SGLang's Qwen-VL processor and through gpu-mm's gives identical input_ids,
M-RoPE positions and features. Runs in a subprocess: importing sglang changes process-wide state
(warnings, environment) that must not leak into the other tests.

Not testable on the CPU: SGLang's own video decoder pins host memory (``pin_memory()``) and fails
without a CUDA driver, so the video path of either processor runs only on a GPU machine."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest

pytest.importorskip("sglang")

SCRIPT = r'''
import asyncio, json, sys, torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (PreTrainedTokenizerFast, Qwen2VLConfig, Qwen2VLImageProcessor, Qwen2VLProcessor,
                          Qwen2VLVideoProcessor)
from sglang.srt.runtime_context import get_context
from gpu_mm.models.qwen2_vl import Qwen2VLPreprocessor
from media_helpers import make_image

SPECIAL = ["<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>"]
vocab = {"<unk>": 0, **{t: i + 1 for i, t in enumerate(SPECIAL)}, "describe": 5, "this": 6, "and": 7, "<pad>": 8}

def hf_processor():
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    t = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>",
                                additional_special_tokens=SPECIAL)
    return Qwen2VLProcessor(image_processor=Qwen2VLImageProcessor(), tokenizer=t,
                            video_processor=Qwen2VLVideoProcessor())

calls = []
orig = Qwen2VLPreprocessor.__call__
def counting(self, *a, **k):
    calls.append(1)
    return orig(self, *a, **k)
Qwen2VLPreprocessor.__call__ = counting

class Req:
    video_data = None
    audio_data = None
    rid = "r"

images = [make_image(100, 140, "JPEG", seed=1), make_image(300, 200, "PNG", seed=2)]
prompt = ("<|vision_start|><|image_pad|><|vision_end|> describe this and "
          "<|vision_start|><|image_pad|><|vision_end|> this")
cfg = Qwen2VLConfig(vision_start_token_id=3, vision_end_token_id=4, image_token_id=1, video_token_id=2)
cfg.architectures = ["Qwen2VLForConditionalGeneration"]
with get_context().override_server_args(mm_process_config={}) as server_args:
    from sglang.srt.managers.multimodal_processor import PROCESSOR_MAPPING
    from sglang.srt.multimodal.processors.qwen_vl import QwenVLImageProcessor
    from gpu_mm.integrations.sglang import install
    cls = install()
    registered = {m.__name__: c.__name__ for m, c in PROCESSOR_MAPPING.items()
                  if m.__name__ in ("Qwen2VLForConditionalGeneration", "Qwen2_5_VLForConditionalGeneration")}
    theirs = QwenVLImageProcessor(cfg, server_args, hf_processor(), "default")
    ours = cls(cfg, server_args, hf_processor(), "default")
    a = asyncio.run(ours.process_mm_data_async(list(images), prompt, Req()))
    n_calls = len(calls)
    b = asyncio.run(theirs.process_mm_data_async(list(images), prompt, Req()))
fa = torch.cat([it.feature for it in a.mm_items]); fb = torch.cat([it.feature for it in b.mm_items])
print(json.dumps({
    "registered": registered,
    "gpu_mm_calls": n_calls,
    "input_ids": a.input_ids == b.input_ids,
    "n_tokens": len(a.input_ids),
    "mrope": torch.equal(a.mrope_positions, b.mrope_positions),
    "delta": torch.equal(torch.as_tensor(a.mrope_position_delta), torch.as_tensor(b.mrope_position_delta)),
    "offsets": [it.offsets for it in a.mm_items] == [it.offsets for it in b.mm_items],
    "features": torch.equal(fa, fb),
    "shape": list(fa.shape),
}))
'''


def test_same_request_through_sglang_and_the_plugin():
    tests = pathlib.Path(__file__).parent
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tests), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    assert r["registered"] == {"Qwen2VLForConditionalGeneration": "GpuMMQwenVLProcessor",
                               "Qwen2_5_VLForConditionalGeneration": "GpuMMQwenVLProcessor"}
    assert r["gpu_mm_calls"] >= 1  # the features really came from gpu-mm
    assert r["input_ids"] and r["mrope"] and r["delta"] and r["offsets"]
    # Same decoded pixels (SGLang loads the images), same ops: exact.
    assert r["features"], r
    assert r["shape"][1] == 1176
