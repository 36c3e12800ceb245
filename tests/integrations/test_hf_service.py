"""The transformers drop-ins with a node's service set (``GPU_MM_SERVICE``, :mod:`gpu_mm.integrations.service`):
calls of the family the service serves go there (decoded frames in shared memory, the call's settings as its
spec) and give the in-process drop-in's output bit for bit; another family's drop-in computes in-process."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("aiohttp")

from gpu_mm.integrations.hf import (  # noqa: E402
    GpuMMGlm4vImageProcessor,
    GpuMMQwen2VLImageProcessor,
    GpuMMQwen2VLVideoProcessor,
)
from gpu_mm.integrations.service import use_service  # noqa: E402
from gpu_mm.media.synth import pattern  # noqa: E402

from service_helpers import served, serving  # noqa: E402

IMAGES = [torch.from_numpy(pattern(140, 180, seed=s)).permute(2, 0, 1).contiguous() for s in (1, 2)]
VIDEO = torch.from_numpy(np.stack([np.roll(pattern(96, 128, seed=4), 3 * t, axis=1) for t in range(8)])).permute(
    0, 3, 1, 2).contiguous()


def _calls():
    return {
        "image": lambda: GpuMMQwen2VLImageProcessor()(images=IMAGES, return_tensors="pt"),
        "image uint8 bounds": lambda: GpuMMQwen2VLImageProcessor(max_pixels=64 * 28 * 28)(
            images=IMAGES, do_rescale=False, do_normalize=False, return_tensors="pt"),
        "video": lambda: GpuMMQwen2VLVideoProcessor()(videos=[VIDEO], return_tensors="pt"),
    }


def test_drop_in_calls_go_to_the_service_and_give_the_in_process_output(tmp_path):
    use_service(None)
    want = {name: call() for name, call in _calls().items()}
    glm_want = GpuMMGlm4vImageProcessor()(images=IMAGES, return_tensors="pt")
    with serving(tmp_path, "qwen2_vl") as (tcp, uds):
        use_service(uds)
        try:
            for name, call in _calls().items():
                got = call()
                assert set(got) == set(want[name]), name
                assert all(torch.equal(got[k], want[name][k]) for k in got), name
            assert served(tcp) == len(want)
            glm = GpuMMGlm4vImageProcessor()(images=IMAGES, return_tensors="pt")  # another family: in-process
            assert all(torch.equal(glm[k], glm_want[k]) for k in glm) and served(tcp) == len(want)
        finally:
            use_service(None)


def test_a_service_over_tcp_is_refused_for_the_drop_ins():
    with pytest.raises(ValueError, match="unix://"):
        use_service("http://127.0.0.1:1")
