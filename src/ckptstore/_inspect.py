"""What `ckpt show` adds about a checkpoint's insides: parameters per module, dtypes, and its lineage.

All of it comes from the manifest (tensor names, dtypes and shapes are recorded there), so showing a 70B checkpoint
reads a few kilobytes of JSON, no weights.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from . import _load

if TYPE_CHECKING:
    from ._manifest import Manifest
    from .store import Store

# A module holding at least this share of the parameters is shown by its children instead: "bert" alone says
# nothing about a BertForSequenceClassification, "bert.embeddings / bert.encoder / classifier" does.
_DOMINANT_SHARE = 0.9


def _group(names_counts: list[tuple[str, int]], depth: int) -> dict[str, int]:
    out: dict[str, int] = {}
    for name, n in names_counts:
        parts = name.split(".")
        key = ".".join(parts[:depth]) if len(parts) > depth else name
        out[key] = out.get(key, 0) + n
    return out


def parameters_by_module(manifest: "Manifest") -> dict[str, int]:
    """Parameters per top-level module of the stored weights, in file order; a wrapper module that holds nearly
    everything (the base model inside a task model) is split into its own children."""
    tensors = [(t.name, t.numel) for f in _load.weight_files(manifest) for t in f.tensors]
    total = sum(n for _, n in tensors)
    if not total:
        return {}
    top = _group(tensors, 1)
    out: dict[str, int] = {}
    for module, count in top.items():
        inside = [(n, c) for n, c in tensors if n.startswith(module + ".")]
        children = _group(inside, 2)
        if count >= _DOMINANT_SHARE * total and len(children) > 1:
            out.update(children)
        else:
            out[module] = count
    return out


def dtype_breakdown(manifest: "Manifest") -> dict[str, dict[str, int]]:
    """For each dtype of the stored weights: tensors, parameters and bytes."""
    out: dict[str, dict[str, int]] = {}
    for f in _load.weight_files(manifest):
        for t in f.tensors:
            row = out.setdefault(t.dtype, {"tensors": 0, "parameters": 0, "bytes": 0})
            row["tensors"] += 1
            row["parameters"] += t.numel
            row["bytes"] += t.nbytes
    return out


def lineage_chain(store: "Store", ref: str) -> list[dict[str, Any]]:
    """The checkpoint, its parent, grandparent, ...; a deleted ancestor appears with its id and deleted=True."""
    chain = []
    for item in store.lineage(ref):
        if isinstance(item, str):
            chain.append({"id": item, "name": None, "step": None, "deleted": True})
        else:
            chain.append({"id": item.id, "name": item.name, "step": item.step, "deleted": False})
    return chain


def show_details(store: "Store", ref: str) -> dict[str, Any]:
    manifest = store.manifest(ref)
    return {
        "parameters_by_module": parameters_by_module(manifest),
        "dtype_breakdown": dtype_breakdown(manifest),
        "lineage_chain": lineage_chain(store, ref),
    }

