"""The SGLang plug-in's settings: GPU_MM_* variables and install() keywords (no sglang import needed)."""

from __future__ import annotations

import pytest

from gpu_mm.integrations.sglang import PluginSettings


def test_defaults_without_variables():
    assert PluginSettings.from_env({}) == PluginSettings()
    assert PluginSettings().device == "auto" and PluginSettings().timeout_s is None


def test_every_field_has_a_variable():
    env = {"GPU_MM_DEVICE": "cpu", "GPU_MM_VIDEO_DECODER": "pyav", "GPU_MM_IMAGE_DECODER": "cpu",
           "GPU_MM_MAX_CONCURRENT_CALLS": "8", "GPU_MM_MAX_QUEUED": "16", "GPU_MM_TIMEOUT_S": "2.5",
           "GPU_MM_NUM_SLOTS": "2", "GPU_MM_MEMORY_BUDGET_MB": "1.5", "GPU_MM_CACHE_MB": "0",
           "GPU_MM_WORKERS": "processes", "UNRELATED": "x"}
    s = PluginSettings.from_env(env)
    assert s == PluginSettings(device="cpu", video_decoder="pyav", image_decoder="cpu", max_concurrent_calls=8,
                               max_queued=16, timeout_s=2.5, num_slots=2, memory_budget_bytes=3 * 2**19, cache_bytes=0,
                               workers="processes")


def test_empty_variable_means_default():
    assert PluginSettings.from_env({"GPU_MM_TIMEOUT_S": ""}).timeout_s is None


@pytest.mark.parametrize("name, value", [("GPU_MM_TIMEOUT_S", "soon"), ("GPU_MM_NUM_SLOTS", "2.5"),
                                         ("GPU_MM_MEMORY_BUDGET_MB", "lots")])
def test_bad_value_names_the_variable(name, value):
    with pytest.raises(ValueError, match=name):
        PluginSettings.from_env({name: value})
