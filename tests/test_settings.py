"""gpu_mm.Settings: the one set of settings every entry point builds from. Variables and flags parse to the same
fields in the same units, bad values name their variable, the documented table is the settings' own, and each
entry point takes what the settings say."""

from __future__ import annotations

import argparse
import dataclasses
import pathlib

import pytest

from gpu_mm.settings import Settings, table

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_defaults_without_variables_or_flags():
    parser = argparse.ArgumentParser()
    Settings.add_arguments(parser)
    assert Settings.from_env({}) == Settings() == Settings.from_args(parser.parse_args([]))
    s = Settings()
    assert (s.device, s.workers, s.timeout_s, s.max_body_bytes, s.switch_interval_s) == ("auto", "auto", 30.0,
                                                                                           64 * 2**20, 0.0005)


@pytest.mark.default_workers
@pytest.mark.parametrize("device", ["cpu", "cuda:0"], ids=["cpu-path", "gpu-path"])  # "cuda" would mark it
def test_the_library_and_the_server_default_alike(device, monkeypatch):
    """One set of defaults: a Preprocessor built in code gets what gpu-mm serve and the plug-ins get
    (Settings): slot processes and idle slots on the CPU, threads and the normal policy on CUDA. Nothing
    starts here (slots start on the first asynchronous call)."""
    from gpu_mm import Preprocessor
    from gpu_mm.pipeline import preprocessor

    monkeypatch.setattr(preprocessor, "resolve_device", lambda d: d)  # a CUDA preprocessor without a card
    monkeypatch.setattr(preprocessor, "choose_image_decoder", lambda d, device: "cpu")
    monkeypatch.setattr(preprocessor, "default_memory_budget", lambda device: 2**30)
    pre = Preprocessor.for_model("qwen2_vl", device=device, cache_bytes=0)
    settings = Settings(device=device)
    assert pre.workers == settings.resolved_workers(device) == ("processes" if device == "cpu" else "threads")
    assert pre.idle_workers is (settings.idle_workers and device == "cpu") is (device == "cpu")
    pre.close()


def test_every_plugin_setting_has_a_variable_in_its_unit():
    env = {"GPU_MM_DEVICE": "cpu", "GPU_MM_VIDEO_DECODER": "pyav", "GPU_MM_IMAGE_DECODER": "cpu",
           "GPU_MM_MAX_CONCURRENT_CALLS": "8", "GPU_MM_MAX_QUEUED": "16", "GPU_MM_TIMEOUT_S": "2.5",
           "GPU_MM_NUM_SLOTS": "2", "GPU_MM_MEMORY_BUDGET_MB": "1.5", "GPU_MM_CACHE_MB": "0",
           "GPU_MM_WORKERS": "processes", "GPU_MM_FAST_JPEG": "yes", "GPU_MM_IDLE_WORKERS": "0",
           "GPU_MM_STOP_ABANDONED_AFTER_S": "none", "UNRELATED": "x"}
    assert Settings.from_env(env) == Settings(
        device="cpu", video_decoder="pyav", image_decoder="cpu", max_concurrent_calls=8, max_queued=16, timeout_s=2.5,
        num_slots=2, memory_budget_bytes=3 * 2**19, cache_bytes=0, workers="processes", fast_jpeg=True,
        idle_workers=False, stop_abandoned_after_s=None)


def test_flags_parse_to_the_same_fields_as_variables():
    parser = argparse.ArgumentParser()
    Settings.add_arguments(parser)
    args = parser.parse_args(["--device", "cpu", "--memory-budget-mb", "1.5", "--cache-mb", "0", "--timeout-s", "none",
                              "--max-body-mb", "8", "--read-chunk-kb", "16", "--switch-interval-ms", "0",
                              "--no-idle-workers", "--fast-jpeg", "--allow-urls", "--port", "9000"])
    assert Settings.from_args(args) == Settings(
        device="cpu", memory_budget_bytes=3 * 2**19, cache_bytes=0, timeout_s=None, max_body_bytes=8 * 2**20,
        read_chunk_bytes=16 * 1024, switch_interval_s=None, idle_workers=False, fast_jpeg=True, allow_urls=True,
        port=9000)
    with pytest.raises(SystemExit):
        parser.parse_args(["--workers", "fibers"])


def test_empty_variable_means_default():
    assert Settings.from_env({"GPU_MM_TIMEOUT_S": " "}).timeout_s == Settings().timeout_s


@pytest.mark.parametrize("name, value", [("GPU_MM_TIMEOUT_S", "soon"), ("GPU_MM_NUM_SLOTS", "2.5"),
                                         ("GPU_MM_MEMORY_BUDGET_MB", "lots"), ("GPU_MM_FAST_JPEG", "maybe")])
def test_bad_value_names_the_variable(name, value):
    with pytest.raises(ValueError, match=name):
        Settings.from_env({name: value})


@pytest.mark.parametrize("fields", [{"workers": "fibers"}, {"timeout_s": 0}, {"num_slots": -1},
                                    {"max_concurrent_calls": 0}, {"max_body_bytes": 2**30},
                                    {"stop_abandoned_after_s": -1.0}, {"image_decoder": "gpu"}])
def test_invalid_settings_are_refused_once_with_the_field(fields):
    with pytest.raises(ValueError, match=next(iter(fields))):
        Settings(**fields)


def test_the_documented_table_is_the_settings_own():
    """docs/configuration.md holds gpu_mm.settings.table() verbatim: every field, flag, variable and default."""
    doc = (ROOT / "docs" / "configuration.md").read_text()
    assert table() in doc
    for f in dataclasses.fields(Settings):
        assert f"| `{f.name}` |" in table()


def test_what_the_preprocessor_and_the_processor_get():
    s = Settings(workers="auto", idle_workers=True, max_concurrent_calls=None)
    cpu, cuda = s.preprocessor_kwargs("cpu"), s.preprocessor_kwargs("cuda")
    assert cpu["workers"] == "processes" and cpu["idle_workers"] is True
    assert cuda["workers"] == "threads" and cuda["idle_workers"] is False  # SCHED_IDLE never applied on CUDA
    assert s.processor_kwargs() == {"max_concurrent_calls": None, "max_queued": None, "timeout_s": 30.0}


def test_the_plugins_take_installed_settings_over_the_environment(monkeypatch):
    from gpu_mm.integrations import _settings

    monkeypatch.setenv("GPU_MM_DEVICE", "cpu")
    monkeypatch.setenv("GPU_MM_TIMEOUT_S", "5")
    monkeypatch.setattr(_settings, "_installed", None)
    assert _settings.settings() == Settings(device="cpu", timeout_s=5.0)
    assert _settings.install_settings({"timeout_s": 9.0}) == Settings(device="cpu", timeout_s=9.0)
    assert _settings.settings().timeout_s == 9.0
