"""InternVL3 / InternVL3.5, the ``-hf`` checkpoints (``internvl``), and the original ``internvl_chat`` ones
(:class:`InternVLChatConfig`): the families' specs.

Images follow transformers' ``GotOcr2ImageProcessor`` with ``crop_to_patches=True`` (what ``InternVLProcessor``
asks for): the tile grid (1 to ``max_patches`` tiles of 448 x 448) whose aspect ratio is closest to the image's
(a tie goes to the grid with more tiles while the image covers more than half of it), one bicubic resize of the
whole image to that grid, its tiles in row order, then a thumbnail (the whole image resized to one tile) when
there is more than one tile; each normalized (ImageNet mean/std). ``pixel_values`` ``(N, 3, 448, 448)`` and
``num_patches`` per image; the prompt gives each tile ``image_seq_length`` (256) image tokens.

Videos follow ``InternVLVideoProcessor``: every frame (or ``nframes`` / ``fps`` frames sampled from the middle of
equal spans), each resized to one tile. ``pixel_values_videos`` holds the frames of all videos one after the
other, ``(frames, 3, 448, 448)``, and ``video_num_patches`` each video's frame count (vLLM's name; transformers'
video processor stacks videos of equal length instead); each frame gets ``image_seq_length`` tokens.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from typing import Any, ClassVar

import torch

from ..features import Features
from ..options import RequestOptions
from . import register_family
from .base import ImageView, ModelSpec, VideoSampling, fixed_size, read_normalization

__all__ = ["InternVLChatConfig", "InternVLConfig", "InternVLFeatures", "chat_tile_grid", "sample_indices", "tile_grid"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclasses.dataclass(frozen=True)
class InternVLConfig(ModelSpec):
    """InternVL3 / 3.5 (``-hf``) preprocessing settings; defaults are the published checkpoints' configs."""

    family: ClassVar[str] = "internvl"
    model_types: ClassVar[tuple[str, ...]] = ("internvl",)
    processor_classes: ClassVar[tuple[str, ...]] = ("InternVLProcessor",)
    options: ClassVar[frozenset[str]] = frozenset({"fps", "nframes"})
    layout: ClassVar[str] = "pixels"
    meta_keys: ClassVar[Mapping[str, str | None]] = {"image": "num_patches", "video": "video_num_patches"}
    # Whole images: a grid counts outputs and pixels (see ModelSpec.layout); not settings.
    patch_size: int = dataclasses.field(default=1, init=False, repr=False)
    temporal_patch_size: int = dataclasses.field(default=1, init=False, repr=False)
    merge_size: int = dataclasses.field(default=1, init=False, repr=False)

    tile_size: tuple[int, int] = (448, 448)
    """(height, width) of a tile, of the thumbnail and of a video frame."""
    crop_to_patches: bool = True
    min_patches: int = 1
    max_patches: int = 12
    image_mean: tuple[float, float, float] = IMAGENET_MEAN
    image_std: tuple[float, float, float] = IMAGENET_STD
    image_resample: str = "bicubic"
    image_seq_length: int = 256
    """Image tokens per tile (and per video frame) in the prompt."""
    num_frames: int | None = None
    """Frames sampled per video (None: every frame, unless ``fps`` or the request says)."""
    fps: float | None = None
    video_resample: str = "bicubic"
    output_dtype: torch.dtype = torch.float32

    def validate(self) -> None:
        super().validate()
        if not 1 <= self.min_patches <= self.max_patches:
            raise ValueError(f"need 1 <= min_patches <= max_patches, got {self.min_patches}, {self.max_patches}")

    def image_views(self, height: int, width: int, options: RequestOptions) -> list[ImageView]:
        th, tw = self.tile_size
        if not self.crop_to_patches:
            return [ImageView(self.tile_size)]
        cols, rows = tile_grid(height, width, th, tw, self.min_patches, self.max_patches)
        canvas = (rows * th, cols * tw)
        if cols * rows == 1:
            return [ImageView(self.tile_size)]
        views = [ImageView(canvas, tile=(r * th, c * tw, th, tw)) for r in range(rows) for c in range(cols)]
        return [*views, ImageView(self.tile_size)]  # the thumbnail last

    def item_meta(self, grid: tuple[int, int, int]) -> tuple[int, ...]:
        return (grid[0],)

    def token_count(self, grid: tuple[int, int, int]) -> int:
        return grid[0] * self.image_seq_length

    def sample_video(self, total: int, video_fps: float, size: tuple[int, int],
                     options: RequestOptions) -> VideoSampling:
        num = options.nframes if options.nframes is not None else self.num_frames
        fps = options.fps if options.fps is not None else self.fps
        if num is None and fps is not None:
            num = int(total / video_fps * fps)
        indices = list(range(total)) if num is None else sample_indices(total, num)
        return VideoSampling(indices, len(indices) / max(total, 1) * video_fps, self.tile_size, video_fps)

    def sample_frames(self, frames: int, size: tuple[int, int], options: RequestOptions) -> VideoSampling:
        return VideoSampling(list(range(frames)), float(options.fps or self.fps or 1.0), self.tile_size, None)

    @classmethod
    def from_pretrained_dict(cls, model_type: str, image: Mapping[str, Any],
                             video: Mapping[str, Any] | None) -> InternVLConfig:
        kw: dict[str, Any] = {}
        size = fixed_size(image)
        if size is not None:
            kw["tile_size"] = size
        read_normalization(kw, image)
        for name in ("min_patches", "max_patches", "image_seq_length"):
            if isinstance(image.get(name), int) and not isinstance(image.get(name), bool):
                kw[name] = image[name]
        if video:
            if isinstance(video.get("num_frames"), int) and video.get("do_sample_frames"):
                kw["num_frames"] = video["num_frames"]
            if isinstance(video.get("fps"), (int, float)) and video.get("do_sample_frames"):
                kw["fps"] = float(video["fps"])
        return cls(**kw)


@dataclasses.dataclass
class InternVLFeatures(Features):
    """Model inputs for InternVL (``-hf``): tiles and frames as whole images, with their counts per item."""

    num_patches: torch.Tensor | None = None
    """Per image, its tiles (with the thumbnail)."""
    video_num_patches: torch.Tensor | None = None
    """Per video, its frames."""

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        for key in ("num_patches", "video_num_patches"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        return out


register_family(InternVLConfig, InternVLFeatures, preprocessor_name="InternVLPreprocessor")


@dataclasses.dataclass(frozen=True)
class InternVLChatConfig(InternVLConfig):
    """InternVL's original checkpoints (``internvl_chat``: InternVL2 / 2.5 / 3 / 3.5 as OpenGVLab publishes them),
    which ship no transformers processor: the model's own preprocessing, as vLLM's ``InternVLChatProcessor`` runs
    it. The tiles of :class:`InternVLConfig` (the same tie rule, over the grids in that code's order), each made by
    Pillow's bicubic filter (``pil-bicubic``; the ``-hf`` processor resizes with torch's), a thumbnail when
    ``use_thumbnail``, ImageNet mean/std; a video frame is one tile, Pillow-resized too. Settings come from the
    folder's ``config.json`` (``min_dynamic_patch``, ``max_dynamic_patch``, ``dynamic_image_size``,
    ``use_thumbnail``, ``vision_config.image_size`` / ``patch_size``, ``downsample_ratio``)."""

    family: ClassVar[str] = "internvl_chat"
    model_types: ClassVar[tuple[str, ...]] = ("internvl_chat",)
    processor_classes: ClassVar[tuple[str, ...]] = ()
    needs_processor_config: ClassVar[bool] = False

    use_thumbnail: bool = True
    image_resample: str = "pil-bicubic"
    video_resample: str = "pil-bicubic"

    def image_views(self, height: int, width: int, options: RequestOptions) -> list[ImageView]:
        th, tw = self.tile_size
        cols, rows = chat_tile_grid(height, width, tw, self.min_patches, self.max_patches)
        if cols * rows == 1:
            return [ImageView(self.tile_size)]
        canvas = (rows * th, cols * tw)
        views = [ImageView(canvas, tile=(r * th, c * tw, th, tw)) for r in range(rows) for c in range(cols)]
        return [*views, ImageView(self.tile_size)] if self.use_thumbnail else views

    @classmethod
    def from_model_folder(cls, model_type: str, image: Mapping[str, Any], video: Mapping[str, Any] | None,
                          model: Mapping[str, Any]) -> InternVLChatConfig:
        vision = model.get("vision_config") or {}
        side = vision.get("image_size") or model.get("force_image_size") or 448
        side = int(side[0] if isinstance(side, list) else side)
        patch = vision.get("patch_size") or 14
        patch = int(patch[0] if isinstance(patch, list) else patch)
        dynamic = bool(model.get("dynamic_image_size", True))
        return cls(
            tile_size=(side, side),
            min_patches=int(model.get("min_dynamic_patch", 1)) if dynamic else 1,
            max_patches=int(model.get("max_dynamic_patch", 12)) if dynamic else 1,
            use_thumbnail=bool(model.get("use_thumbnail", True)),
            image_seq_length=int((side // patch) ** 2 * float(model.get("downsample_ratio", 0.5)) ** 2),
        )


register_family(InternVLChatConfig, InternVLFeatures, preprocessor_name="InternVLChatPreprocessor")


@functools.lru_cache(maxsize=256)
def tile_grid(height: int, width: int, tile_h: int, tile_w: int, min_tiles: int, max_tiles: int) -> tuple[int, int]:
    """(columns, rows) of tiles for a ``height`` x ``width`` image: transformers' ``get_optimal_tiled_canvas``
    (closest aspect ratio; on a tie, the later grid in (tiles, columns) order while the image's area exceeds half
    of that grid's)."""
    grids = sorted(((c, r) for c in range(1, max_tiles + 1) for r in range(1, max_tiles + 1)
                    if min_tiles <= c * r <= max_tiles), key=lambda g: g[0] * g[1])
    return _closest_grid(grids, height, width, tile_h * tile_w)


@functools.lru_cache(maxsize=256)
def chat_tile_grid(height: int, width: int, tile: int, min_tiles: int, max_tiles: int) -> tuple[int, int]:
    """(columns, rows) of tiles as InternVL's own code picks them (``find_closest_aspect_ratio`` over
    ``get_internvl_target_ratios``, as vLLM has them): :func:`tile_grid`'s rule over the same grids, taken in that
    code's order (a set sorted by tile count; for grids of equal count with equally close ratios the order decides,
    and CPython iterates a set of small-int pairs the same way in every process)."""
    grids = sorted({(i, j) for n in range(min_tiles, max_tiles + 1) for i in range(1, n + 1) for j in range(1, n + 1)
                    if min_tiles <= i * j <= max_tiles}, key=lambda g: g[0] * g[1])
    return _closest_grid(grids, height, width, tile * tile)


def _closest_grid(grids: list[tuple[int, int]], height: int, width: int, tile_area: int) -> tuple[int, int]:
    """The (columns, rows) of ``grids`` whose aspect ratio is closest to the image's; on a tie, the later one while
    the image's area exceeds half of that grid's (InternVL's rule, which both orders of ``grids`` share)."""
    aspect, area = width / height, width * height
    best, best_diff = (1, 1), float("inf")
    for cols, rows in grids:
        diff = abs(aspect - cols / rows)
        if diff < best_diff:
            best, best_diff = (cols, rows), diff
        elif diff == best_diff and area > 0.5 * tile_area * cols * rows:
            best = (cols, rows)
    return best


def sample_indices(total: int, num: int) -> list[int]:
    """``InternVLVideoProcessor.sample_frames``: ``num`` frames, each from the middle of one of ``num`` equal spans
    (its float32 arithmetic, via torch).

    Raises:
        ValueError: ``num`` is under 1 or more than the clip's frames.
    """
    if num < 1 or num > total:
        raise ValueError(f"cannot sample {num} frames from a clip of {total}")
    return torch.arange(total / num / 2, total, total / num).int().tolist()
