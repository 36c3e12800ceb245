"""The engine plug-ins' settings: :class:`gpu_mm.Settings` read from ``GPU_MM_*`` variables (the table in
``docs/configuration.md``), shared by the SGLang and vLLM plug-ins and kept apart from them so that a plug-in's
processor module and its installer both import them without importing each other."""

from __future__ import annotations

from typing import Any

from ..settings import Settings

__all__ = ["PluginSettings", "install_settings", "settings"]

PluginSettings = Settings
"""The name the plug-ins' settings had before :class:`gpu_mm.Settings`; the same class."""

_installed: Settings | None = None


def settings() -> Settings:
    """The settings a processor built now uses: those given to ``install``, else the environment's."""
    return _installed if _installed is not None else Settings.from_env()


def install_settings(options: dict[str, Any]) -> Settings:
    """Fix the settings processors built from now on use: ``options`` over the environment's."""
    global _installed
    _installed = Settings.from_env(**options)
    return _installed
