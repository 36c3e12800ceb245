"""gpu-mm's Qwen-VL processor for SGLang (imported by SGLang's processor registry): Qwen2-VL, Qwen2.5-VL,
Qwen3-VL, Qwen3-VL-MoE and Qwen3.5, the architectures SGLang's own ``QwenVLImageProcessor`` serves with
one class.

How a request flows (SGLang 0.5.x):

1. ``process_mm_data_async`` (called by SGLang's TokenizerManager) wraps each image and video in a
   ``_Deferred`` and runs SGLang's own ``_process_mm_data_uncached``.
2. SGLang's ``load_mm_data`` checks the prompt's placeholders against the items as usual; its per-item
   loader (``_load_single_item``) passes ``_Deferred`` items through undecoded.
3. ``process_and_combine_mm_data_async`` -- the step where SGLang would call the HF processor -- sends the
   raw items to gpu-mm through an :class:`gpu_mm.AsyncMMDataProcessor` (admission bound, deadline) wrapped
   around a :class:`gpu_mm.Qwen2VLPreprocessor` (device slots); then SGLang's ``build_input_ids``
   expands the prompt (``build_input_ids_with_timestamps`` for the Qwen3 families, each temporal step
   preceded by its ``<t seconds>``) and SGLang's item collection, offsets, per-item split and transport
   run on gpu-mm's features.
4. SGLang finishes as for its own processor: padded ids, grids, ``second_per_grid_ts``, M-RoPE.

Sampling and sizes follow SGLang's Qwen-VL video path (its constants and ``mm_process_config``), and
video frames are resized bilinearly as SGLang does, so features equal SGLang's own; images follow the
HF image processor's settings. For the Qwen3 families SGLang's path resizes video frames twice (bilinearly
to multiples of 28 within its per-frame bounds, then transformers' bicubic resize to the model's clip
bounds); gpu-mm plans the same two sizes and does the same two resizes. One deliberate difference:
``second_per_grid_ts`` (Qwen2.5-VL) is the clip's real seconds per temporal grid step, ``temporal_patch_size
/ sample_fps`` as qwen-vl-utils and transformers compute it when told the sampling fps, where SGLang 0.5.23
with transformers 5 passes frames without their fps and gets ``2 / 24``.
"""

from __future__ import annotations

import asyncio
import collections
import copy
import logging
from typing import Any

import torch
from sglang.srt.models.qwen2_5_vl import Qwen2_5_VLForConditionalGeneration
from sglang.srt.models.qwen2_vl import Qwen2VLForConditionalGeneration
from sglang.srt.models.qwen3_5 import Qwen3_5ForConditionalGeneration, Qwen3_5MoeForConditionalGeneration
from sglang.srt.models.qwen3_vl import Qwen3VLForConditionalGeneration
from sglang.srt.models.qwen3_vl_moe import Qwen3VLMoeForConditionalGeneration
from sglang.srt.multimodal.processors import qwen_vl as _sglang_qwen_vl
from sglang.srt.multimodal.processors.qwen_vl import QwenVLImageProcessor

from gpu_mm.errors import Overloaded, ProcessingTimeout, ProcessorClosed, ServiceUnavailable
from gpu_mm.integrations._settings import PluginSettings, settings
from gpu_mm.integrations.hf import (
    GpuMMQwen2VLImageProcessor,
    GpuMMQwen2VLVideoProcessor,
    GpuMMQwen3VLVideoProcessor,
    _bicubic,
    _sizes,
)
from gpu_mm.models.qwen2_vl import Qwen2VLConfig
from gpu_mm.models.qwen3_vl import Qwen3VLConfig
from gpu_mm.options import RequestOptions
from gpu_mm.pipeline import Preprocessor, resolve_device
from gpu_mm.pipeline.families import Qwen2VLPreprocessor, Qwen3VLPreprocessor
from gpu_mm.processor import AsyncMMDataProcessor

from ..service import use_plugin_service
from ._service import ServiceRunner, encoded, uploadable

logger = logging.getLogger("gpu_mm.integrations.sglang")

_FEATURE_KEYS = ("pixel_values", "image_grid_thw", "pixel_values_videos", "video_grid_thw", "second_per_grid_ts")
# Model types SGLang prompts with per-frame timestamps (its build_input_ids_with_timestamps).
_QWEN3 = frozenset({"qwen3_vl", "qwen3_vl_moe", "qwen3_5", "qwen3_5_moe"})
# SGLang's video_config keys gpu-mm implements; any other key (resized_height/width ...) goes to SGLang's path.
_VIDEO_KEYS = {"fps", "nframes", "min_frames", "max_frames", "min_pixels", "max_pixels", "total_pixels"}


def _adopt(obj: Any, cls: type) -> Any:
    """A copy of transformers processor ``obj`` (same configuration) whose methods are ``cls``'s."""
    if isinstance(obj, cls):
        return obj
    new = copy.copy(obj)
    new.__class__ = cls
    return new


class SGLangOverloaded(Overloaded, ValueError):
    r""":class:`gpu_mm.Overloaded` that SGLang's HTTP server answers with 503 (it maps ``ValueError``\s by
    their ``status_code``; anything else would become a 500)."""


class SGLangProcessingTimeout(ProcessingTimeout, ValueError):
    """:class:`gpu_mm.ProcessingTimeout` that SGLang's HTTP server answers with 504, not 500."""


class SGLangProcessorClosed(ProcessorClosed, ValueError):
    """:class:`gpu_mm.ProcessorClosed` that SGLang's HTTP server answers with 503."""


class SGLangServiceUnavailable(ServiceUnavailable, ValueError):
    """:class:`gpu_mm.ServiceUnavailable` (``GPU_MM_SERVICE`` cannot be reached) that SGLang answers with 503."""


_FOR_SGLANG = ((Overloaded, SGLangOverloaded), (ProcessingTimeout, SGLangProcessingTimeout),
               (ProcessorClosed, SGLangProcessorClosed), (ServiceUnavailable, SGLangServiceUnavailable))


class _Deferred:
    """A request item SGLang's loader hands on undecoded: gpu-mm loads and decodes it on its slots."""

    __slots__ = ("source",)

    def __init__(self, source: Any) -> None:
        self.source = source

    def __repr__(self) -> str:
        return f"<gpu-mm deferred {type(self.source).__name__}>"


class _RequestView:
    """``request_obj`` as SGLang's uncached path reads it, with its videos replaced by deferred items."""

    def __init__(self, request_obj: Any, video_data: Any) -> None:
        self._request_obj = request_obj
        self.video_data = video_data

    def __getattr__(self, name: str) -> Any:
        return getattr(self._request_obj, name)


def _same(value: Any) -> Any:
    return tuple(value) if isinstance(value, (list, tuple)) else value


def _unwrap(item: Any) -> Any:
    """SGLang's ``ImageData`` / ``VideoData`` carry the source in ``url``; gpu-mm takes the source."""
    url = getattr(item, "url", None)
    return url if url is not None and not isinstance(item, (str, bytes)) else item


class GpuMMQwenVLProcessor(QwenVLImageProcessor):
    """SGLang's Qwen-VL processor with media loading, decoding and features done by gpu-mm.

    Attributes:
        gpu_mm_settings: the :class:`~gpu_mm.integrations.sglang.PluginSettings` in force.
        gpu_mm_unsupported: why gpu-mm takes no request under this configuration, or None.
        gpu_mm_fallbacks: requests sent to SGLang's own path, counted by reason.
    """

    models = [Qwen2VLForConditionalGeneration, Qwen2_5_VLForConditionalGeneration, Qwen3VLForConditionalGeneration,
              Qwen3VLMoeForConditionalGeneration, Qwen3_5ForConditionalGeneration, Qwen3_5MoeForConditionalGeneration]

    def __init__(self, hf_config: Any, server_args: Any, _processor: Any, *args: Any, **kwargs: Any) -> None:
        qwen3 = getattr(hf_config, "model_type", None) in _QWEN3
        # SGLang's own path (fallbacks, its image cache) still gets gpu-mm features through the drop-ins.
        if getattr(_processor, "image_processor", None) is not None:
            _processor.image_processor = _adopt(_processor.image_processor, GpuMMQwen2VLImageProcessor)
        if getattr(_processor, "video_processor", None) is not None:
            _processor.video_processor = _adopt(
                _processor.video_processor, GpuMMQwen3VLVideoProcessor if qwen3 else GpuMMQwen2VLVideoProcessor)
        super().__init__(hf_config, server_args, _processor, *args, **kwargs)
        self._gpu_mm_qwen3 = qwen3
        self.gpu_mm_settings: PluginSettings = settings()
        use_plugin_service(self.gpu_mm_settings.service)  # the drop-ins of SGLang's own path (decoded media) too
        self.gpu_mm_fallbacks: collections.Counter[str] = collections.Counter()
        self._gpu_mm_config, self._gpu_mm_request, self.gpu_mm_unsupported = self._gpu_mm_configure()
        self._gpu_mm_emits_spgt = "second_per_grid_ts" in getattr(_processor, "model_input_names", ())
        self._gpu_mm_runner: AsyncMMDataProcessor | ServiceRunner | None = None
        self._gpu_mm_preprocessor: Preprocessor | None = None
        # Whether the installed transformers drops a Qwen3-VL video's outer vision start/end, asked once at server
        # start (SGLang's own path prompts as transformers does).
        self._gpu_mm_collapse = qwen3 and self._gpu_mm_config is not None and _collapses_video_wrapper(_processor)
        if self._gpu_mm_config is not None:
            self._gpu_mm_build()  # at server start: a bad device or decoder setting fails here, not per request

    # ------------------------------------------------------------------ configuration

    def _gpu_mm_configure(self) -> tuple[Qwen2VLConfig | Qwen3VLConfig | None, dict[str, Any], str | None]:
        """gpu-mm's config mirroring this SGLang processor's, the per-call options, or why there is none."""
        ip = getattr(self._processor, "image_processor", None)
        vp = getattr(self._processor, "video_processor", None)
        if not isinstance(ip, GpuMMQwen2VLImageProcessor):
            return None, {}, f"image processor {type(ip).__name__} is not a Qwen2-VL image processor"
        image_kw = dict(self.image_config or {})
        if not _image_options_supported(ip, image_kw):
            return None, {}, f"image options gpu-mm does not implement: {sorted(image_kw)}"
        video_kw = dict(self.video_config or {})
        extra = sorted(set(video_kw) - _VIDEO_KEYS)
        if extra:
            return None, {}, f"video options gpu-mm does not implement: {extra}"
        if "fps" in video_kw and "nframes" in video_kw:
            return None, {}, "video options give both fps and nframes"
        shared = ("image_mean", "image_std", "patch_size", "temporal_patch_size", "merge_size")
        if vp is not None and any(_same(getattr(vp, k, None)) != _same(getattr(ip, k, None)) for k in shared):
            return None, {}, "image and video processors differ in normalization or patching"
        lo, hi = _sizes(image_kw.get("size") or ip.size, image_kw.get("min_pixels"), image_kw.get("max_pixels"))
        s = _sglang_qwen_vl  # SGLang's own video constants, so sampling and sizes equal its path's
        request = {"options": RequestOptions.parse({"nframes": video_kw["nframes"]})} if "nframes" in video_kw else {}
        if self._gpu_mm_qwen3:
            if not isinstance(vp, GpuMMQwen3VLVideoProcessor):
                return None, {}, f"video processor {type(vp).__name__} is not a Qwen3-VL video processor"
            size = dict(vp.size or {})
            qwen3 = Qwen3VLConfig(
                patch_size=ip.patch_size, temporal_patch_size=ip.temporal_patch_size, merge_size=ip.merge_size,
                image_min_pixels=lo, image_max_pixels=hi, image_mean=_rgb(ip.image_mean), image_std=_rgb(ip.image_std),
                video_min_pixels=int(size["shortest_edge"]), video_max_pixels=int(size["longest_edge"]),
                cap_pixels_per_frame=bool(vp.cap_pixels_per_frame), max_video_tokens=vp.max_video_tokens,
                sampling="sglang", fps=video_kw.get("fps", s.FPS),
                min_frames=video_kw.get("min_frames", s.FPS_MIN_FRAMES),
                max_frames=video_kw.get("max_frames", s.FPS_MAX_FRAMES),
                sglang_factor=s.IMAGE_FACTOR, sglang_min_pixels=video_kw.get("min_pixels", s.VIDEO_MIN_PIXELS),
                sglang_max_pixels=video_kw.get("max_pixels", s.VIDEO_MAX_PIXELS),
                sglang_total_pixels=video_kw.get("total_pixels", s.VIDEO_TOTAL_PIXELS),
            )
            return qwen3, request, None
        config = Qwen2VLConfig(
            patch_size=ip.patch_size, temporal_patch_size=ip.temporal_patch_size, merge_size=ip.merge_size,
            image_min_pixels=lo, image_max_pixels=hi,
            image_mean=_rgb(ip.image_mean), image_std=_rgb(ip.image_std),
            sampling="sglang",
            fps=video_kw.get("fps", s.FPS),
            min_frames=video_kw.get("min_frames", s.FPS_MIN_FRAMES),
            max_frames=video_kw.get("max_frames", s.FPS_MAX_FRAMES),
            video_min_pixels=video_kw.get("min_pixels", s.VIDEO_MIN_PIXELS),
            video_max_pixels=video_kw.get("max_pixels", s.VIDEO_MAX_PIXELS),
            video_total_pixels=video_kw.get("total_pixels", s.VIDEO_TOTAL_PIXELS),
            video_resample="bilinear",
        )
        return config, request, None

    def _gpu_mm_build(self) -> None:
        st = self.gpu_mm_settings
        if st.service is not None:  # the node's service computes, with this processor's spec (its family checked now)
            assert self._gpu_mm_config is not None
            self._gpu_mm_runner = ServiceRunner(st.service, self._gpu_mm_config, timeout_s=st.timeout_s)
            return
        keep_on_device = self.keep_mm_features_on_device or self.precompute_hash_before_cpu_transfer
        cls = Qwen3VLPreprocessor if isinstance(self._gpu_mm_config, Qwen3VLConfig) else Qwen2VLPreprocessor
        self._gpu_mm_preprocessor = cls(config=self._gpu_mm_config, output="device" if keep_on_device else "cpu",
                                        **st.preprocessor_kwargs(resolve_device(st.device)))
        self._gpu_mm_runner = AsyncMMDataProcessor(self._gpu_mm_preprocessor, **st.processor_kwargs())
        self._gpu_mm_preprocessor.start_soon()  # slot processes (the CPU default) start now, not in the first request

    def gpu_mm_processor(self) -> Any:
        """What requests go through: a :class:`gpu_mm.AsyncMMDataProcessor`, or with ``GPU_MM_SERVICE`` a
        :class:`~gpu_mm.integrations.sglang_processors._service.ServiceRunner`."""
        if self._gpu_mm_runner is None:
            raise RuntimeError(f"gpu-mm takes no request here: {self.gpu_mm_unsupported}")
        return self._gpu_mm_runner

    # ------------------------------------------------------------------ SGLang's hooks

    async def process_mm_data_async(self, image_data: Any, input_text: Any, request_obj: Any, *args: Any,
                                    **kwargs: Any) -> Any:
        videos = getattr(request_obj, "video_data", None)
        reason = self._gpu_mm_declines(image_data, videos, request_obj, kwargs)
        if reason is not None:
            if not self.gpu_mm_fallbacks[reason]:
                logger.info("gpu-mm leaves a request to SGLang's own path: %s", reason)
            self.gpu_mm_fallbacks[reason] += 1
            return await super().process_mm_data_async(image_data, input_text, request_obj, *args, **kwargs)
        images = [_Deferred(_unwrap(x)) for x in image_data] if image_data else image_data
        view = _RequestView(request_obj, [_Deferred(_unwrap(v)) for v in videos] if videos else videos)
        return await self._process_mm_data_uncached(images, input_text, view, *args, **kwargs)

    @classmethod
    def _load_single_item(cls, data: Any, modality: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(data, _Deferred):
            return data  # gpu-mm loads and decodes it on its slots
        return super()._load_single_item(data, modality, *args, **kwargs)

    async def process_and_combine_mm_data_async(self, base_output: Any, mm_tokens: Any, **kwargs: Any) -> Any:
        images = list(base_output.images or [])
        videos = list(base_output.videos or [])
        if not any(isinstance(x, _Deferred) for x in images + videos):
            return await super().process_and_combine_mm_data_async(base_output, mm_tokens, **kwargs)
        if not all(isinstance(x, _Deferred) for x in images + videos) or base_output.audios:
            raise RuntimeError("gpu-mm: a request mixes deferred and loaded items")  # declined earlier
        try:
            out = await self.gpu_mm_processor().process(
                image_data=[x.source for x in images] or None,
                video_data=[x.source for x in videos] or None,
                **(self._gpu_mm_request if videos else {}),
            )
        except (Overloaded, ProcessingTimeout, ProcessorClosed, ServiceUnavailable) as exc:
            for base, wrapped in _FOR_SGLANG:
                if isinstance(exc, base) and not isinstance(exc, ValueError):
                    raise wrapped(str(exc)) from exc
            raise
        # Tokenizing the prompt and building items is CPU work: keep it off the serving loop.
        return await asyncio.to_thread(self._gpu_mm_combine, base_output, mm_tokens, out)

    def shutdown(self) -> None:
        super().shutdown()
        if self._gpu_mm_runner is not None:
            self._gpu_mm_runner.shutdown(wait=False)
        if self._gpu_mm_preprocessor is not None:
            self._gpu_mm_preprocessor.shutdown()

    # ------------------------------------------------------------------ internals

    def _gpu_mm_declines(self, image_data: Any, videos: Any, request_obj: Any, kwargs: dict[str, Any]) -> str | None:
        """Why this request goes to SGLang's own path, or None when gpu-mm takes it."""
        if self.gpu_mm_unsupported is not None:
            return self.gpu_mm_unsupported
        if getattr(request_obj, "audio_data", None) or kwargs.get("audio_data"):
            return "the request has audio"
        if not image_data and not videos:
            return "the request has no images or videos"
        for data in (image_data, videos):
            if data is not None and not isinstance(data, list):
                return "media not given as a list"
            if data and any(self._is_preprocessed_input(x) for x in data):
                return "preprocessed input (processor_output / precomputed_embedding)"
        if not videos and (self.mm_preprocess_cache.enabled or self.uses_media_artifacts_without_cache):
            return "image-only request served by SGLang's preprocessing cache"
        runner = self._gpu_mm_runner
        if isinstance(runner, ServiceRunner) and not all(
                encoded(item) or (runner.arrays and uploadable(item))
                for item in map(_unwrap, [*(image_data or []), *(videos or [])])):
            return "decoded media (a PIL image, or an array over http://) cannot go to GPU_MM_SERVICE"
        return None

    def _gpu_mm_combine(
        self, base_output: Any, mm_tokens: Any, out: dict[str, Any]
    ) -> tuple[list[Any], torch.Tensor, dict[str, Any]]:
        """What SGLang's ``process_and_combine_mm_data`` returns for raw items, from gpu-mm's features:
        SGLang's ``build_input_ids`` expands the prompt; SGLang's own item code does the rest."""
        from sglang.srt.environ import envs
        from sglang.srt.managers.mm_utils import get_new_expanded_mm_items

        ret: dict[str, Any] = {k: out[k] for k in _FEATURE_KEYS if out.get(k) is not None}
        if not self._gpu_mm_emits_spgt:
            ret.pop("second_per_grid_ts", None)  # Qwen2-VL's processor has no such output
        prompt: Any = base_output.input_text
        if (envs.SGLANG_MM_AVOID_RETOKENIZE.get() and not self.preserve_processor_input_ids
                and isinstance(base_output.input_ids, list) and not base_output.videos):
            prompt = base_output.input_ids  # SGLang keeps the caller's tokens here too
        ids = prompt if isinstance(prompt, list) else self._tokenizer.encode(prompt)
        n_img, n_vid = len(base_output.images or []), len(base_output.videos or [])
        for name, token, n in (("image", self.IM_TOKEN_ID, n_img), ("video", self.VIDEO_TOKEN_ID, n_vid)):
            found = sum(1 for t in ids if t == token)
            if found != n:
                raise ValueError(f"Prompt has {found} {name} placeholders but {n} {name} inputs were provided")
        if self._gpu_mm_qwen3 and out.get("video_timestamps") is not None:
            input_ids_list, _, _ = self.build_input_ids_with_timestamps(
                ids, None, ret.get("image_grid_thw"), ret.get("video_grid_thw"), out["video_timestamps"])
            if self._gpu_mm_collapse:
                # SGLang's own path gets its prompt from the installed transformers' Qwen3-VL processor, which
                # (5.25 on) drops the prompt's own vision start/end around a video: each step carries its own.
                stamps = [self._tokenizer.encode(f"<{ts[0]:.1f} seconds>", add_special_tokens=False)
                          for ts in out["video_timestamps"]]  # the first step's, as SGLang's expansion encodes it
                input_ids_list = _drop_outer_wrappers(
                    input_ids_list, ret["video_grid_thw"], stamps, video=self.VIDEO_TOKEN_ID,
                    start=self.vision_start_token_id, end=self.vision_end_token_id)
        else:
            input_ids_list, _, _ = self.build_input_ids(ids, ret.get("image_grid_thw"), ret.get("video_grid_thw"))
        input_ids = torch.tensor(input_ids_list, dtype=torch.long)
        ret["input_ids"] = input_ids.unsqueeze(0)
        items = self.collect_mm_items_from_processor_output(ret)
        for item in items:
            item.offsets = self.get_mm_item_offsets(input_ids=input_ids, mm_tokens=mm_tokens, modality=item.modality)
        items = get_new_expanded_mm_items(items)
        items = self._finalize_mm_items(items, images=base_output.images)
        return items, input_ids, ret


def _collapses_video_wrapper(processor: Any) -> bool:
    """Whether the installed transformers' Qwen3-VL processor drops the prompt's own vision start/end around a
    video (each temporal step wrapped in its own pair instead; transformers 5.25 on): asked of the processor itself,
    on a 4-frame 64x64 clip, so that gpu-mm follows whichever version is installed."""
    import numpy as np
    from transformers.video_utils import VideoMetadata

    wrapper = f"{processor.vision_start_token}{processor.video_token}{processor.vision_end_token}"
    meta = VideoMetadata(total_num_frames=4, fps=2.0, frames_indices=[0, 1, 2, 3])
    try:
        out = processor(text=[wrapper], videos=[np.zeros((4, 64, 64, 3), np.uint8)], return_tensors="pt",
                        videos_kwargs={"video_metadata": [meta], "do_sample_frames": False})
    except Exception as exc:  # noqa: BLE001 - the prompt then follows SGLang's own expansion as it is
        logger.warning("could not ask transformers how it wraps a Qwen3-VL video (%r); keeping SGLang's prompt", exc)
        return False
    starts = int((out["input_ids"][0] == processor.vision_start_token_id).sum())
    return starts == int(out["video_grid_thw"][0][0])


def _drop_outer_wrappers(ids: list[int], video_grid_thw: Any, first_stamps: list[list[int]], *, video: int,
                         start: int, end: int) -> list[int]:
    """``ids`` as SGLang's ``build_input_ids_with_timestamps`` expands a Qwen3-VL prompt (the prompt's own start and
    end tokens around each video, every temporal step in its own pair inside), without that outer pair where it
    directly encloses the video, as transformers' processor writes it from 5.25 on. ``first_stamps``: per video,
    the tokens of its first step's ``<t seconds>``."""
    runs: list[tuple[int, int]] = []  # (first, last) index of each run of video tokens: one run per temporal step
    for i, tok in enumerate(ids):
        if tok == video:
            if runs and runs[-1][1] == i - 1:
                runs[-1] = (runs[-1][0], i)
            else:
                runs.append((i, i))
    drop: set[int] = set()
    k = 0
    for thw, stamp in zip(video_grid_thw, first_stamps):
        steps = int(thw[0])
        first, last = runs[k][0], runs[k + steps - 1][1]
        k += steps
        # ... outer start, <t seconds>, start, video x n, end, ..., video x n, end, outer end ...
        outer_start, outer_end = first - 2 - len(stamp), last + 2
        if outer_start >= 0 and ids[outer_start] == start and outer_end < len(ids) and ids[outer_end] == end:
            drop.update((outer_start, outer_end))
    return [tok for i, tok in enumerate(ids) if i not in drop]


def _rgb(values: Any) -> tuple[float, float, float]:
    r, g, b = (float(v) for v in values)
    return r, g, b


_IMAGE_FLAGS = {"do_resize": True, "do_rescale": True, "do_normalize": True, "do_convert_rgb": True}
_IMAGE_KEYS = {"size", "min_pixels", "max_pixels", "image_mean", "image_std", "patch_size", "temporal_patch_size",
               "merge_size", "resample", "rescale_factor", *_IMAGE_FLAGS}


def _image_options_supported(ip: Any, image_kw: dict[str, Any]) -> bool:
    """Whether SGLang's ``mm_process_config`` image options are ones gpu-mm computes itself."""
    if any(image_kw.get(name, getattr(ip, name, want)) != want for name, want in _IMAGE_FLAGS.items()):
        return False
    if not _bicubic(image_kw.get("resample", getattr(ip, "resample", 3))):
        return False
    if image_kw.get("rescale_factor", getattr(ip, "rescale_factor", 1 / 255)) != 1 / 255:
        return False
    return not {k for k in set(image_kw) - _IMAGE_KEYS if image_kw[k] is not None}
