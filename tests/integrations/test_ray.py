"""Media datasets on a local Ray cluster (this machine, one module-scoped cluster, small object store): the
Parquet rows equal calling gpu-mm directly, exactly; bad files land in the error column with their typed
error; a second run skips what is written; the CLI runs end to end."""

from __future__ import annotations

import glob
import json
import os

import numpy as np
import pytest

pytest.importorskip("ray")
pa_parquet = pytest.importorskip("pyarrow.parquet")

from gpu_mm import Qwen2VLPreprocessor, Qwen3VLPreprocessor  # noqa: E402
from gpu_mm.integrations import ray as gray  # noqa: E402

from media_helpers import clip, make_image  # noqa: E402

pytestmark = [pytest.mark.filterwarnings("ignore::DeprecationWarning:ray"),
              pytest.mark.filterwarnings("ignore::DeprecationWarning:pyarrow"),
              pytest.mark.filterwarnings("ignore::FutureWarning:ray")]


@pytest.fixture(scope="module")
def cluster():
    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=150 * 2**20, log_to_driver=False,
             configure_logging=False, _node_ip_address="127.0.0.1")
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    folder = tmp_path_factory.mktemp("media")
    files = {
        "a.jpg": make_image(100, 140, "JPEG"),
        "sub/b.png": make_image(64, 64, "PNG", seed=3),
        "c.mp4": clip("h264", 24, 64, 96),
        "d.webm": clip("vp9", 16, 64, 64),
        "bad.jpg": b"not an image" * 10,
        "cut.mp4": clip("h264", 24, 64, 96)[:500],
        "notes.txt": b"not media",
    }
    for name, data in files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return folder, files


def _rows(output):
    import pyarrow as pa

    tables = [pa_parquet.read_table(f) for f in sorted(glob.glob(os.path.join(output, "*.parquet")))]
    return pa.concat_tables(tables).to_pylist() if tables else []


@pytest.mark.slow
def test_rows_equal_gpu_mm_called_directly_and_bad_files_are_rows_not_failures(cluster, media, tmp_path):
    folder, files = media
    output = str(tmp_path / "out")
    summary = gray.preprocess_dataset(str(folder), output, device="cpu", batch_size=2)
    assert (summary.inputs, summary.written, summary.failed, summary.skipped) == (6, 6, 2, 0)
    rows = {os.path.basename(r["path"]): r for r in _rows(output)}
    assert set(rows) == {"a.jpg", "b.png", "c.mp4", "d.webm", "bad.jpg", "cut.mp4"}  # notes.txt is not media
    direct = Qwen2VLPreprocessor("cpu", cache_bytes=0)
    for name in ("a.jpg", "b.png"):
        feats = direct(images=[files[name if name != "b.png" else "sub/b.png"]])
        row = rows[name]
        assert row["error"] is None and row["kind"] == "image" and row["model"] == "qwen2_vl"
        assert np.array_equal(gray.features_of(row), feats.pixel_values.numpy())
        assert row["grid_thw"] == feats.image_grid_thw[0].tolist()
    for name in ("c.mp4", "d.webm"):
        feats = direct(videos=[files[name]])
        row = rows[name]
        assert np.array_equal(gray.features_of(row), feats.pixel_values_videos.numpy())
        assert row["frame_indices"] == feats.items[0].frame_indices
        assert row["second_per_grid_ts"] == pytest.approx(feats.second_per_grid_ts[0])
    assert rows["bad.jpg"]["error"].startswith("UnsupportedMedia: ") and "bad.jpg" in rows["bad.jpg"]["error"]
    assert rows["cut.mp4"]["error"].split(":")[0] in ("DecodeError", "UnsupportedMedia")
    with open(summary.manifest) as f:
        manifest = json.load(f)
    assert {os.path.basename(f["path"]) for f in manifest["failures"]} == {"bad.jpg", "cut.mp4"}


@pytest.mark.slow
def test_a_second_run_skips_what_is_written(cluster, media, tmp_path):
    folder, files = media
    output = str(tmp_path / "out")
    gray.preprocess_dataset(str(folder / "*.jpg"), output, device="cpu")
    again = gray.preprocess_dataset(str(folder), output, device="cpu")
    assert (again.skipped, again.written) == (2, 4)  # a.jpg and bad.jpg were done
    assert len(_rows(output)) == 6


@pytest.mark.slow
def test_qwen3_family_and_request_options(cluster, media, tmp_path):
    folder, files = media
    output = str(tmp_path / "out")
    gray.preprocess_dataset(str(folder / "c.mp4"), output, model="qwen3_vl", device="cpu", options={"nframes": 5})
    (row,) = _rows(output)
    feats = Qwen3VLPreprocessor("cpu", cache_bytes=0)(videos=[files["c.mp4"]], nframes=5)
    assert row["model"] == "qwen3_vl" and row["timestamps"] == feats.video_timestamps[0]
    assert np.array_equal(gray.features_of(row), feats.pixel_values_videos.numpy())


@pytest.mark.slow
def test_cli_end_to_end(cluster, media, tmp_path, capsys):
    from gpu_mm.cli import main

    folder, _ = media
    output = str(tmp_path / "out")
    assert main(["preprocess-dataset", str(folder / "*.png"), output, "--device", "cpu"]) == 0
    assert main(["preprocess-dataset", str(folder / "**" / "*.png"), output, "--device", "cpu"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[0].startswith("0 files") and out[1].startswith("1 files: 0 already done, 1 written (0 failed)")
    assert main(["preprocess-dataset", str(folder / "**" / "*.png"), output, "--device", "cpu"]) == 0
    assert "1 already done, 0 written" in capsys.readouterr().out


def test_an_omni_worker_writes_audio_rows_and_audio_files_are_listed_for_omni_families(tmp_path):
    """Without a cluster: the actor's row for an audio file holds the family's input_features for the clip alone,
    exactly, with the valid frames in grid_thw; audio files are listed only for families that take audio."""
    import torch

    from gpu_mm import Qwen2_5OmniPreprocessor
    from gpu_mm.media.synth import make_audio

    data = make_audio(2.5, 44100, codec="flac", fmt="flac")
    (tmp_path / "a.flac").write_bytes(data)
    (tmp_path / "b.jpg").write_bytes(make_image(64, 64, "JPEG"))
    row = gray.GpuMMWorker("qwen2_5_omni", device="cpu").row(data, str(tmp_path / "a.flac"))
    want = Qwen2_5OmniPreprocessor("cpu")(audios=[data])
    assert row["kind"] == "audio" and row["error"] is None
    assert torch.equal(torch.from_numpy(gray.features_of(row).copy()), want.input_features[0])
    assert row["grid_thw"] == [1, 128, int(want.feature_attention_mask[0].sum())]
    assert [os.path.basename(p) for p in gray.list_inputs(str(tmp_path), audio=gray.takes_audio("qwen2_5_omni"))] == [
        "a.flac", "b.jpg"]
    assert [os.path.basename(p) for p in gray.list_inputs(str(tmp_path), audio=gray.takes_audio("qwen2_vl"))] == [
        "b.jpg"]


def test_an_actor_lends_no_threads_unless_given_cpus_for_them():
    """An actor holds the CPUs Ray gave it, not the node's: its preprocessor lends a video's keyframe runs no threads
    by default, and the ones it is told to (preprocess_dataset: cpus_per_worker beyond the first)."""
    assert gray.GpuMMWorker("qwen2_vl", device="cpu").pre.concurrency.spare_threads == 0
    worker = gray.GpuMMWorker("qwen2_vl", device="cpu", preprocessor_kwargs={"decode_threads": 3})
    assert worker.pre.concurrency.spare_threads == 3
