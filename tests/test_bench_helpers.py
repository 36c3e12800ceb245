"""The benchmark scripts' shared summaries (``gpu_mm.bench.machine``): what the committed JSON says about runs."""

from __future__ import annotations

import json

import pytest

from gpu_mm.bench.machine import health_summary, write_runs


def test_health_summary_sorts_takes_medians_and_counts_runs_under_5_ms():
    rows = [{"p99_ms": 7.004, "max_ms": 12.0}, {"p99_ms": 4.9, "max_ms": 30.0}, {"p99_ms": 5.0, "max_ms": 8.0}]
    assert health_summary(rows) == {"p99_ms": [4.9, 5.0, 7.0], "max_ms": [8.0, 12.0, 30.0], "median_p99_ms": 5.0,
                                    "median_max_ms": 12.0, "runs_p99_under_5ms": 1}


def test_write_runs_names_the_machine_beside_summary_and_runs(tmp_path):
    path = write_runs(tmp_path / "new", "x_cpu.json", {"a": 1}, [{"arm": "a", "p99_ms": 1.0}])
    data = json.loads(path.read_text())
    assert path == tmp_path / "new" / "x_cpu.json"  # the folder made
    assert data["summary"] == {"a": 1} and data["runs"] == [{"arm": "a", "p99_ms": 1.0}]
    assert data["machine"]["cores"] >= 1 and "versions" in data["machine"]


def test_families_bench_times_both_sides_on_the_same_media_and_prints():
    """Each family's line has gpu-mm and its reference (the transformers processor; vLLM's own for InternVL's
    original checkpoints) on the same media, the ratio of the two and the outputs it made; the summary prints
    them."""
    import io
    from contextlib import redirect_stdout

    from gpu_mm.bench.families import families_bench
    from gpu_mm.cli import _print_families
    from gpu_mm.media.synth import make_image, make_video

    r = families_bench(make_image(120, 200, "JPEG"), make_video(20, 64, 96, fps=10), "cpu", 1)
    assert set(r) - {"internvl_chat"} == {"glm4v", "internvl", "gemma3"}
    assert set(r["glm4v"]) == {"image", "video"} and set(r["gemma3"]) == {"image"}
    for family, res in r.items():
        for v in res.values():
            ref = "vllm" if family == "internvl_chat" else "transformers"
            assert v["reference"] == ref and v["speedup_p50"] == v[ref]["p50_ms"] / v["gpu_mm"]["p50_ms"]
    assert r["internvl"]["video"]["frames"] == 16 and r["gemma3"]["image"]["outputs"][0] == 1
    out = io.StringIO()
    with redirect_stdout(out):
        _print_families(r)
    assert out.getvalue().count("transformers") >= 5


@pytest.mark.slow
def test_audio_bench_times_gpu_mm_and_both_transformers_paths_on_the_same_clips():
    import io
    from contextlib import redirect_stdout

    pytest.importorskip("transformers")
    from gpu_mm.bench.audio import audio_bench
    from gpu_mm.cli import _print_audio

    r = audio_bench("cpu", 1, batch=2)
    assert set(r) == {"60s", "batch2"} and r["batch2"]["clips"] == 2 and r["60s"]["seconds"] == 60.0
    for v in r.values():
        assert v["speedup_p50"] == v["transformers"]["p50_ms"] / v["gpu_mm"]["p50_ms"]
        assert v["speedup_numpy_p50"] == v["transformers_numpy"]["p50_ms"] / v["gpu_mm"]["p50_ms"]
    out = io.StringIO()
    with redirect_stdout(out):
        _print_audio(r)
    assert out.getvalue().count("gpu-mm") == 2


def test_node_service_counts_the_cuda_contexts_and_device_memory_of_its_processes():
    """benchmarks/node_service.py --device cuda: nvidia-smi's compute apps, parsed per pid (a process listed twice,
    one per context, summed); nothing where there is no nvidia-smi."""
    import importlib.util
    import pathlib

    path = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "node_service.py"
    spec = importlib.util.spec_from_file_location("node_service", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.gpu_apps("1234, 512\n5678, 1024\n[Not Supported]\n1234, 10\n") == {
        1234: 522 * 2**20, 5678: 1024 * 2**20}
    assert module.gpu_apps("") == {}
