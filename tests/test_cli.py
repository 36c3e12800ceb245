"""The ``gpu-mm`` command: ``preprocess`` reports per item and fails with a non-zero code on bad input."""

from __future__ import annotations

import json
import re

from gpu_mm.cli import main

from media_helpers import clip, make_image


def test_preprocess_json_reports_grid_tokens_decoder_and_frames(tmp_path, capsys):
    img, vid = tmp_path / "a.jpg", tmp_path / "b.mp4"
    img.write_bytes(make_image(480, 640, "JPEG"))
    vid.write_bytes(clip("h264", 48))
    assert main(["preprocess", str(img), str(vid), "--json", "--device", "cpu"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows[0]["grid_thw"] == [1, 34, 46] and rows[0]["tokens"] == 391 and rows[0]["shape"] == [1564, 1176]
    assert rows[1]["kind"] == "video" and rows[1]["frame_indices"] == [0, 16, 31, 47]
    # A lone video borrows the idle cores for its keyframe runs (one decoder on a single core).
    assert re.fullmatch(r"pyav(, [2-4] keyframe runs at once)?", rows[1]["decoder"]), rows[1]["decoder"]
    assert set(rows[1]["timings_ms"]) >= {"decode", "resize"}


def test_preprocess_bad_input_exits_non_zero_naming_the_item(tmp_path, capsys):
    bad = tmp_path / "notes.txt"
    bad.write_text("hello")
    assert main(["preprocess", str(bad), "--device", "cpu"]) == 1
    assert "notes.txt" in capsys.readouterr().err


def test_preprocess_for_a_family_with_request_options(tmp_path, capsys):
    vid = tmp_path / "b.mp4"
    vid.write_bytes(clip("h264", 48))
    assert main(["preprocess", str(vid), "--json", "--device", "cpu", "--model", "qwen3_vl", "--nframes", "5"]) == 0
    row = json.loads(capsys.readouterr().out)[0]
    assert row["frame_indices"] == [0, 12, 24, 35, 47]  # Qwen3-VL's rule: 5 frames, the odd one padded
    assert row["grid_thw"][0] == 3 and row["shape"][1] == 3 * 2 * 16 * 16


def test_preprocess_refuses_a_bad_option_or_model_before_reading_media(tmp_path, capsys):
    assert main(["preprocess", "x.mp4", "--device", "cpu", "--fps", "-1"]) == 2
    assert "fps" in capsys.readouterr().err
    assert main(["preprocess", "x.mp4", "--device", "cpu", "--model", "llava"]) == 2
    assert "llava" in capsys.readouterr().err


def test_serve_runs_slot_threads_idle_unless_told_not_to(monkeypatch):
    """``gpu-mm serve`` puts its slot threads on SCHED_IDLE by default (where they can leave it again);
    ``--no-idle-workers`` keeps the normal policy."""
    import gpu_mm.serve

    seen = []
    monkeypatch.setattr(gpu_mm.serve, "run", lambda settings, **kw: seen.append(settings.idle_workers))
    assert main(["serve"]) == 0 and main(["serve", "--no-idle-workers"]) == 0 and main(["serve", "--idle-workers"]) == 0
    assert seen == [True, False, True]


def test_serve_chooses_slot_processes_on_the_cpu_unless_told(monkeypatch):
    import gpu_mm.serve

    seen = []
    monkeypatch.setattr(gpu_mm.serve, "run",
                        lambda settings, **kw: seen.append((settings.workers, settings.stop_abandoned_after_s)))
    assert main(["serve"]) == 0 and main(["serve", "--workers", "threads"]) == 0
    assert main(["serve", "--workers", "processes", "--stop-abandoned-after-s", "none"]) == 0
    # auto: gpu_mm._procslots.choose_workers at build time
    assert seen == [("auto", 30.0), ("threads", 30.0), ("processes", None)]


def test_serve_reads_in_small_chunks_unless_told(monkeypatch):
    import gpu_mm.serve

    seen = []
    monkeypatch.setattr(gpu_mm.serve, "run", lambda settings, **kw: seen.append(settings.read_chunk_bytes))
    assert main(["serve"]) == 0 and main(["serve", "--read-chunk-kb", "0"]) == 0
    assert seen == [65536, 0]


def test_serve_sets_a_short_switch_interval_unless_told(monkeypatch):
    import gpu_mm.serve

    seen = []
    monkeypatch.setattr(gpu_mm.serve, "run", lambda settings, **kw: seen.append(settings.switch_interval_s))
    assert main(["serve"]) == 0 and main(["serve", "--switch-interval-ms", "0"]) == 0
    assert main(["serve", "--switch-interval-ms", "0.2"]) == 0
    assert seen == [5e-4, None, 2e-4]  # 0: Python's own left alone


def test_image_decoder_reaches_the_preprocessor_and_is_checked_before_any_media(tmp_path, capsys, monkeypatch):
    import gpu_mm.serve

    img = tmp_path / "a.jpg"
    img.write_bytes(make_image(64, 96, "JPEG"))
    assert main(["preprocess", str(img), "--json", "--device", "cpu", "--image-decoder", "cpu"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["decoder"].startswith("cpu")
    assert main(["preprocess", str(img), "--device", "cpu", "--image-decoder", "nvjpeg"]) == 2
    assert "needs a CUDA device" in capsys.readouterr().err
    seen = []
    monkeypatch.setattr(gpu_mm.serve, "run", lambda settings, **kw: seen.append(settings.image_decoder))
    assert main(["serve", "--image-decoder", "cpu"]) == 0 and seen == ["cpu"]


def test_bench_prints_the_hostile_step_beside_its_floors(capsys):
    from gpu_mm.cli import _print_hostile

    run = {"gpu_mm": {"answers": 7000}, "floor": {}, "floor_work": {}}
    _print_hostile({"p99_ms": {"gpu_mm": 6.0, "floor": 2.0, "floor_work": 4.0}, "runs": [run, run, run],
                    "clients": 8, "seconds": 10, "slot_processes": 3})
    out = capsys.readouterr().out
    assert "8 clients send hostile requests (10 s, median of 3" in out
    assert "gpu-mm serve" in out and "6.0 ms   (7000 answers)" in out
    assert "paced to the same rate" in out and "2.0 ms" in out
    assert "(3 processes)" in out and "4.0 ms   (gpu-mm serve: 1.50x)" in out


def test_preprocess_audio_files_and_a_videos_own_track_for_an_omni_family(tmp_path, capsys):
    from gpu_mm.media.synth import make_audio, make_video

    song, film = tmp_path / "a.flac", tmp_path / "b.mp4"
    song.write_bytes(make_audio(3.0, 44100, codec="flac", fmt="flac"))
    film.write_bytes(make_video(60, 64, 96, audio_rate=48000))
    assert main(["preprocess", str(song), str(film), "--json", "--device", "cpu", "--model", "qwen2_5_omni",
                 "--use-audio-in-video"]) == 0
    rows = json.loads(capsys.readouterr().out)
    want = [(str(song), "audio"), (str(film), "video"), (str(film), "audio")]
    assert [(r["source"], r["kind"]) for r in rows] == want
    assert rows[0]["grid_thw"] == [1, 128, 300] and rows[0]["tokens"] == 75 and rows[0]["shape"] == [1, 128, 30000]
    assert abs(rows[2]["seconds"] - 2.0) < 0.05
    assert main(["preprocess", str(song), "--device", "cpu"]) == 1  # qwen2_vl takes no audio
    assert "takes no audios" in capsys.readouterr().err
