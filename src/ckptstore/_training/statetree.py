"""Nested training state (optimizer and scheduler state dicts, user extras) as named tensors plus a JSON skeleton.

Why not ``torch.save``: a pickle runs code when it is opened, hides its tensors from deduplication (one opaque blob
per save, even when most moments did not change), and cannot be mapped. Here every tensor becomes an entry of a
safetensors file, so it is a blob like any weight, and the rest (lrs, betas, step counters, param ids) becomes
JSON that a person can read. The encoding is exact: tuples stay tuples, integer dict keys stay integers, and
floats round-trip through JSON's shortest repr bit for bit.

Skeleton markers (JSON objects with a single reserved key):

- ``{"__tensor__": NAME}``       a tensor, stored under NAME in the tensor file
- ``{"__tuple__": [...]}``        a tuple
- ``{"__dict__": [[k, v], ...]}`` a dict whose keys are not all strings (or that uses a reserved key)
- ``{"__float__": "nan"}``        a non-finite float ("nan", "inf", "-inf"), which strict JSON cannot hold
- ``{"__object__": KEY}``         a value none of the above can hold, kept elsewhere by the caller (only when
                                  `flatten` is given `other`, and decoded only when `unflatten` is given `objects`)
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from typing import Any

import torch

from ..errors import InvalidArgument, InvalidCheckpoint

TENSOR, TUPLE, DICT, FLOAT, OBJECT = "__tensor__", "__tuple__", "__dict__", "__float__", "__object__"
_MARKERS = frozenset({TENSOR, TUPLE, DICT, FLOAT, OBJECT})


def flatten(
    obj: Any, prefix: str, *, copy: Callable[[str, torch.Tensor], torch.Tensor] | None = None, what: str = "state",
    other: Callable[[Any, str], str] | None = None,
) -> tuple[Any, dict[str, torch.Tensor]]:
    """Split `obj` into a JSON-safe skeleton and its tensors, named ``prefix/path/to/tensor``.

    `copy(name, tensor)` returns a host-memory copy of each tensor (async save stages them so the snapshot stays
    consistent while training mutates the originals); without it, CPU tensors are referenced, not copied.
    """
    tensors: dict[str, torch.Tensor] = {}

    def name_for(path: list[str]) -> str:
        base = "/".join([prefix, *path])
        name, n = base, 1
        while name in tensors:  # keys that stringify alike ({1: .., "1": ..}) must not overwrite each other
            n += 1
            name = f"{base}#{n}"
        return name

    def enc(value: Any, path: list[str]) -> Any:
        if isinstance(value, torch.Tensor):
            name = name_for(path)
            t = value.detach()
            if copy is not None:
                t = copy(name, t)
            elif t.device.type != "cpu":
                t = t.to("cpu")
            tensors[name] = t
            return {TENSOR: name}
        if value is None or isinstance(value, (bool, int, str)):
            return value
        if isinstance(value, float):
            return value if math.isfinite(value) else {FLOAT: repr(value)}
        if isinstance(value, tuple):
            return {TUPLE: [enc(v, [*path, str(i)]) for i, v in enumerate(value)]}
        if isinstance(value, list):
            return [enc(v, [*path, str(i)]) for i, v in enumerate(value)]
        if isinstance(value, Mapping):
            if all(isinstance(k, str) for k in value) and not (_MARKERS & set(value)):
                return {k: enc(v, [*path, k]) for k, v in value.items()}
            return {DICT: [[enc(k, [*path, "key"]), enc(v, [*path, str(k)])] for k, v in value.items()]}
        item = getattr(value, "item", None)  # numpy and torch scalars
        if callable(item) and getattr(value, "shape", None) == ():
            return enc(item(), path)
        if other is not None:
            return {OBJECT: other(value, "/".join([prefix, *path]))}
        raise InvalidArgument(
            f"Cannot store {what} at {'/'.join(path) or '<root>'!r}: a {type(value).__name__} is not a tensor, number,"
            " string, list, tuple or dict.",
            hint="Keep training state to tensors and plain data (convert other objects in state_dict()).",
        )

    return enc(obj, []), tensors


def unflatten(skeleton: Any, tensors: Mapping[str, torch.Tensor], *, what: str = "state",
              objects: Mapping[str, Any] | None = None) -> Any:
    """Rebuild what :func:`flatten` took apart; `objects` holds the values `flatten` gave to `other`."""

    def dec(value: Any) -> Any:
        if isinstance(value, list):
            return [dec(v) for v in value]
        if not isinstance(value, dict):
            return value
        if len(value) == 1:
            (key, inner), = value.items()
            if key == TENSOR:
                try:
                    return tensors[inner]
                except KeyError:
                    raise InvalidCheckpoint(
                        f"The stored {what} refers to tensor {inner!r}, which its tensor file does not hold.",
                        hint="The checkpoint is damaged; run 'ckpt verify' on it.",
                    ) from None
            if key == TUPLE:
                return tuple(dec(v) for v in inner)
            if key == DICT:
                return {dec(k): dec(v) for k, v in inner}
            if key == FLOAT:
                return float(inner)
            if key == OBJECT and objects is not None:  # a skeleton written without `other` never meant a marker
                try:
                    return objects[inner]
                except KeyError:
                    raise InvalidCheckpoint(
                        f"The stored {what} refers to object {inner!r}, which it does not hold.",
                        hint="The checkpoint is damaged; run 'ckpt verify' on it.",
                    ) from None
        return {k: dec(v) for k, v in value.items()}

    return dec(skeleton)


def dumps(data: Any) -> bytes:
    """Canonical JSON bytes: sorted keys and no NaN literals, so equal state gives an equal (deduplicated) blob."""
    return (json.dumps(data, sort_keys=True, allow_nan=False, indent=1) + "\n").encode()
