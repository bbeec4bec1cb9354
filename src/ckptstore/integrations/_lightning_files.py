"""A Lightning checkpoint dict as the files of a stored checkpoint, and back, without pickle where it can be.

- ``model.safetensors``                 the LightningModule's state dict; or, when it holds a transformers model,
                                        that model's files exactly as ``save_pretrained`` writes them (config too)
- ``lightning/state_dict.safetensors``  weights of the state dict those files do not hold (outside that model)
- ``optimizer.safetensors``             every tensor of the optimizer states
- ``lightning/tensors.safetensors``     the other tensors (scheduler, callback and precision state, RNG states)
- ``lightning/checkpoint.json``         the rest as JSON (statetree's skeleton), and where each state dict key is
- ``lightning/objects.pt``              values JSON cannot hold (a config object among the hyper-parameters),
                                        read only with ``torch.load(weights_only=True)``
"""

from __future__ import annotations

import io
import json
import pickle
from collections.abc import Mapping
from typing import Any

import torch

from .._training import statetree as _statetree
from ..errors import IncompleteCheckpoint, InvalidArgument, UnsafePickle
from ..store import Store

STATE_FILE = "lightning/checkpoint.json"
WEIGHTS_FILE = "model.safetensors"
MORE_WEIGHTS_FILE = "lightning/state_dict.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
TENSORS_FILE = "lightning/tensors.safetensors"
OBJECTS_FILE = "lightning/objects.pt"
STATE_FORMAT = 1
_PREFIX = "lightning"
_OPTIMIZER_PREFIX = f"{_PREFIX}/optimizer_states/"


def _identity(t: torch.Tensor) -> tuple[Any, ...]:
    return (t.device, t.data_ptr(), t.dtype, tuple(t.shape), tuple(t.stride()))


def checkpoint_files(checkpoint: Mapping[str, Any], hf_model: Any = None, tokenizer: Any = None) -> dict[str, Any]:
    """The files to store for `checkpoint`, as ``Store.save(extra_files=)`` takes them."""
    state_dict = checkpoint.get("state_dict") or {}
    for key, t in state_dict.items():
        if not isinstance(t, torch.Tensor):
            raise InvalidArgument(f"state_dict[{key!r}] is a {type(t).__name__}, not a tensor.",
                                  hint="A LightningModule's state_dict holds tensors only.")
    files: dict[str, Any] = {}
    if hf_model is not None:
        captured = Store.capture(hf_model, tokenizer)
        files.update(captured)
        # A state dict key whose tensor is one save_pretrained wrote (the same memory; tied weights included)
        # refers to it there, so the weights are stored once, under the names from_pretrained expects.
        known = {_identity(t): (path, name) for path, value in captured.items() if isinstance(value, Mapping)
                 for name, t in value.items()}
        where = {key: known.get(_identity(t), (MORE_WEIGHTS_FILE, key)) for key, t in state_dict.items()}
        rest = {key: t for key, t in state_dict.items() if where[key][0] == MORE_WEIGHTS_FILE}
        if rest:
            files[MORE_WEIGHTS_FILE] = rest
    else:
        files[WEIGHTS_FILE] = dict(state_dict)
        where = {key: (WEIGHTS_FILE, key) for key in state_dict}
    objects: dict[str, Any] = {}

    def keep(value: Any, path: str) -> str:
        objects[path] = value
        return path

    skeleton, tensors = _statetree.flatten({k: v for k, v in checkpoint.items() if k != "state_dict"}, _PREFIX,
                                           what="Lightning checkpoint", other=keep)
    tensors = {name: t.contiguous() for name, t in tensors.items()}
    optimizer = {n: t for n, t in tensors.items() if n.startswith(_OPTIMIZER_PREFIX)}
    others = {n: t for n, t in tensors.items() if not n.startswith(_OPTIMIZER_PREFIX)}
    if optimizer:
        files[OPTIMIZER_FILE] = optimizer
    if others:
        files[TENSORS_FILE] = others
    if objects:
        buffer = io.BytesIO()
        torch.save(objects, buffer)
        files[OBJECTS_FILE] = buffer.getvalue()
    files[STATE_FILE] = _statetree.dumps({
        "format": STATE_FORMAT,
        "keys": list(checkpoint),
        "state_dict": [[key, *where[key]] for key in state_dict],  # a list: JSON objects are written sorted
        "checkpoint": skeleton,
        "tensor_files": {**{n: OPTIMIZER_FILE for n in optimizer}, **{n: TENSORS_FILE for n in others}},
    })
    return files


def read_checkpoint(store: Store, cid: str, map_location: Any = None, *, run: str) -> dict[str, Any]:
    """The checkpoint dict `checkpoint_files` stored as checkpoint `cid`. Weights are mapped from the store;
    the training state is copied, since optimizers update it in place and must not hold store maps."""
    if map_location is not None and not isinstance(map_location, (str, torch.device)):
        raise InvalidArgument(f"map_location={map_location!r}: StoreCheckpointIO takes a device or None.",
                              hint="Pass map_location='cpu' or a torch.device.")
    manifest = store.manifest(cid)
    if manifest.file(STATE_FILE) is None:
        raise IncompleteCheckpoint(
            f"Checkpoint {manifest.name!r} was not saved by Lightning ({STATE_FILE} is missing).",
            hint=f"Pass a checkpoint StoreCheckpointIO saved, e.g. '{run}:latest'.",
        )
    try:
        state = json.loads(store.read_file(cid, STATE_FILE))
    except ValueError as exc:
        raise IncompleteCheckpoint(f"{STATE_FILE} of {manifest.name!r} cannot be read: {exc}") from None
    if state.get("format") != STATE_FORMAT:
        raise IncompleteCheckpoint(
            f"{STATE_FILE} of {manifest.name!r} has format {state.get('format')!r}; this ckptstore reads"
            f" {STATE_FORMAT}.", hint="Upgrade ckptstore.")
    files: dict[str, dict[str, torch.Tensor]] = {}

    def tensors_of(path: str) -> dict[str, torch.Tensor]:
        if path not in files:
            files[path] = store.load_tensors(cid, path)
        return files[path]

    def place(t: torch.Tensor) -> torch.Tensor:
        return t if map_location is None else t.to(map_location)

    tensors = {name: place(tensors_of(path)[name].clone()) for name, path in state["tensor_files"].items()}
    objects = read_objects(store, cid, manifest.name) if manifest.file(OBJECTS_FILE) is not None else {}
    rest = _statetree.unflatten(state["checkpoint"], tensors, what="Lightning checkpoint", objects=objects)
    state_dict = {key: place(tensors_of(path)[name]) for key, path, name in state["state_dict"]}
    out = {**rest, "state_dict": state_dict}
    return {k: out[k] for k in state.get("keys", list(out)) if k in out}


def read_objects(store: Store, cid: str, name: str) -> dict[str, Any]:
    data = store.read_file(cid, OBJECTS_FILE)
    try:
        # weights_only whatever the caller asked for: the store never runs code from a checkpoint.
        return torch.load(io.BytesIO(data), weights_only=True)
    except pickle.UnpicklingError as exc:
        lines = str(exc).strip().splitlines()
        reason = next((line for line in lines if "Unsupported global" in line), lines[0] if lines else "")
        raise UnsafePickle(
            f"Checkpoint {name!r} holds values torch.load(weights_only=True) refuses ({reason.strip()}).",
            hint="Allow their classes with torch.serialization.add_safe_globals([...]) before loading, or keep"
            " hyper-parameters to plain data.",
        ) from None
