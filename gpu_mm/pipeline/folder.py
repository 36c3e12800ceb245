"""Reading a model folder's processor configs, in either layout transformers writes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def _read_json(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    with path.open(encoding="utf-8") as f:
        value = json.load(f)
    if not isinstance(value, dict):
        raise ValueError(f"{path} is not a JSON object")
    return value


def _processor_configs(folder: Path, required: bool = True) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """A model folder's image and video processor configs, in either layout transformers writes (without
    ``required``, an empty image config where the folder has none). A feature extractor's settings are read with
    the image config, as a published model's ``preprocessor_config.json`` holds both."""
    nested = _read_json(folder / "processor_config.json") or {}
    image = _read_json(folder / "preprocessor_config.json")
    video = _read_json(folder / "video_preprocessor_config.json")
    image = nested.get("image_processor") if image is None else image
    video = nested.get("video_processor") if video is None else video
    if not isinstance(image, dict) and not required:
        image = {}
    if not isinstance(image, dict):
        raise FileNotFoundError(f"{folder} holds no image processor config (preprocessor_config.json or "
                                "processor_config.json): from_pretrained needs a local model folder")
    # The processor's own settings (processor_class, a per-image token count such as image_seq_length) go with
    # the image config; the image processor's keys win.
    # A feature extractor's settings (an Omni model's audio front end) go with it too, under the processor's.
    extractor = nested.get("feature_extractor")
    extractor = {k: v for k, v in extractor.items() if not isinstance(v, (dict, list))} if isinstance(
        extractor, dict) else {}
    image = {**extractor, **{k: v for k, v in nested.items() if not isinstance(v, (dict, list))}, **image}
    return image, video if isinstance(video, dict) else None


def _model_type_from(image: dict[str, Any], video: dict[str, Any] | None) -> str:
    """A model folder without ``config.json``: the processor class its configs name (families register
    those too)."""
    for cfg in (image, video or {}):
        if isinstance(cfg.get("processor_class"), str):
            return str(cfg["processor_class"])
    raise KeyError("the folder has no config.json and its preprocessor configs name no processor class")
