"""The registry of model families: by name, by transformers ``model_type`` and by processor class name.

Every module in this package (besides ``base``) is a family: its spec (a :class:`gpu_mm.models.base.ModelSpec`)
and its features class, registered when the module is imported. The registry imports them all on its first
lookup, so adding a family is adding one file here. A family is data: the pipeline makes its preprocessor class
(:func:`gpu_mm.pipeline.families.preprocessor_class`).
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
import threading
from typing import Any

__all__ = ["Family", "family_names", "get_family", "register_family"]


@dataclasses.dataclass(frozen=True)
class Family:
    """A model family as the pipeline needs it."""

    config_class: type[Any]
    """Its spec: a frozen dataclass subclassing :class:`gpu_mm.models.base.ModelSpec`."""
    features_class: type[Any]
    """What its calls return: a :class:`gpu_mm.features.Features` subclass."""
    preprocessor_name: str
    """The name of its preprocessor class (``Qwen2VLPreprocessor``), made by the pipeline."""

    @property
    def name(self) -> str:
        return str(self.config_class.family)


_FAMILIES: dict[str, Family] = {}
_lock = threading.RLock()
_discovered = False


def register_family(config_class: type[Any], features_class: type[Any], *, preprocessor_name: str) -> Family:
    """Register a family under its spec's ``family`` name, ``model_types`` and ``processor_classes``. A name
    already taken by another family is refused."""
    family = Family(config_class, features_class, preprocessor_name)
    names = dict.fromkeys((config_class.family, *config_class.model_types, *config_class.processor_classes))
    with _lock:
        for name in names:
            held = _FAMILIES.get(name)
            if held is not None and held != family:
                raise ValueError(f"model family {name!r} is already registered to {held.preprocessor_name}")
        for name in names:
            _FAMILIES[name] = family
    return family


def _discover() -> None:
    global _discovered
    with _lock:
        if _discovered:
            return
        for module in pkgutil.iter_modules(__path__):
            if module.name != "base" and not module.name.startswith("_"):
                importlib.import_module(f"{__name__}.{module.name}")
        _discovered = True


def get_family(name: str) -> Family:
    """The family of a family name, a transformers ``model_type`` (``qwen2_5_vl``,
    ``qwen3_vl_moe``) or a transformers processor class name (``Qwen3VLProcessor``).

    Raises:
        KeyError: no family has that name; the message lists the known ones.
    """
    _discover()
    try:
        return _FAMILIES[name]
    except KeyError:
        raise KeyError(f"no model family {name!r}; known: {family_names()}") from None


def family_names() -> list[str]:
    """Every registered name and model type."""
    _discover()
    return sorted(_FAMILIES)
