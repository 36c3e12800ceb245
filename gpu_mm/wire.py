"""Features on the wire: a call's features as a safetensors body and back, for ``gpu-mm serve`` and
:class:`gpu_mm.Client`.

The body is the ``safetensors`` package's format: every tensor of the features under the name ``to_dict()`` gives
it, and one metadata entry, ``gpu_mm``, holding JSON: the family's name (which features class to rebuild), the
item reports and the features' other fields (``video_timestamps``). Rebuilt features equal the sender's bit for
bit (``to_dict()`` of both holds the same tensors)."""

from __future__ import annotations

import dataclasses
import json
import struct
from collections.abc import Mapping
from typing import Any

import torch

from .errors import InvalidRequest
from .features import Decoded, Features, ItemReport

__all__ = ["CONTENT_TYPE", "HANDLE_CONTENT_TYPE", "features_from_body", "features_from_parts", "features_to_body",
           "item_from_json", "item_to_json", "split_output"]

CONTENT_TYPE = "application/octet-stream"
"""What a safetensors body is sent as (and what a client asks for with ``Accept``)."""
HANDLE_CONTENT_TYPE = "application/x-gpu-mm-handle"
"""What a Unix-socket service answers ``?format=handles`` with: a pickled ``{"handle": FeatureHandle, "meta": ...}``
(:mod:`gpu_mm.leases`). Only a client of its own node's service, over that service's socket, reads one."""

_SKIPPED = ("items", "input_text", "handle")


def item_to_json(item: ItemReport) -> dict[str, Any]:
    return dataclasses.asdict(item)


def item_from_json(d: Mapping[str, Any]) -> ItemReport:
    d = dict(d)
    decoded = d.pop("decoded", None)
    for name in ("source_size", "resized", "grid_thw"):
        d[name] = tuple(d[name])
    return ItemReport(**d, decoded=Decoded(**decoded) if decoded is not None else None)


def _plain(t: torch.Tensor) -> torch.Tensor:
    """A tensor safetensors can write: on the CPU, contiguous, owning its memory (a view into a pool block or a
    joined batch is copied)."""
    t = t.detach().to("cpu")
    if not t.is_contiguous() or t.untyped_storage().nbytes() != t.numel() * t.element_size():
        t = t.clone(memory_format=torch.contiguous_format)
    return t


def split_output(output: Mapping[str, Any], family: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """A processor output (``Features.processor_output()``: the ``to_dict()`` tensors, ``items`` and the family's
    other fields) as its tensors and the JSON-ready rest (the family, the item reports, the other fields)."""
    tensors = {k: v for k, v in output.items() if isinstance(v, torch.Tensor)}
    fields = {k: v for k, v in output.items() if k not in tensors and k not in _SKIPPED}
    return tensors, {"family": family, "items": [item_to_json(r) for r in output.get("items", [])], "fields": fields}


def features_to_body(output: Mapping[str, Any], family: str) -> bytes:
    """A processor output as a safetensors body (:func:`split_output`'s rest in its ``gpu_mm`` metadata)."""
    from safetensors.torch import save

    tensors, meta = split_output(output, family)
    return bytes(save({k: _plain(v) for k, v in tensors.items()}, metadata={"gpu_mm": json.dumps(meta)}))


def _metadata(body: bytes) -> dict[str, Any]:
    """The body's ``gpu_mm`` metadata (safetensors: an 8-byte little-endian header length, then a JSON header)."""
    if len(body) < 8:
        raise ValueError("not a safetensors body (shorter than its header length)")
    (n,) = struct.unpack("<Q", body[:8])
    if n > len(body) - 8:
        raise ValueError("not a safetensors body (header length past the end)")
    header = json.loads(body[8 : 8 + n])
    raw = (header.get("__metadata__") or {}).get("gpu_mm")
    if not isinstance(raw, str):
        raise ValueError("a safetensors body without gpu-mm's metadata")
    meta = json.loads(raw)
    if not isinstance(meta, dict):
        raise ValueError("gpu-mm's metadata is not an object")
    return meta


def features_from_body(body: bytes) -> Features:
    """The features a :func:`features_to_body` body holds, as its family's features class.

    Raises:
        InvalidRequest: not such a body (named ``body``), or of a family this gpu-mm does not know.
    """
    from safetensors.torch import load

    try:
        meta = _metadata(body)
        tensors = load(body)
    except (ValueError, KeyError, TypeError) as exc:
        raise InvalidRequest("body", f"not a gpu-mm features body: {str(exc)[:200]}") from None
    return features_from_parts(tensors, meta)


def features_from_parts(tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> Features:
    """The family's features class holding ``tensors`` (as they are: no copy) and :func:`split_output`'s rest.

    Raises:
        InvalidRequest: parts no features class of this gpu-mm holds (named ``body``).
    """
    from .models import get_family

    try:
        cls = get_family(str(meta["family"])).features_class
        fields = {f.name: f for f in dataclasses.fields(cls)}
        feats = cls()
        for name, tensor in tensors.items():
            if name not in fields:
                raise ValueError(f"{cls.__name__} has no field {name!r}")
            # A field the features keep as a list (second_per_grid_ts) arrives as to_dict()'s tensor.
            setattr(feats, name, tensor if "Tensor" in str(fields[name].type) else tensor.tolist())
        for name, value in meta.get("fields", {}).items():
            if name in fields:
                setattr(feats, name, value)
        feats.items = [item_from_json(d) for d in meta.get("items", [])]
    except (ValueError, KeyError, TypeError) as exc:
        raise InvalidRequest("body", f"not a gpu-mm features body: {str(exc)[:200]}") from None
    return feats
