"""One frozen :class:`Settings` that every entry point builds from: ``gpu-mm serve``'s flags, the SGLang and vLLM
plug-ins' ``GPU_MM_*`` variables, and keywords in code. Validated once; documented once, as the table in
``docs/configuration.md`` (:func:`table` writes it; a test keeps the two equal)."""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
from collections.abc import Mapping
from typing import Any

__all__ = ["Settings", "table"]

MiB = 2**20


def _setting(default: Any, help: str, *, flag: str | None = None, env: str | None = None, unit: int = 1,
             choices: tuple[str, ...] | None = None) -> Any:
    """A field with where it is set from: ``flag`` (``gpu-mm serve``), ``env`` (the plug-ins), and ``unit``: the
    flag's and variable's value times ``unit`` is the field's (MiB for byte counts); ``unit=0``: milliseconds to
    seconds, 0 ms meaning None."""
    return dataclasses.field(default=default, metadata={"help": help, "flag": flag, "env": env, "unit": unit,
                                                        "choices": choices})


@dataclasses.dataclass(frozen=True)
class Settings:
    """How gpu-mm runs. Each field's default is the one every entry point uses; ``None`` means "chosen for the
    device and machine" where the field says so."""

    # -- the preprocessor
    device: str = _setting("auto", "auto (CUDA when available), cpu, cuda or cuda:N", flag="--device",
                           env="GPU_MM_DEVICE")
    video_decoder: str = _setting("auto", "auto (DALI/NVDEC on CUDA when installed, else PyAV), pyav, dali, "
                                  "dali-cpu, pynvvideocodec (NVDEC), decord, torchcodec; a codec the decoder "
                                  "lacks falls back to PyAV",
                                  flag="--video-decoder", env="GPU_MM_VIDEO_DECODER")
    image_decoder: str = _setting("auto", "JPEG decoder: auto (nvJPEG on CUDA), nvjpeg, nvimgcodec (batched; "
                                  "hardware JPEG engines on CUDA), cpu (libjpeg-turbo: transformers' decode of "
                                  "4:2:0 JPEGs)", flag="--image-decoder", env="GPU_MM_IMAGE_DECODER",
                                  choices=("auto", "nvjpeg", "nvimgcodec", "cpu"))
    workers: str = _setting("auto", "where a slot's pixel work runs: auto (a process of its own per slot on the "
                            "CPU, the slot's thread on CUDA), threads, processes (CPU only)", flag="--workers",
                            env="GPU_MM_WORKERS", choices=("auto", "threads", "processes"))
    num_slots: int | None = _setting(None, "device slots; None: chosen for the device and cores (CUDA 1)",
                                     flag="--slots", env="GPU_MM_NUM_SLOTS")
    memory_budget_bytes: int | None = _setting(None, "working memory of the items running at once (MiB); None: 8 "
                                               "GiB, or half the RAM / a quarter of the GPU's if less",
                                               flag="--memory-budget-mb", env="GPU_MM_MEMORY_BUDGET_MB", unit=MiB)
    cache_bytes: int | None = _setting(None, "feature cache by content (MiB); None: 1 GiB, or 1/16 of the RAM if "
                                       "less; 0: off", flag="--cache-mb", env="GPU_MM_CACHE_MB", unit=MiB)
    fast_jpeg: bool = _setting(False, "CPU: decode a JPEG at 1/2-1/8 scale when its target is at most half its size "
                               "(features then differ slightly from transformers')", flag="--fast-jpeg",
                               env="GPU_MM_FAST_JPEG")
    idle_workers: bool = _setting(True, "CPU: slot threads and processes on SCHED_IDLE, starvation-guarded, where a "
                                  "thread can leave it again (root or CAP_SYS_NICE); never applied on CUDA (not "
                                  "measured there)", flag="--idle-workers", env="GPU_MM_IDLE_WORKERS")
    stop_abandoned_after_s: float | None = _setting(30.0, "with slot processes: kill a job this long after all its "
                                                    "callers gave up, freeing its slot; None: never",
                                                    flag="--stop-abandoned-after-s",
                                                    env="GPU_MM_STOP_ABANDONED_AFTER_S")
    decode_threads: int | None = _setting(None, "threads lent to videos PyAV decodes beyond their slots' own: a "
                                          "video's keyframe runs then decode at once (same features); None: the "
                                          "cores no running slot job uses, taken as the video starts (at most "
                                          "cores - 1); N: at most N, whatever runs; 0: off",
                                          flag="--decode-threads", env="GPU_MM_DECODE_THREADS")
    # -- admission
    max_concurrent_calls: int | None = _setting(None, "requests in flight at once, abandoned ones included; None: "
                                                "32 (the vLLM video loader: decodes at once, the cores up to 8)",
                                                flag="--max-concurrent-calls", env="GPU_MM_MAX_CONCURRENT_CALLS")
    max_queued: int | None = _setting(None, "requests waiting beyond those (more: Overloaded, 503, at once); None: "
                                      "4 per request in flight", flag="--max-queued", env="GPU_MM_MAX_QUEUED")
    timeout_s: float | None = _setting(30.0, "per-request deadline from arrival, queue included (ProcessingTimeout, "
                                       "504); None: none", flag="--timeout-s", env="GPU_MM_TIMEOUT_S")
    service: str | None = _setting(None, "the plug-ins send their pixel work to this gpu-mm service (unix:///PATH "
                                   "or http://HOST:PORT, started with the plug-in's spec) instead of computing "
                                   "in-process", env="GPU_MM_SERVICE")
    # -- gpu-mm serve only
    model: str = _setting("qwen2_vl", "a family name, a transformers model_type, or a local model folder",
                          flag="--model")
    spec: str | None = _setting(None, "a JSON file of the family's exact settings (gpu_mm.models.base.spec_to_json; "
                                "GET /v1/config shows the one served), instead of --model's", flag="--spec")
    host: str = _setting("127.0.0.1", "address to listen on", flag="--host")
    port: int = _setting(8080, "port to listen on", flag="--port")
    uds: str | None = _setting(None, "also listen on this Unix domain socket (mode 0600: only this user may connect)",
                               flag="--uds")
    handle_blocks: int = _setting(16, "with --uds: blocks of features leased at once to the socket's clients "
                                  "(?format=handles; Overloaded, 503, beyond)", flag="--handle-blocks")
    handle_lease_s: float = _setting(60.0, "with --uds: the longest a client holds a leased block before it is "
                                     "reclaimed (also when the client's process ends)", flag="--handle-lease-s")
    max_upload_bytes: int = _setting(1024 * MiB, "with --uds: largest decoded image or video a client of the node "
                                     "hands over in shared memory (MiB; 400 beyond)", flag="--max-upload-mb", unit=MiB)
    max_body_bytes: int = _setting(64 * MiB, "largest request body (MiB; 413 beyond)", flag="--max-body-mb", unit=MiB)
    body_budget_bytes: int = _setting(512 * MiB, "request bodies being read or processed at once (MiB; 503 beyond)",
                                      flag="--body-budget-mb", unit=MiB)
    allow_urls: bool = _setting(False, "fetch http(s) URLs in requests (globally routable addresses only)",
                                flag="--allow-urls")
    allow_private_urls: bool = _setting(False, "with --allow-urls, private and loopback addresses too (for a "
                                        "trusted network)", flag="--allow-private-urls")
    allowed_local_media_path: str | None = _setting(None, "read local files named in requests, only below this "
                                                    "folder", flag="--allowed-local-media-path")
    read_chunk_bytes: int = _setting(64 * 1024, "at most this much per socket read of a request (KiB; 0: the "
                                     "event loop's own size)", flag="--read-chunk-kb", unit=1024)
    switch_interval_s: float | None = _setting(0.0005, "the interpreter's switch interval (ms; 0: Python's 5 ms)",
                                               flag="--switch-interval-ms", unit=0)
    loop_slice: bool = _setting(False, "ask Linux (6.12+) for a 0.1 ms time slice for the event loop's thread",
                                flag="--loop-slice")

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            choices = f.metadata["choices"]
            if choices is not None and getattr(self, f.name) not in choices:
                raise ValueError(f"{f.name} must be one of {list(choices)}, got {getattr(self, f.name)!r}")
        for name in ("num_slots", "max_queued", "memory_budget_bytes", "cache_bytes", "decode_threads"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"{name} must be >= 0 or None, got {value!r}")
        if self.max_concurrent_calls is not None and self.max_concurrent_calls < 1:
            raise ValueError(f"max_concurrent_calls must be >= 1 or None, got {self.max_concurrent_calls!r}")
        if self.stop_abandoned_after_s is not None and not self.stop_abandoned_after_s >= 0:
            raise ValueError(f"stop_abandoned_after_s must be >= 0 or None, got {self.stop_abandoned_after_s!r}")
        if self.timeout_s is not None and not self.timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0 or None, got {self.timeout_s!r}")
        if self.max_upload_bytes < 1:
            raise ValueError(f"max_upload_bytes must be >= 1, got {self.max_upload_bytes!r}")
        if self.handle_blocks < 1:
            raise ValueError(f"handle_blocks must be >= 1, got {self.handle_blocks!r}")
        if not self.handle_lease_s > 0:
            raise ValueError(f"handle_lease_s must be > 0, got {self.handle_lease_s!r}")
        if self.max_body_bytes > self.body_budget_bytes:
            raise ValueError(f"max_body_bytes={self.max_body_bytes} is over body_budget_bytes={self.body_budget_bytes}")

    # ------------------------------------------------------------------ sources

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """The ``GPU_MM_*`` variables set in ``environ`` (default: the process's), then ``overrides``.

        Raises:
            ValueError: a value that does not parse, naming the variable.
        """
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            name = f.metadata["env"]
            raw = env.get(name) if name else None
            if raw is None or raw.strip() == "":
                continue
            try:
                values[f.name] = _parse(f, raw.strip())
            except ValueError:
                raise ValueError(f"{name}={raw!r} is not a valid value for {f.name}") from None
        return cls(**{**values, **overrides})

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """Every field with a flag as an option of ``parser``, defaulting to the field's default."""
        for f in dataclasses.fields(cls):
            flag = f.metadata["flag"]
            if flag is None:
                continue
            kind = _kind(f)
            if kind is bool:
                parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=f.default,
                                    help=f.metadata["help"] + " (default: %(default)s)")
            else:
                default = f.default if f.default is None else _to_unit(f, f.default)
                parser.add_argument(flag, dest=f.name, default=default, metavar=flag.lstrip("-").upper(),
                                    choices=f.metadata["choices"], help=f.metadata["help"] + " (default: %(default)s)",
                                    type=functools.partial(_parse_unit, f))

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Settings:
        """The settings ``parser.parse_args()`` gave, for a parser :meth:`add_arguments` filled."""
        values = {}
        for f in dataclasses.fields(cls):
            if f.metadata["flag"] is None or not hasattr(args, f.name):
                continue
            value = getattr(args, f.name)
            values[f.name] = value if value is None or _kind(f) is bool else _from_unit(f, value)
        return cls(**values)

    # ------------------------------------------------------------------ what each part takes

    def resolved_workers(self, device: str) -> str:
        """``threads`` or ``processes`` for a resolved ``device``."""
        from ._procslots import choose_workers

        return choose_workers(self.workers, device)

    def preprocessor_kwargs(self, device: str) -> dict[str, Any]:
        """Keywords for :class:`gpu_mm.Preprocessor` on a resolved ``device``."""
        return dict(device=device, video_decoder=self.video_decoder, image_decoder=self.image_decoder,
                    workers=self.resolved_workers(device), num_slots=self.num_slots,
                    memory_budget_bytes=self.memory_budget_bytes, cache_bytes=self.cache_bytes,
                    fast_jpeg=self.fast_jpeg, idle_workers=self.idle_workers and device == "cpu",
                    stop_abandoned_after_s=self.stop_abandoned_after_s, decode_threads=self.decode_threads)

    def processor_kwargs(self) -> dict[str, Any]:
        """Keywords for :class:`gpu_mm.AsyncMMDataProcessor`."""
        return dict(max_concurrent_calls=self.max_concurrent_calls, max_queued=self.max_queued,
                    timeout_s=self.timeout_s)


def _kind(f: dataclasses.Field[Any]) -> type:
    t = str(f.type)
    for kind in (bool, int, float, str):
        if t.startswith(kind.__name__):
            return kind
    raise TypeError(f"{f.name}: no parser for {t}")  # pragma: no cover - every field has one of the kinds above


def _parse(f: dataclasses.Field[Any], raw: str) -> Any:
    """A variable's text as the field's value (in the field's unit)."""
    if _kind(f) is bool:
        word = raw.lower()
        if word in ("1", "true", "on", "yes"):
            return True
        if word in ("0", "false", "off", "no"):
            return False
        raise ValueError(raw)
    return _from_unit(f, _parse_unit(f, raw))


def _parse_unit(f: dataclasses.Field[Any], raw: str) -> Any:
    """A flag's or variable's text as a number in the flag's unit (MiB, KiB, ms) or a string; "none" is None where
    the field allows it."""
    if raw.lower() == "none" and "None" in str(f.type):
        return None
    kind = _kind(f)
    if kind is str:
        return raw
    if f.metadata["unit"] != 1 or kind is float:
        return float(raw)
    return int(raw)


def _from_unit(f: dataclasses.Field[Any], value: Any) -> Any:
    """A value in the flag's unit as the field's."""
    if value is None or _kind(f) is str:
        return value
    unit = f.metadata["unit"]
    if unit == 0:  # milliseconds to seconds; 0: Python's own interval
        return None if value == 0 else value / 1e3
    return int(value * unit) if _kind(f) is int else value * unit


def _to_unit(f: dataclasses.Field[Any], value: Any) -> Any:
    unit = f.metadata["unit"]
    if _kind(f) is str:
        return value
    if unit == 0:
        return 0.0 if value is None else value * 1e3
    return value / unit if unit != 1 else value


def table() -> str:
    """The Markdown table of every setting: name, flag, variable, default, what it does."""
    rows = ["| setting | `gpu-mm serve` flag | variable (plug-ins) | default (in the flag's unit) | what it does |",
            "|---|---|---|---|---|"]
    for f in dataclasses.fields(Settings):
        flag, env = f.metadata["flag"], f.metadata["env"]
        default = f.default if f.default is None or _kind(f) in (bool, str) else _to_unit(f, f.default)
        if isinstance(default, float) and default.is_integer():
            default = int(default)
        rows.append(f"| `{f.name}` | {f'`{flag}`' if flag else ''} | {f'`{env}`' if env else ''} | `{default}` | "
                    f"{f.metadata['help']} |")
    return "\n".join(rows) + "\n"
