"""The family-agnostic pipeline, one concern a module; :class:`Preprocessor` is its entry point.

- :mod:`.types`: what a call returns (:class:`Features`, :class:`ItemReport`, :class:`Decoded`) and the
  statistics snapshot;
- :mod:`.memory`: each item's working-memory bound from its plan alone, chunk and decoder-call sizes, the
  default budgets (pure arithmetic);
- :mod:`.devices`: device decisions (which device, which image decoder, which normalize+patchify);
- :mod:`.folder`: reading a model folder's processor configs;
- :mod:`.plan`, :mod:`.routing`, :mod:`.execute`, :mod:`.output`, :mod:`.processes`: planning, cache routing,
  slot execution, the output pool and assembly, slot processes;
- :mod:`.preprocessor`: :class:`Preprocessor`, which wires them; :mod:`.families`: each family's subclass.
"""

from __future__ import annotations

from .devices import choose_image_decoder, resolve_device, same_device
from .families import Qwen2VLPreprocessor, Qwen3VLPreprocessor, preprocessor_class
from .memory import default_cache_bytes, default_memory_budget
from .preprocessor import Preprocessor
from .types import Decoded, Features, ItemReport, MemoryStatement, PreprocessorStatistics

__all__ = [
    "Decoded",
    "Features",
    "ItemReport",
    "Preprocessor",
    "MemoryStatement",
    "PreprocessorStatistics",
    "Qwen2VLPreprocessor",
    "Qwen3VLPreprocessor",
    "choose_image_decoder",
    "default_cache_bytes",
    "default_memory_budget",
    "preprocessor_class",
    "resolve_device",
    "same_device",
]
