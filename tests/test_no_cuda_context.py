"""gpu-mm on the CPU never initialises CUDA: importing it, building CPU preprocessors of every family and running
images, videos and audio through the synchronous and asynchronous APIs, the server's app and the transformers
drop-ins leave ``torch.cuda`` uninitialised (no CUDA context in a serving engine that did not ask for one).

The guard replaces ``torch.cuda._lazy_init``, the function through which torch initialises CUDA (its C++ side calls
it for a tensor op on a CUDA device, checked here), with one that records the stack and raises, so a path that would
create a context fails on a machine without a GPU as on one with a GPU; pinned host memory, which needs the driver,
fails here on its own (no driver) and is held to the same hook on a GPU machine. It runs in a fresh interpreter
(pytest's process may have touched CUDA through another test)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent('''
    import asyncio, traceback
    import torch

    stacks = []

    def guard(*args, **kwargs):
        stacks.append("".join(traceback.format_stack(limit=12)))
        raise RuntimeError("gpu-mm initialised CUDA")

    torch.cuda._lazy_init = guard
    try:
        torch.zeros(1, device="cuda")
    except RuntimeError:
        pass
    assert len(stacks) == 1, "the guard does not see CUDA's initialisation"
    stacks.clear()

    import gpu_mm
    import gpu_mm.integrations.hf  # noqa: F401 - the transformers drop-ins
    from gpu_mm.media.synth import make_audio, make_image, make_video
    from gpu_mm.models import family_names, get_family
    from gpu_mm.serve import build_app

    image, video, clip = make_image(96, 128), make_video(12, 64, 96, audio_rate=16000), make_audio(1.0)
    families = sorted({get_family(n).name for n in family_names()})
    for name in families:
        pre = gpu_mm.Preprocessor.for_model(name, device="cpu", workers="threads")
        modalities = pre.config.modalities
        kw = {"images": [image]}
        if "video" in modalities:
            kw["videos"] = [video]
        if "audio" in modalities:
            kw["audios"] = [clip]
        pre(**kw)

        async def run(pre=pre, kw=kw):
            await pre.preprocess(**kw)
            await pre.aclose()

        asyncio.run(run())
    processes = gpu_mm.Preprocessor.for_model("qwen2_vl", device="cpu", workers="processes", num_slots=1)

    async def in_processes():
        await processes.preprocess(images=[image], videos=[video])
        await processes.aclose()

    asyncio.run(in_processes())
    build_app(device="cpu", workers="threads")
    drop_in = gpu_mm.integrations.hf.GpuMMQwen2VLImageProcessor()
    drop_in(images=[torch.zeros(3, 56, 56, dtype=torch.uint8)], return_tensors="pt")
    assert not stacks, stacks[0]
    assert not torch.cuda.is_initialized()
    print("families", len(families))
''')


def test_the_cpu_path_never_initialises_cuda():
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "families" in proc.stdout and int(proc.stdout.split("families")[-1]) >= 9


CONTEXT_PROBE = textwrap.dedent('''
    import os, sys, time
    import gpu_mm
    from gpu_mm.media.synth import make_image

    device, image_decoder = sys.argv[1], sys.argv[2]
    pre = gpu_mm.Qwen2VLPreprocessor(device, image_decoder=image_decoder, workers="threads", cache_bytes=0)
    pre(images=[make_image(96, 128, "JPEG", seed=s) for s in range(3)])
    print("ready", os.getpid(), flush=True)
    time.sleep(60)
''')


def _compute_pids(smi: str) -> set[str]:
    out = subprocess.run([smi, "--query-compute-apps=pid", "--format=csv,noheader"], capture_output=True, text=True,
                         timeout=30).stdout
    return {line.strip() for line in out.splitlines() if line.strip()}


def _context_of(device: str, image_decoder: str, smi: str) -> bool:
    """Whether a process that built a ``device`` preprocessor and decoded JPEGs with ``image_decoder`` holds a CUDA
    context (it is among nvidia-smi's compute processes)."""
    proc = subprocess.Popen([sys.executable, "-c", CONTEXT_PROBE, device, image_decoder], stdout=subprocess.PIPE,
                            text=True)
    try:
        line = proc.stdout.readline().split() if proc.stdout else []
        assert line[:1] == ["ready"], f"the probe did not start: {line}"
        return line[1] in _compute_pids(smi)
    finally:
        proc.kill()
        proc.wait(30)


@pytest.mark.cuda
def test_nvimgcodecs_cpu_backend_creates_no_context_beside_a_gpu():
    """nvImageCodec's default decoder asks CUDA's runtime for devices; gpu-mm builds a CPU preprocessor's decoder
    with the library's CPU-only device and backend, so decoding with it holds no CUDA context (nvidia-smi's compute
    processes, checked against a CUDA preprocessor's process, which must appear there)."""
    pytest.importorskip("nvidia.nvimgcodec")
    smi = shutil.which("nvidia-smi")
    if smi is None:
        pytest.skip("no nvidia-smi")
    if not _context_of("cuda", "nvjpeg", smi):
        pytest.skip("nvidia-smi does not list this container's processes (PID namespace)")
    assert not _context_of("cpu", "nvimgcodec", smi)
    assert not _context_of("cpu", "cpu", smi)
