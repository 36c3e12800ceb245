"""gpu-mm: multimodal preprocessing for VLM serving on CUDA or CPU behind one async interface."""

from __future__ import annotations

from .cache import CacheStatistics, FeatureCache
from .client import Client
from .errors import (
    BackendUnavailable,
    DecodeError,
    GpuMMError,
    InvalidRequest,
    LimitExceeded,
    MediaError,
    MemoryExhausted,
    Overloaded,
    ProcessingTimeout,
    ProcessorClosed,
    ServiceUnavailable,
    SourceError,
    UnsupportedMedia,
)
from .handoff import FeatureHandle, FeaturePool, FeatureReceiver
from .media.sources import MediaLimits
from .metrics import LatencySummary, StageTimer
from .models.gemma3 import Gemma3Config, Gemma3Features
from .models.glm4v import Glm4vConfig, Glm4vFeatures, Glm46VConfig
from .models.internvl import InternVLChatConfig, InternVLConfig, InternVLFeatures
from .models.qwen2_vl import Qwen2VLConfig, Qwen2VLFeatures
from .models.qwen3_vl import Qwen3VLConfig, Qwen3VLFeatures
from .models.qwen_omni import Qwen2_5OmniConfig, Qwen3OmniConfig, QwenOmniFeatures
from .options import RequestOptions
from .pipeline import Decoded, Features, ItemReport, MemoryStatement, Preprocessor, PreprocessorStatistics
from .pipeline.families import (
    Gemma3Preprocessor,
    Glm4vPreprocessor,
    Glm46VPreprocessor,
    InternVLChatPreprocessor,
    InternVLPreprocessor,
    Qwen2_5OmniPreprocessor,
    Qwen2VLPreprocessor,
    Qwen3OmniPreprocessor,
    Qwen3VLPreprocessor,
)
from .processor import AsyncMMDataProcessor, ProcessorCounts, ProcessorStatistics
from .settings import Settings
from .slots import Completion, Slot, SlotPool, SlotPoolStatistics

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "AsyncMMDataProcessor",
    "BackendUnavailable",
    "CacheStatistics",
    "Client",
    "Completion",
    "Decoded",
    "DecodeError",
    "FeatureCache",
    "FeatureHandle",
    "FeaturePool",
    "FeatureReceiver",
    "Features",
    "Gemma3Config",
    "Gemma3Features",
    "Gemma3Preprocessor",
    "Glm46VConfig",
    "Glm46VPreprocessor",
    "Glm4vConfig",
    "Glm4vFeatures",
    "Glm4vPreprocessor",
    "GpuMMError",
    "InternVLChatConfig",
    "InternVLChatPreprocessor",
    "InternVLConfig",
    "InternVLFeatures",
    "InternVLPreprocessor",
    "InvalidRequest",
    "ItemReport",
    "LatencySummary",
    "LimitExceeded",
    "MediaError",
    "MemoryExhausted",
    "MediaLimits",
    "MemoryStatement",
    "Overloaded",
    "Preprocessor",
    "PreprocessorStatistics",
    "ProcessingTimeout",
    "ProcessorClosed",
    "ProcessorCounts",
    "ProcessorStatistics",
    "ServiceUnavailable",
    "Qwen2VLConfig",
    "Qwen2VLFeatures",
    "Qwen2VLPreprocessor",
    "Qwen2_5OmniConfig",
    "Qwen2_5OmniPreprocessor",
    "Qwen3OmniConfig",
    "Qwen3OmniPreprocessor",
    "Qwen3VLConfig",
    "Qwen3VLFeatures",
    "Qwen3VLPreprocessor",
    "QwenOmniFeatures",
    "RequestOptions",
    "Settings",
    "Slot",
    "SlotPool",
    "SlotPoolStatistics",
    "SourceError",
    "StageTimer",
    "UnsupportedMedia",
]
