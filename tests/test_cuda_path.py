"""The CUDA path end to end (run on a GPU machine; skipped elsewhere): same grids as the CPU path,
features within the stated tolerance, features stay on the GPU, deadlines hold, memory does not grow."""

from __future__ import annotations

import asyncio
import time

import pytest
import torch

from gpu_mm import ProcessingTimeout
from gpu_mm.models.qwen2_vl import Qwen2VLPreprocessor

from media_helpers import clip, make_image

pytestmark = pytest.mark.cuda

# One uint8 level is 1 / (255 * std) ~= 0.0146-0.0150 after normalization (CLIP std 0.26-0.28).
LEVEL = 1 / (255 * 0.2613)


def _close(gpu: torch.Tensor, cpu: torch.Tensor, levels: float) -> None:
    d = (gpu.float().cpu() - cpu.float()).abs()
    assert d.max() <= levels * LEVEL + 1e-6, float(d.max() / LEVEL)


def test_images_match_cpu_path():
    """nvJPEG vs libjpeg-turbo IDCT/upsampling and CUDA vs CPU bicubic rounding: up to ~2 uint8 levels."""
    data = [make_image(1080, 1920, "JPEG"), make_image(333, 517, "PNG", mode="RGBA")]
    cpu = Qwen2VLPreprocessor("cpu")(images=data)
    gpu = Qwen2VLPreprocessor("cuda")(images=data)
    assert gpu.pixel_values.is_cuda and gpu.items[0].decoder == "nvjpeg"
    assert torch.equal(gpu.image_grid_thw, cpu.image_grid_thw)
    _close(gpu.pixel_values, cpu.pixel_values, levels=3)


def test_uint8_output_matches_cpu_path():
    """vLLM's mm_device_do_normalize mode on CUDA (torch's patch layout, no Triton kernel): raw resized pixels,
    the same ~2-3 levels from the CPU path as the float features (decoder and resize rounding)."""
    data = [make_image(1080, 1920, "JPEG")]
    cpu = Qwen2VLPreprocessor("cpu", output_dtype=torch.uint8)(images=data, videos=[clip("h264", 12, 96, 128)])
    gpu = Qwen2VLPreprocessor("cuda", output_dtype=torch.uint8)(images=data, videos=[clip("h264", 12, 96, 128)])
    assert gpu.pixel_values.dtype == torch.uint8 and gpu.pixel_values.is_cuda
    assert torch.equal(gpu.image_grid_thw, cpu.image_grid_thw)
    assert (gpu.pixel_values.cpu().int() - cpu.pixel_values.int()).abs().max() <= 3
    assert torch.equal(gpu.video_grid_thw, cpu.video_grid_thw)


def test_video_matches_cpu_path_within_nvdec_colour_tolerance():
    data = clip("h264", 48, 240, 320, bframes=2)
    cpu = Qwen2VLPreprocessor("cpu")(videos=[data])
    gpu = Qwen2VLPreprocessor("cuda")(videos=[data])
    assert torch.equal(gpu.video_grid_thw, cpu.video_grid_thw)
    assert gpu.items[0].frame_indices == cpu.items[0].frame_indices
    d = (gpu.pixel_values_videos.float().cpu() - cpu.pixel_values_videos).abs() / LEVEL
    # NVDEC's YUV->RGB differs from swscale by a few levels, more at chroma edges (see test_dali).
    assert d.mean() < 6 and d.median() < 5


async def test_stalled_item_times_out_while_others_flow():
    pre = Qwen2VLPreprocessor("cuda", num_slots=2)
    img = make_image(224, 224, "JPEG")
    await pre.preprocess(images=[img])
    stall = asyncio.ensure_future(pre._slots.run(lambda slot: torch.cuda._sleep(int(3e9)),
                                                 deadline=time.monotonic() + 0.1))
    outs = await asyncio.gather(*(pre.preprocess(images=[img], deadline=time.monotonic() + 10) for _ in range(8)))
    assert all(o.pixel_values.is_cuda for o in outs)
    with pytest.raises(ProcessingTimeout):
        await stall
    await pre.aclose()
    assert pre.statistics().slots.busy == 0


async def test_no_memory_growth_over_many_requests():
    pre = Qwen2VLPreprocessor("cuda", num_slots=2)
    img = make_image(720, 1280, "JPEG")
    for _ in range(5):
        await pre.preprocess(images=[img])
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    for _ in range(200):
        out = await pre.preprocess(images=[img])
        del out
    torch.cuda.synchronize()
    assert torch.cuda.memory_allocated() <= before + (1 << 20)
    await pre.aclose()


async def test_pinned_output_is_complete_when_awaited():
    data = [make_image(480, 640, "JPEG")]
    pre = Qwen2VLPreprocessor("cuda", output="pinned")
    feats = await pre.preprocess(images=data)
    assert feats.pixel_values.is_pinned() and feats.pixel_values.device.type == "cpu"
    ref = Qwen2VLPreprocessor("cuda")(images=data)
    assert torch.equal(feats.pixel_values, ref.pixel_values.cpu())
    await pre.aclose()
