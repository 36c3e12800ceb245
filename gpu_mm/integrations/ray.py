"""Preprocess media datasets on a Ray cluster with gpu-mm workers (``pip install 'gpu-mm[ray]'``).

``preprocess_dataset(inputs, output)`` reads files as bytes (``ray.data.read_binary_files``: Ray's own image
and video readers would decode them itself), runs :class:`GpuMMWorker` actors over them
(``map_batches`` with an actor pool; fractional ``num_gpus`` lets several share a card) and writes Parquet.
One row per input file; a file gpu-mm cannot preprocess becomes a row whose ``error`` names the item and the
reason (its typed error), never a failed job. A second run over the same output skips the files already
written, by content hash.

Layout of each row (plain Parquet types, readable without Ray):

- ``path``, ``content_hash`` (sha256 of the file's bytes), ``kind`` (image | video | audio: audio files are listed
  for the Omni families), ``model`` (family),
- ``features``: the item's feature rows as little-endian float32 bytes, ``features_shape`` ([rows, width]):
  ``np.frombuffer(features, "<f4").reshape(features_shape)`` is exactly what gpu-mm returns. (Ray's tensor
  extension types change between fixed and variable shape from block to block, which plain Parquet readers
  then refuse to read as one table; raw bytes with a shape are exact and portable.) An audio file's features are
  its ``input_features`` ([mel bins, frames], padded as the family pads one clip), ``grid_thw`` [1, bins, valid
  frames] (the attention mask: that many ones, then zeros).
- ``grid_thw``, ``frame_indices``, ``video_fps``, ``sample_fps``, ``second_per_grid_ts`` (Qwen2-VL family)
  or ``timestamps`` (Qwen3-VL: seconds per temporal step),
- ``error``: ``"<ErrorType>: <message>"`` or null.

``manifest.json`` beside the Parquet files lists the counts and every failure.
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import GpuMMError, MediaError
from ..media.sources import AUDIO_SUFFIXES, IMAGE_SUFFIXES, VIDEO_SUFFIXES, kind_of_path
from ..options import RequestOptions
from ..pipeline import Preprocessor

__all__ = ["AUDIO_SUFFIXES", "COLUMNS", "GpuMMWorker", "MEDIA_SUFFIXES", "Summary", "preprocess_dataset"]

MEDIA_SUFFIXES = VIDEO_SUFFIXES | IMAGE_SUFFIXES
"""Listed for every family; :data:`AUDIO_SUFFIXES` too for families that take audio (the Omni families)."""
COLUMNS = ("path", "content_hash", "kind", "model", "features", "features_shape", "grid_thw", "frame_indices",
           "video_fps", "sample_fps", "second_per_grid_ts", "timestamps", "error")


def schema() -> Any:
    """The Parquet schema of the rows."""
    import pyarrow as pa

    ints, floats = pa.list_(pa.int64()), pa.list_(pa.float64())
    return pa.schema([("path", pa.string()), ("content_hash", pa.string()), ("kind", pa.string()),
                      ("model", pa.string()), ("features", pa.binary()), ("features_shape", ints),
                      ("grid_thw", ints), ("frame_indices", ints), ("video_fps", pa.float64()),
                      ("sample_fps", pa.float64()), ("second_per_grid_ts", pa.float64()), ("timestamps", floats),
                      ("error", pa.string())])


def content_hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class GpuMMWorker:
    """One Ray actor's preprocessor (built once per actor): a batch of files in (``bytes``, ``path``), one
    row per file out (see the module's layout)."""

    def __init__(self, model: str = "qwen2_vl", device: str = "auto", options: dict[str, Any] | None = None,
                 preprocessor_kwargs: dict[str, Any] | None = None) -> None:
        # One item at a time on this actor's thread: no feature cache (each file once), no express slot. The actor
        # holds the CPUs Ray gave it, not the node's: no threads lent to a video's keyframe runs unless asked
        # (preprocess_dataset lends those of cpus_per_worker beyond the first).
        kwargs = {"cache_bytes": 0, "decode_threads": 0, **(preprocessor_kwargs or {})}
        self.pre = Preprocessor.for_model(model, device=device, **kwargs)
        self.model = self.pre.config.family
        self.options = RequestOptions.parse(options)

    def __call__(self, batch: dict[str, Any]) -> Any:
        import pyarrow as pa

        out: dict[str, list[Any]] = {name: [] for name in COLUMNS}
        for data, path in zip(batch["bytes"], batch["path"]):
            for name, value in self.row(bytes(data), str(path)).items():
                out[name].append(value)
        # One explicit schema for every block, so that the Parquet files of a run (and of later runs) read
        # back as one table whatever mix of images, videos and failures each block held.
        return pa.Table.from_pydict(out, schema=schema())

    def row(self, data: bytes, path: str) -> dict[str, Any]:
        """The row of one file (what the dataset holds for it)."""
        kind = kind_of_path(path)
        row: dict[str, Any] = {name: None for name in COLUMNS}
        row.update(path=path, content_hash=content_hash(data), kind=kind, model=self.model)
        try:
            feats = self.pre(**{f"{kind}s": [data]}, options=self.options)
        except GpuMMError as exc:
            why = exc.reason if isinstance(exc, MediaError) else str(exc)
            row.update(error=f"{type(exc).__name__}: {path}: {why}", features=b"",
                       features_shape=[0, self.pre.config.row_size])
            return row
        # An audio file's row: its input_features (mel bins x padded frames, as the family's processor pads a
        # clip alone); its grid_thw says the valid frames (the feature_attention_mask's ones come first).
        pixels = {"image": feats.pixel_values, "video": feats.pixel_values_videos,
                  "audio": getattr(feats, "input_features", None)}[kind]
        array = pixels.detach().to("cpu").numpy().astype("<f4", copy=False)
        if kind == "audio":
            array = array[0]
        item = feats.items[0]
        row.update(features=array.tobytes(), features_shape=list(array.shape), grid_thw=list(item.grid_thw),
                   frame_indices=item.frame_indices, video_fps=item.video_fps, sample_fps=item.sample_fps)
        if kind == "video":
            spgt = getattr(feats, "second_per_grid_ts", None)
            stamps = getattr(feats, "video_timestamps", None)
            row["second_per_grid_ts"] = spgt[0] if spgt else None
            row["timestamps"] = stamps[0] if stamps else None
        return row


def features_of(row: dict[str, Any]) -> np.ndarray:
    """A row's feature rows as the float32 array gpu-mm returned."""
    return np.frombuffer(row["features"], dtype="<f4").reshape(row["features_shape"])


@dataclasses.dataclass(frozen=True)
class Summary:
    """What one :func:`preprocess_dataset` run did."""

    inputs: int
    skipped: int
    """Already in the output (same content), not processed again."""
    written: int
    failed: int
    """Rows of this run whose ``error`` is set."""
    seconds: float
    manifest: str


def list_inputs(inputs: str | Sequence[str], *, audio: bool = False) -> list[str]:
    """Media files named by a glob, a directory (searched recursively) or a list of either (audio files too with
    ``audio``)."""
    suffixes = MEDIA_SUFFIXES | AUDIO_SUFFIXES if audio else MEDIA_SUFFIXES
    found: list[str] = []
    for entry in [inputs] if isinstance(inputs, str) else list(inputs):
        if os.path.isdir(entry):
            paths = glob.glob(os.path.join(entry, "**", "*"), recursive=True)
        else:
            paths = glob.glob(entry, recursive=True) or ([entry] if os.path.isfile(entry) else [])
        found += [p for p in paths if os.path.isfile(p) and Path(p).suffix.lower() in suffixes]
    return sorted(set(found))


def takes_audio(model: str) -> bool:
    """Whether ``model`` (a family name, model type or local folder) is of a family that takes audio."""
    from ..models import get_family
    from ..pipeline.folder import _read_json

    name = model
    if os.path.isdir(model):
        name = str((_read_json(Path(model) / "config.json") or {}).get("model_type", ""))
    try:
        return "audio" in get_family(name).config_class.modalities
    except KeyError:
        return False


def written_hashes(output: str) -> set[str]:
    """Content hashes of the rows already in ``output`` (empty when there is none)."""
    import pyarrow.parquet as pq

    files = sorted(glob.glob(os.path.join(output, "*.parquet")))
    if not files:
        return set()
    return {h for f in files for h in pq.read_table(f, columns=["content_hash"]).column(0).to_pylist()}


def preprocess_dataset(
    inputs: str | Sequence[str],
    output: str,
    *,
    model: str = "qwen2_vl",
    device: str = "auto",
    workers: int = 1,
    gpus_per_worker: float = 0.0,
    cpus_per_worker: float = 1.0,
    batch_size: int = 16,
    options: dict[str, Any] | None = None,
    preprocessor_kwargs: dict[str, Any] | None = None,
) -> Summary:
    """Preprocess every media file of ``inputs`` into Parquet files in ``output`` on the Ray cluster this
    process is connected to (``ray.init(...)`` first; :func:`gpu_mm.integrations.ray.connect` helps).

    ``workers`` actors, each with ``gpus_per_worker`` GPUs (fractions share a card: 0.25 puts four on one)
    and ``cpus_per_worker`` CPUs (those beyond the first decode a video's keyframe runs at once); files go to them
    ``batch_size`` at a time. Files whose content is already in
    ``output`` are skipped.
    """
    import ray

    t0 = time.monotonic()
    paths = list_inputs(inputs, audio=takes_audio(model))
    done = written_hashes(output)
    os.makedirs(output, exist_ok=True)
    todo = paths
    if done:
        todo = [p for p in paths if _hash_file(p) not in done]
    if todo:
        # Reading files is I/O: a quarter CPU per read task, so that actors holding every CPU do not starve
        # the reads that feed them (with 2 actors on 2 cores, whole-CPU reads deadlocked here).
        ds = ray.data.read_binary_files(todo, include_paths=True, num_cpus=0.25)
        ds = ds.map_batches(
            GpuMMWorker,
            fn_constructor_kwargs={"model": model, "device": device, "options": options,
                                   "preprocessor_kwargs": {"decode_threads": max(0, int(cpus_per_worker) - 1),
                                                           **(preprocessor_kwargs or {})}},
            compute=ray.data.ActorPoolStrategy(size=workers), num_gpus=gpus_per_worker or None,
            num_cpus=cpus_per_worker, batch_size=batch_size, batch_format="numpy",
        )
        before = set(glob.glob(os.path.join(output, "*.parquet")))
        ds.write_parquet(output)
        new_files = sorted(set(glob.glob(os.path.join(output, "*.parquet"))) - before)
    else:
        new_files = []
    written, failures = _read_back(new_files)
    manifest = _write_manifest(output, model, paths, len(paths) - len(todo), written, failures)
    return Summary(inputs=len(paths), skipped=len(paths) - len(todo), written=written, failed=len(failures),
                   seconds=time.monotonic() - t0, manifest=manifest)


def connect(address: str = "local", **init_kwargs: Any) -> None:
    """``ray.init`` for ``address``: ``local`` starts a cluster on this machine, ``auto`` joins the running one,
    anything else is a cluster address (``ray://host:10001``)."""
    import ray

    if ray.is_initialized():
        return
    if address == "local":
        # One logical CPU more than the cores: Ray Data reserves resources per operator, and with every core
        # held by a gpu-mm actor the read tasks feeding them waited forever (2 actors on 2 cores stalled).
        init_kwargs.setdefault("num_cpus", (os.cpu_count() or 1) + 1)
    init_kwargs.setdefault("include_dashboard", False)
    init_kwargs.setdefault("log_to_driver", False)
    ray.init(address=None if address == "local" else address, **init_kwargs)


def _hash_file(path: str) -> str:
    with open(path, "rb") as f:
        return content_hash(f.read())


def _read_back(files: list[str]) -> tuple[int, list[dict[str, str]]]:
    import pyarrow.parquet as pq

    written, failures = 0, []
    for f in files:
        table = pq.read_table(f, columns=["path", "error"]).to_pylist()
        written += len(table)
        failures += [{"path": r["path"], "error": r["error"]} for r in table if r["error"]]
    return written, failures


def _write_manifest(output: str, model: str, paths: list[str], skipped: int, written: int,
                    failures: list[dict[str, str]]) -> str:
    path = os.path.join(output, "manifest.json")
    previous: dict[str, Any] = {}
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            previous = json.load(f)
    all_failures = previous.get("failures", []) + failures
    manifest = {"model": model, "inputs": len(paths), "skipped_as_done": skipped, "written_this_run": written,
                "rows_total": previous.get("rows_total", 0) + written, "failed_total": len(all_failures),
                "failures": all_failures}
    with open(path, "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=2)
    return path
