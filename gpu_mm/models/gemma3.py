"""Gemma 3 (``gemma3``): the family's spec.

Every image becomes whole normalized images of one fixed size (896 x 896, bilinear, mean/std 0.5), as
transformers' ``Gemma3ImageProcessor`` computes them: ``pixel_values`` ``(N, 3, 896, 896)`` and ``num_crops``.
With pan-and-scan an image of a marked aspect ratio is also cut into 2 to ``pan_and_scan_max_num_crops`` crops
along its long side (ceil sizes, the last one cut short by the edge), each resized to the same size; the whole
image comes first, then its crops. Pan-and-scan is off by default, as ``Gemma3Processor`` has it whatever the
model folder says; a request turns it on with ``do_pan_and_scan=True`` (transformers' own name), a config with
``Gemma3Config(do_pan_and_scan=True)``. The prompt gives every output ``mm_tokens_per_image`` (256) image
tokens. Gemma 3 takes no video.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Mapping
from typing import Any, ClassVar

import torch

from ..features import Features
from ..options import RequestOptions
from . import register_family
from .base import ImageView, ModelSpec, fixed_size, or_default, read_normalization

__all__ = ["Gemma3Config", "Gemma3Features", "pan_and_scan_crops"]


@dataclasses.dataclass(frozen=True)
class Gemma3Config(ModelSpec):
    """Gemma 3 preprocessing settings; defaults are the published Gemma 3 models' configs (896 x 896; the
    pan-and-scan values ``Gemma3Processor`` fills in where the config leaves them null)."""

    family: ClassVar[str] = "gemma3"
    model_types: ClassVar[tuple[str, ...]] = ("gemma3",)
    processor_classes: ClassVar[tuple[str, ...]] = ("Gemma3Processor",)
    options: ClassVar[frozenset[str]] = frozenset({"do_pan_and_scan"})
    modalities: ClassVar[tuple[str, ...]] = ("image",)
    layout: ClassVar[str] = "pixels"
    meta_keys: ClassVar[Mapping[str, str | None]] = {"image": "num_crops"}
    # Whole images: a grid counts outputs and pixels (see ModelSpec.layout); not settings.
    patch_size: int = dataclasses.field(default=1, init=False, repr=False)
    temporal_patch_size: int = dataclasses.field(default=1, init=False, repr=False)
    merge_size: int = dataclasses.field(default=1, init=False, repr=False)

    size: tuple[int, int] = (896, 896)
    """(height, width) of every output image."""
    image_mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    image_std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    image_resample: str = "bilinear"
    do_pan_and_scan: bool = False
    pan_and_scan_min_crop_size: int = 256
    pan_and_scan_max_num_crops: int = 4
    pan_and_scan_min_ratio_to_activate: float = 1.2
    mm_tokens_per_image: int = 256
    """Image tokens the prompt gives each output image (``image_seq_length``)."""
    video_resample: str = "bilinear"
    output_dtype: torch.dtype = torch.float32

    def validate(self) -> None:
        super().validate()
        if self.image_resample not in ("bicubic", "bilinear"):
            raise ValueError(f"image_resample must be 'bicubic' or 'bilinear', got {self.image_resample!r}")
        if min(self.size) < 1 or self.pan_and_scan_max_num_crops < 2 and self.do_pan_and_scan:
            raise ValueError("size must be positive and pan-and-scan needs pan_and_scan_max_num_crops >= 2")

    def image_views(self, height: int, width: int, options: RequestOptions) -> list[ImageView]:
        views = [ImageView(self.size)]
        if or_default(options.do_pan_and_scan, self.do_pan_and_scan):
            crops = pan_and_scan_crops(height, width, self.pan_and_scan_min_crop_size,
                                       self.pan_and_scan_max_num_crops, self.pan_and_scan_min_ratio_to_activate)
            views += [ImageView(self.size, crop=box) for box in crops]
        return views

    def item_meta(self, grid: tuple[int, int, int]) -> tuple[int, ...]:
        return (grid[0] - 1,)  # the crops beside the whole image

    def token_count(self, grid: tuple[int, int, int]) -> int:
        return grid[0] * self.mm_tokens_per_image

    @classmethod
    def from_pretrained_dict(cls, model_type: str, image: Mapping[str, Any],
                             video: Mapping[str, Any] | None) -> Gemma3Config:
        """Size, mean/std and resampling from the image processor's config, ``image_seq_length`` from the
        processor's. Pan-and-scan keeps ``Gemma3Processor``'s defaults (off, 256, 4, 1.2): the processor passes
        them to its image processor on every call, over whatever the folder's image config says, so a folder
        cannot turn it on for transformers either; a request can (``do_pan_and_scan=True``)."""
        kw: dict[str, Any] = {}
        size = fixed_size(image)
        if size is not None:
            kw["size"] = size
        read_normalization(kw, image)
        if image.get("resample") == 3:  # PIL's BICUBIC; 2 (BILINEAR) is the default
            kw["image_resample"] = "bicubic"
        if isinstance(image.get("image_seq_length"), int):
            kw["mm_tokens_per_image"] = image["image_seq_length"]
        return cls(**kw)


@dataclasses.dataclass
class Gemma3Features(Features):
    """Model inputs for Gemma 3: ``pixel_values`` ``(N, 3, H, W)`` and ``num_crops`` per image."""

    num_crops: torch.Tensor | None = None
    """Per image, its pan-and-scan crops (0: the whole image only); its outputs are 1 + that many."""

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        if self.num_crops is not None:
            out["num_crops"] = self.num_crops
        return out


register_family(Gemma3Config, Gemma3Features, preprocessor_name="Gemma3Preprocessor")


def pan_and_scan_crops(height: int, width: int, min_crop_size: int, max_num_crops: int,
                       min_ratio_to_activate: float) -> list[tuple[int, int, int, int]]:
    """``Gemma3ImageProcessor.pan_and_scan``'s crops of a ``height`` x ``width`` image, as (top, left, height,
    width) boxes clipped to the image (its slices are): none unless the long side is at least
    ``min_ratio_to_activate`` times the short one; 2 to ``max_num_crops`` crops along the long side, each at
    least ``min_crop_size``."""
    if width >= height:
        if width / height < min_ratio_to_activate:
            return []
        cols = min(int(math.floor(width / min_crop_size)), int(math.floor(width / height + 0.5)))
        cols, rows = min(max_num_crops, max(2, cols)), 1
    else:
        if height / width < min_ratio_to_activate:
            return []
        rows = min(int(math.floor(height / min_crop_size)), int(math.floor(height / width + 0.5)))
        rows, cols = min(max_num_crops, max(2, rows)), 1
    crop_w, crop_h = int(math.ceil(width / cols)), int(math.ceil(height / rows))
    if min(crop_w, crop_h) < min_crop_size:
        return []
    return [(top, left, min(crop_h, height - top), min(crop_w, width - left))
            for top, left in itertools.product([crop_h * i for i in range(rows)], [crop_w * i for i in range(cols)])]
