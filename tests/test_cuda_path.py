"""The CUDA path end to end (run on a GPU machine; skipped elsewhere): same grids as the CPU path,
features within the stated tolerance, features stay on the GPU, deadlines hold, memory does not grow."""

from __future__ import annotations

import asyncio
import time

import pytest
import torch

from gpu_mm import ProcessingTimeout
from gpu_mm.pipeline.families import Qwen2VLPreprocessor

from media_helpers import clip, make_image

pytestmark = pytest.mark.cuda

# One uint8 level is 1 / (255 * std) ~= 0.0146-0.0150 after normalization (CLIP std 0.26-0.28).
LEVEL = 1 / (255 * 0.2613)

# The tolerances below come from benchmarks/gpu_jpeg_diff.py on an H200 (torch 2.11, torchvision 0.26;
# benchmarks/results/nvidia-h200_2026-11-28/jpeg_diff.json), 1920x1080 test pattern, in uint8 levels:
# - nvJPEG decodes a 4:4:4 JPEG exactly as libjpeg-turbo (0 levels everywhere): IDCT and colour conversion agree.
# - After resize the CUDA and CPU paths differ by bicubic rounding alone (CPU: torch's fixed-point uint8
#   kernel; CUDA: float, then rounded): mean 0.20, p99 1, max 9 levels, at the pattern's sharp edges (max 13.3
#   with test_images_match_cpu_path's RGBA PNG beside it).
# - A 4:2:0 JPEG (Pillow's and most cameras' default): nvJPEG upsamples chroma differently from libjpeg-turbo's
#   "fancy" (triangle) upsampling: decoded mean 4.1, p99 30, max 94 levels on this pattern's saturated colour
#   edges; after resize mean 1.15, p99 14, max 44. torchvision's own test of nvJPEG bounds the decoded mean
#   at 2 on photos; this pattern is harsher. ``image_decoder="cpu"`` gives transformers' decode on CUDA.
RESIZE_ONLY = {"mean": 0.5, "p99": 2, "max": 16}
NVJPEG_420 = {"mean": 2.0, "p99": 20, "max": 64}


def _levels(gpu: torch.Tensor, cpu: torch.Tensor, scale: float = LEVEL) -> dict[str, float]:
    d = ((gpu.float().cpu() - cpu.float()).abs() / scale).flatten()
    return {"mean": float(d.mean()), "p99": float(torch.quantile(d[:: max(1, d.numel() // 8_000_000)], 0.99)),
            "max": float(d.max())}


def _within(got: dict[str, float], bound: dict[str, float]) -> None:
    assert all(got[k] <= bound[k] + 1e-3 for k in bound), (got, bound)


@pytest.mark.filterwarnings("ignore:The image decoding:DeprecationWarning")  # torchvision >= 0.29
def test_nvjpeg_decodes_444_exactly_as_libjpeg_turbo():
    from torchvision.io import decode_jpeg

    raw = torch.frombuffer(bytearray(make_image(1080, 1920, "JPEG", subsampling=0)), dtype=torch.uint8)
    assert torch.equal(decode_jpeg(raw, device="cuda").cpu(), decode_jpeg(raw))


def test_images_match_cpu_path():
    """4:4:4 JPEG and PNG: only the resize's rounding separates the CUDA path from the CPU path."""
    data = [make_image(1080, 1920, "JPEG", subsampling=0), make_image(333, 517, "PNG", mode="RGBA")]
    cpu = Qwen2VLPreprocessor("cpu")(images=data)
    gpu = Qwen2VLPreprocessor("cuda")(images=data)
    assert gpu.pixel_values.is_cuda and gpu.items[0].decoder == "nvjpeg"
    assert torch.equal(gpu.image_grid_thw, cpu.image_grid_thw)
    _within(_levels(gpu.pixel_values, cpu.pixel_values), RESIZE_ONLY)


def test_same_size_jpegs_resized_together_equal_one_by_one_on_cuda(monkeypatch):
    """nvJPEG's batch of same-size images resized in one call and patchified in one kernel launch: the bits of
    finishing each decoded image on its own (the same batched decode both times: nvJPEG's batched and single-image
    decoders may take different backends)."""
    from gpu_mm.pipeline import execute

    data = [make_image(720, 1280, "JPEG", seed=s) for s in range(6)] + [make_image(480, 640, "JPEG", seed=9)]
    pre = Qwen2VLPreprocessor("cuda", image_batch=8, cache_bytes=0)
    together = pre(images=data)
    monkeypatch.setattr(execute, "same_size_runs", lambda group, images, figures: [[k] for k in range(len(group))])
    alone = pre(images=data)
    assert [it.decoded.batch_size for it in together.items] == [7] * 7
    assert torch.equal(together.image_grid_thw, alone.image_grid_thw)
    assert torch.equal(together.pixel_values, alone.pixel_values)


def test_420_jpeg_nvjpeg_within_its_upsampling_tolerance_and_exact_decode_on_request():
    data = [make_image(1080, 1920, "JPEG")]
    cpu = Qwen2VLPreprocessor("cpu")(images=data)
    nvjpeg = Qwen2VLPreprocessor("cuda")(images=data)
    libjpeg = Qwen2VLPreprocessor("cuda", image_decoder="cpu")(images=data)
    assert libjpeg.items[0].decoder.startswith("cpu (") and libjpeg.pixel_values.is_cuda
    _within(_levels(nvjpeg.pixel_values, cpu.pixel_values), NVJPEG_420)
    _within(_levels(libjpeg.pixel_values, cpu.pixel_values), RESIZE_ONLY)


def test_uint8_output_matches_cpu_path():
    """vLLM's mm_device_do_normalize mode on CUDA (torch's patch layout, no Triton kernel): raw resized pixels,
    as far from the CPU path as the float features (resize rounding; 4:4:4 JPEG)."""
    data = [make_image(1080, 1920, "JPEG", subsampling=0)]
    cpu = Qwen2VLPreprocessor("cpu", output_dtype=torch.uint8)(images=data, videos=[clip("h264", 12, 96, 128)])
    gpu = Qwen2VLPreprocessor("cuda", output_dtype=torch.uint8)(images=data, videos=[clip("h264", 12, 96, 128)])
    assert gpu.pixel_values.dtype == torch.uint8 and gpu.pixel_values.is_cuda
    assert torch.equal(gpu.image_grid_thw, cpu.image_grid_thw)
    _within(_levels(gpu.pixel_values, cpu.pixel_values, scale=1.0), RESIZE_ONLY)
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


@pytest.mark.parametrize(("family", "std"), [("glm4v", 0.2613), ("internvl", 0.224), ("gemma3", 0.5)])
def test_the_other_families_match_the_cpu_path(family, std):
    """GLM's patch rows, InternVL's tiles and Gemma 3's pan-and-scan crops on CUDA: the same outputs and counts as
    the CPU path, features within the resize-rounding bound above (a 4:4:4 JPEG, so nvJPEG decodes exactly as
    libjpeg-turbo). Gemma 3 resizes bilinearly: held to bicubic's bound until the GPU check measures its own."""
    from gpu_mm import Preprocessor

    data = [make_image(1080, 1920, "JPEG", subsampling=0)]
    kw = {"do_pan_and_scan": True} if family == "gemma3" else {}
    cpu = Preprocessor.for_model(family, device="cpu", cache_bytes=0)(images=data, **kw)
    gpu = Preprocessor.for_model(family, device="cuda", cache_bytes=0)(images=data, **kw)
    assert gpu.pixel_values.is_cuda and gpu.items[0].grid_thw == cpu.items[0].grid_thw
    for key, value in cpu.to_dict().items():
        if key != "pixel_values":
            assert torch.equal(gpu.to_dict()[key].cpu(), value), key
    _within(_levels(gpu.pixel_values, cpu.pixel_values, scale=1 / (255 * std)), RESIZE_ONLY)


def test_internvl_chat_resizes_with_pillow_on_cuda_too():
    """InternVL's original checkpoints (``internvl_chat``): Pillow's bicubic on the CPU whatever the device, so the
    CUDA path's tiles equal the CPU path's up to the normalization's float rounding (same decoded pixels: 4:4:4)."""
    from gpu_mm import InternVLChatPreprocessor

    data = [make_image(1080, 1920, "JPEG", subsampling=0)]
    cpu = InternVLChatPreprocessor("cpu", cache_bytes=0)(images=data)
    gpu = InternVLChatPreprocessor("cuda", cache_bytes=0)(images=data)
    assert gpu.pixel_values.is_cuda and torch.equal(gpu.num_patches.cpu(), cpu.num_patches)
    assert float((gpu.pixel_values.cpu() - cpu.pixel_values).abs().max()) <= 1e-5  # float32 rounding of |x| <= 2.7


def test_log_mel_on_cuda_matches_the_cpu():
    """Whisper log-mel features on CUDA (cuFFT, cuBLAS) against the CPU path's (equal to transformers'): the FFT
    and the mel product round differently, relative errors of ~1e-6 in the power become ~1e-7 after log10 and / 4;
    1e-4 allowed. The mask is the same integers."""
    import numpy as np

    from gpu_mm.audio import log_mel

    rng = np.random.default_rng(0)
    clips = [(0.1 * rng.standard_normal(int(s * 16000))).astype(np.float32) for s in (0.5, 7.3, 61.0)]
    for padding in ("max_length", "longest"):
        cpu, cpu_mask = log_mel(clips, padding=padding)
        gpu, gpu_mask = log_mel(clips, padding=padding, device="cuda")
        assert gpu.is_cuda and torch.equal(gpu_mask.cpu(), cpu_mask)
        assert float((gpu.cpu() - cpu).abs().max()) <= 1e-4


@pytest.mark.parametrize("family", ["qwen2_5_omni", "qwen3_omni_moe"])
def test_omni_audio_on_cuda_matches_the_cpu_through_every_api(family):
    """An Omni family's audio on CUDA: decoded on the CPU, features on the device (synchronous and asynchronous
    APIs, ``output="cpu"`` too), within the log-mel test's 1e-4 of the CPU path's; token counts equal."""
    import gpu_mm
    from gpu_mm.media.synth import make_audio, make_video

    clips = [make_audio(3.0, 44100, codec="flac", fmt="flac"), make_audio(40.0)]
    film = make_video(30, 64, 96, audio_rate=48000)
    kw = dict(audios=clips, videos=[film], use_audio_in_video=True)
    cpu = gpu_mm.Preprocessor.for_model(family, device="cpu", cache_bytes=0)(**kw)
    gpu = gpu_mm.Preprocessor.for_model(family, device="cuda", cache_bytes=0)(**kw)
    assert gpu.input_features.is_cuda and torch.equal(gpu.feature_attention_mask.cpu(), cpu.feature_attention_mask)
    assert float((gpu.input_features.cpu() - cpu.input_features).abs().max()) <= 1e-4
    assert [r.num_tokens for r in gpu.items] == [r.num_tokens for r in cpu.items]

    async def run():
        pre = gpu_mm.Preprocessor.for_model(family, device="cuda", cache_bytes=0, output="cpu")
        try:
            return await pre.preprocess(**kw)
        finally:
            await pre.aclose()

    out = asyncio.run(run())
    assert out.input_features.device.type == "cpu"
    assert float((out.input_features - cpu.input_features).abs().max()) <= 1e-4


async def test_device_memory_of_200_mixed_requests_stays_within_the_stated_budget_and_goes_at_close():
    """An Omni preprocessor on CUDA, 200 requests (JPEG and PNG images of several sizes, short clips, audio), 8 at a
    time: torch's allocations on the device (``memory_allocated``: tensors; not NVDEC's or nvJPEG's own buffers)
    never exceed the stated budget (working memory + cache) plus the features the 8 callers hold, and after
    ``aclose`` (which empties the cache) they are back where they started, within 1 MiB."""
    import gc

    from gpu_mm import Preprocessor
    from gpu_mm.media.synth import make_audio

    device = torch.device("cuda")
    torch.cuda.synchronize()
    gc.collect()
    base = torch.cuda.memory_allocated(device)
    pre = Preprocessor.for_model("qwen2_5_omni", device="cuda", memory_budget_bytes=512 << 20,
                                 cache_bytes=128 << 20)
    requests = [
        {"images": [make_image(1080, 1920, "JPEG", seed=1)]},
        {"images": [make_image(720, 1280, "JPEG", seed=2), make_image(333, 517, "PNG", mode="RGBA")]},
        {"videos": [clip("h264", 24, 240, 320)]},
        {"audios": [make_audio(5.0)]},
        {"images": [make_image(480, 640, "JPEG", seed=3)], "audios": [make_audio(2.0, seed=1)]},
    ]
    torch.cuda.reset_peak_memory_stats(device)
    held = [0]

    async def one(k: int) -> None:
        out = await pre.preprocess(**requests[k % len(requests)], deadline=None)
        nbytes = sum(t.numel() * t.element_size() for t in out.to_dict().values() if t.is_cuda)
        held[0] = max(held[0], nbytes)
        del out

    for start in range(0, 200, 8):
        await asyncio.gather(*(one(k) for k in range(start, start + 8)))
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated(device) - base
    statement = pre.statistics().memory
    assert statement.cache_device.startswith("cuda") and statement.budget_bytes == (512 + 128) << 20
    assert peak <= statement.budget_bytes + 8 * held[0], (peak, statement, held[0])
    await pre.aclose()
    gc.collect()
    torch.cuda.synchronize()
    assert torch.cuda.memory_allocated(device) <= base + (1 << 20)


def test_a_real_out_of_memory_is_typed_and_the_next_call_runs():
    """The caching allocator capped just above what is reserved (as when an engine holds the rest): a 24 MP image
    is a ``MemoryExhausted`` naming it, not torch's error; with the cap lifted the same call runs."""
    from gpu_mm import MemoryExhausted

    pre = Qwen2VLPreprocessor("cuda", cache_bytes=0)
    big = [make_image(4000, 6000, "JPEG", subsampling=0)]
    pre(images=[make_image(64, 64, "JPEG")])  # warm: nvJPEG's and the kernel's own state exist
    torch.cuda.synchronize()
    total = torch.cuda.get_device_properties(0).total_memory
    torch.cuda.set_per_process_memory_fraction(min(1.0, (torch.cuda.memory_reserved() + 64 * 2**20) / total))
    try:
        with pytest.raises(MemoryExhausted, match=r"^image\[0\].*out of memory") as info:
            pre(images=big)
        assert info.value.status_code == 503 and info.value.__context__ is None
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
    assert pre(images=big).pixel_values.is_cuda
