"""gpu-mm's pixel work inside vLLM's processing of InternVL's original checkpoints (``InternVLChatModel``,
``model_type`` ``internvl_chat``), which use no transformers processor: vLLM's own ``InternVLChatImageProcessor``
and ``InternVLChatVideoProcessor`` (the model repository's preprocessing: Pillow bicubic tiles, ImageNet mean/std)
with their pixel work done by gpu-mm's ``internvl_chat`` family (:class:`gpu_mm.InternVLChatConfig`, the same
Pillow resize). vLLM's tile counts, prompt and output names stay its own. Imported by :mod:`gpu_mm.integrations.vllm`
when vLLM is there.
"""

from __future__ import annotations

import copy
import threading
import weakref
from typing import Any

import numpy as np
import torch
from vllm.transformers_utils.processors.internvl import (
    InternVLChatImageProcessor,
    InternVLChatVideoProcessor,
    resolve_internvl_min_max_num,
)

from gpu_mm.models.internvl import InternVLChatConfig
from gpu_mm.pipeline.families import InternVLChatPreprocessor

__all__ = ["GpuMMInternVLChatImageProcessor", "GpuMMInternVLChatVideoProcessor", "adopt"]

_PREPROCESSORS: weakref.WeakKeyDictionary[Any, dict[InternVLChatConfig, Any]] = weakref.WeakKeyDictionary()
_lock = threading.Lock()


def _run(owner: Any, config: InternVLChatConfig, **call: Any) -> Any:
    """``call`` through ``owner``'s gpu-mm preprocessor for ``config`` (CPU, PyAV, no feature cache: a processor
    computes every call, as vLLM's does; made once per owner and config)."""
    with _lock:
        cache = _PREPROCESSORS.setdefault(owner, {})
        if config not in cache:
            cache[config] = InternVLChatPreprocessor("cpu", config=config, video_decoder="pyav", cache_bytes=0)
        pre = cache[config]
    return pre(**call)


def _rgb(image: Any) -> np.ndarray:
    """A PIL image (any mode) as the uint8 RGB array vLLM's transform starts from (``convert_image_mode``)."""
    return np.asarray(image if image.mode == "RGB" else image.convert("RGB"))


class GpuMMInternVLChatImageProcessor(InternVLChatImageProcessor):
    """vLLM's ``InternVLChatImageProcessor`` with gpu-mm's tiles (same grid, Pillow resize, normalization)."""

    def _images_to_pixel_values_lst(self, images: list[Any], min_dynamic_patch: int | None = None,
                                    max_dynamic_patch: int | None = None,
                                    dynamic_image_size: bool | None = None) -> list[torch.Tensor]:
        if not images:
            return []
        min_num, max_num = resolve_internvl_min_max_num(
            min_dynamic_patch=self.min_dynamic_patch if min_dynamic_patch is None else min_dynamic_patch,
            max_dynamic_patch=self.max_dynamic_patch if max_dynamic_patch is None else max_dynamic_patch,
            dynamic_image_size=self.dynamic_image_size if dynamic_image_size is None else dynamic_image_size,
            use_thumbnail=False)  # as vLLM's: the thumbnail is added after the grid is chosen
        config = InternVLChatConfig(tile_size=(self.image_size, self.image_size), min_patches=min_num,
                                    max_patches=max_num, use_thumbnail=bool(self.use_thumbnail))
        feats = _run(self, config, images=[_rgb(im) for im in images])
        return list(torch.split(feats.pixel_values, feats.num_patches.tolist()))


class GpuMMInternVLChatVideoProcessor(InternVLChatVideoProcessor):
    """vLLM's ``InternVLChatVideoProcessor`` with gpu-mm's frames (one Pillow-resized tile each)."""

    def _videos_to_pixel_values_lst(self, videos: list[Any]) -> list[torch.Tensor]:
        if not videos:
            return []
        config = InternVLChatConfig(tile_size=(self.image_size, self.image_size), min_patches=1, max_patches=1,
                                    use_thumbnail=False)
        feats = _run(self, config, videos=[np.ascontiguousarray(v) for v in videos])
        return list(torch.split(feats.pixel_values_videos, feats.video_num_patches.tolist()))


SWAPS: dict[type, type] = {InternVLChatImageProcessor: GpuMMInternVLChatImageProcessor,
                           InternVLChatVideoProcessor: GpuMMInternVLChatVideoProcessor}
"""vLLM's own InternVL classes -> gpu-mm's."""


def adopt(component: Any) -> Any:
    """A copy of vLLM's ``component`` (same settings) whose methods are gpu-mm's; vLLM's classes have no
    ``from_dict`` round trip, so the instance is copied rather than rebuilt."""
    new = copy.copy(component)
    new.__class__ = SWAPS[type(component)]
    return new
