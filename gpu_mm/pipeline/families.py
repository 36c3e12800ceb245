"""Each registered model family's preprocessor class (``Qwen2VLPreprocessor``, ...): a :class:`Preprocessor`
naming the family's spec and features, made from the registry's data (:mod:`gpu_mm.models`;
:func:`preprocessor_class`), so that a family module imports nothing of the pipeline. The classes are made once
each and importable by name from this module (pickle finds them here)."""

from __future__ import annotations

from typing import Any

from ..models import family_names, get_family
from .preprocessor import _class_of, preprocessor_class

__all__ = ["Gemma3Preprocessor", "Glm46VPreprocessor", "Glm4vPreprocessor", "InternVLChatPreprocessor",
           "InternVLPreprocessor", "Qwen2VLPreprocessor", "Qwen2_5OmniPreprocessor", "Qwen3OmniPreprocessor",
           "Qwen3VLPreprocessor", "preprocessor_class"]

def __getattr__(name: str) -> Any:
    """A family's preprocessor class by its name (``from gpu_mm.pipeline.families import Qwen3VLPreprocessor``)."""
    for key in family_names():
        family = get_family(key)
        if family.preprocessor_name == name:
            return _class_of(family)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


Qwen2VLPreprocessor = preprocessor_class("qwen2_vl")
Qwen3VLPreprocessor = preprocessor_class("qwen3_vl")
Glm4vPreprocessor = preprocessor_class("glm4v")
Glm46VPreprocessor = preprocessor_class("glm46v")
InternVLPreprocessor = preprocessor_class("internvl")
InternVLChatPreprocessor = preprocessor_class("internvl_chat")
Gemma3Preprocessor = preprocessor_class("gemma3")
Qwen2_5OmniPreprocessor = preprocessor_class("qwen2_5_omni")
Qwen3OmniPreprocessor = preprocessor_class("qwen3_omni_moe")
