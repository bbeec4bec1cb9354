"""Model facts read from a manifest alone: which files are the model's weights, which stored tensors are parameters,
and how many there are per dtype. Pure functions over the manifest's file list (no blob is read), shared by
`ckpt show`, the save that records them and the index that answers ``ls --where``."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from .manifest import FileEntry, Manifest, TensorEntry

# Parameters are counted as `model.parameters()` counts them (and so `validate`, which loads the model), not as
# tensors in the file: save_pretrained also writes buffers. Integer and bool tensors (BERT's position_ids and
# token_type_ids, BatchNorm's num_batches_tracked) cannot be trained parameters; these float ones are buffers by name.
_FLOAT_BUFFERS = frozenset({"running_mean", "running_var", "inv_freq", "masked_bias"})


def is_parameter(name: str, dtype: str) -> bool:
    """Whether a stored tensor (its name and safetensors dtype: F32, I64, BOOL, ...) is a model parameter."""
    if dtype == "BOOL" or dtype[:1] in ("I", "U"):
        return False
    return name.rsplit(".", 1)[-1] not in _FLOAT_BUFFERS


def weight_files(manifest: Manifest | Iterable[FileEntry]) -> list[FileEntry]:
    """The safetensors files from_pretrained would read: the root-level model weights (all shards). Takes the
    manifest, or its file list while it is being built."""
    files = manifest.files if isinstance(manifest, Manifest) else manifest
    root = [f for f in files if f.is_safetensors and "/" not in f.path]
    preferred = [f for f in root if f.path.startswith("model")] or root
    return preferred


def model_weight_files(files: Manifest | Iterable[FileEntry]) -> list[FileEntry]:
    # The files from_pretrained reads (what validate loads); optimizer state is never the model's.
    return [f for f in weight_files(files) if not f.path.startswith("optimizer")]


def weight_tensors(files: Manifest | Iterable[FileEntry]) -> list[TensorEntry]:
    return [t for f in model_weight_files(files) for t in f.tensors]


def count_parameters(files: Manifest | Iterable[FileEntry]) -> tuple[int, dict[str, int]]:
    """(parameters, parameters per dtype) of the stored model weights, buffers left out."""
    total, dtypes = 0, {}
    for t in weight_tensors(files):
        if is_parameter(t.name, t.dtype):
            total += t.numel
            dtypes[t.dtype] = dtypes.get(t.dtype, 0) + t.numel
    return total, dtypes


def index_facts(manifest: Manifest) -> dict[str, Any]:
    """What the index keeps to answer ``ls --where``: model_type, architectures, parameters and their dtypes
    (counted again from the tensors: manifests of early versions counted buffers such as position_ids)."""
    model = manifest.model
    archs = model.get("architectures")
    parameters, dtypes = count_parameters(manifest)
    return {
        "model_type": model.get("model_type") if isinstance(model.get("model_type"), str) else None,
        "architectures": [a for a in archs if isinstance(a, str)] if isinstance(archs, list) else [],
        "parameters": parameters or None,
        "dtypes": dtypes,
    }
