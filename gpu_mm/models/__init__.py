"""The registry of model families: by name and by transformers ``model_type``.

Every module in this package (besides ``base``) is a family and registers itself when imported; the
registry imports them all on its first lookup, so adding a family is adding one file here.
"""

from __future__ import annotations

import importlib
import pkgutil
import threading
from typing import Any

__all__ = ["family_names", "get_family", "register_family"]

_FAMILIES: dict[str, type[Any]] = {}
_lock = threading.RLock()
_discovered = False


def register_family(preprocessor: type[Any]) -> type[Any]:
    """Register a :class:`gpu_mm.pipeline.Preprocessor` subclass under its spec's ``family`` name and
    ``model_types`` (usable as a class decorator). A name already taken by another class is refused."""
    spec = preprocessor.config_class
    names = dict.fromkeys((spec.family, *spec.model_types, *spec.processor_classes))
    with _lock:
        for name in names:
            held = _FAMILIES.get(name)
            if held is not None and held is not preprocessor:
                raise ValueError(f"model family {name!r} is already registered to {held.__qualname__}")
        for name in names:
            _FAMILIES[name] = preprocessor
    return preprocessor


def _discover() -> None:
    global _discovered
    with _lock:
        if _discovered:
            return
        for module in pkgutil.iter_modules(__path__):
            if module.name != "base" and not module.name.startswith("_"):
                importlib.import_module(f"{__name__}.{module.name}")
        _discovered = True


def get_family(name: str) -> type[Any]:
    """The preprocessor class of a family name, a transformers ``model_type`` (``qwen2_5_vl``,
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
