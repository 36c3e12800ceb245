"""gpu-mm on the CPU never initialises CUDA: importing it, building CPU preprocessors of every family and running
images, videos and audio through the synchronous and asynchronous APIs, the server's app and the transformers
drop-ins leave ``torch.cuda`` uninitialised (no CUDA context in a serving engine that did not ask for one).

The guard replaces ``torch.cuda._lazy_init``, the function through which torch initialises CUDA (its C++ side calls
it for a tensor op on a CUDA device, checked here), with one that records the stack and raises, so a path that would
create a context fails on a machine without a GPU as on one with a GPU; pinned host memory, which needs the driver,
fails here on its own (no driver) and is held to the same hook on a GPU machine. It runs in a fresh interpreter
(pytest's process may have touched CUDA through another test)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

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
