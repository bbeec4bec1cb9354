"""What `ckpt show` adds about a checkpoint's insides: parameters per module, dtypes, tensors, and its lineage.

All of it comes from the manifest (tensor names, dtypes and shapes are recorded there), so showing a 70B checkpoint
reads a few kilobytes of JSON, no weights.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .._format.modelfacts import count_parameters, is_parameter, model_weight_files as _weights  # noqa: F401
from .._format.modelfacts import weight_tensors as _weight_tensors
from .usage import lineage

if TYPE_CHECKING:
    from .._format.manifest import Manifest
    from .._repo.repository import Repository


def tensor_table(manifest: "Manifest") -> list[dict[str, Any]]:
    """Every stored weight tensor in file order: name, file, dtype, shape, elements, and whether it is a parameter."""
    return [
        {"name": t.name, "file": f.path, "dtype": t.dtype, "shape": list(t.shape), "numel": t.numel,
         "parameter": is_parameter(t.name, t.dtype)}
        for f in _weights(manifest) for t in f.tensors
    ]

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
    tensors = [(t.name, t.numel) for t in _weight_tensors(manifest) if is_parameter(t.name, t.dtype)]
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
    """For each dtype of the stored weights: tensors, parameters (buffers left out) and bytes."""
    out: dict[str, dict[str, int]] = {}
    for t in _weight_tensors(manifest):
        row = out.setdefault(t.dtype, {"tensors": 0, "parameters": 0, "bytes": 0})
        row["tensors"] += 1
        row["parameters"] += t.numel if is_parameter(t.name, t.dtype) else 0
        row["bytes"] += t.nbytes
    return out


def lineage_chain(repo: "Repository", ref: str) -> list[dict[str, Any]]:
    """The checkpoint, its parent, grandparent, ...; a deleted ancestor appears with its id and deleted=True."""
    chain = []
    for item in lineage(repo, ref):
        if isinstance(item, str):
            chain.append({"id": item, "name": None, "step": None, "deleted": True})
        else:
            chain.append({"id": item.id, "name": item.name, "step": item.step, "deleted": False})
    return chain


def show_details(repo: "Repository", ref: str, manifest: "Manifest | None" = None) -> dict[str, Any]:
    """`manifest`: the checkpoint's, when the caller has read it already."""
    manifest = repo.manifest(ref) if manifest is None else manifest
    parameters, dtypes = count_parameters(manifest)
    return {
        # Counted from the tensors rather than read from the manifest's facts: stores written before buffers were
        # left out recorded position_ids as parameters.
        "parameters": parameters,
        "parameter_dtypes": dtypes,
        "buffers": {t.name: t.numel for t in _weight_tensors(manifest) if not is_parameter(t.name, t.dtype)},
        "parameters_by_module": parameters_by_module(manifest),
        "dtype_breakdown": dtype_breakdown(manifest),
        "lineage_chain": lineage_chain(repo, ref),
        "tensors": tensor_table(manifest),
    }



def describe(repo: "Repository", ref: str) -> dict[str, Any]:
    """What `ckpt show --json` prints: the record, model facts, environment, sizes, lineage, files and the
    details above."""
    cid = repo.resolve(ref)
    info = repo.info(cid)
    manifest = repo.manifest(cid)
    blobs = manifest.blob_refs()
    refs = repo.catalog.blob_refcount(blobs)
    inside = show_details(repo, cid, manifest)
    lineage_names = [c["name"] or f"{c['id'][:12]} (deleted)" for c in inside["lineage_chain"][1:]]
    return {
        **info.to_json(),
        "model": {**manifest.model, "parameters": inside["parameters"], "dtypes": inside["parameter_dtypes"]},
        "environment": manifest.environment,
        "stored_bytes": sum(blobs.values()),
        "unshared_bytes": sum(size for d, size in blobs.items() if refs.get(d, 0) <= 1),
        "lineage": lineage_names,
        "files": [
            {"path": f.path, "size": f.size, "kind": f.kind, "blobs": len(f.blobs), "tensors": len(f.tensors),
             **({"converted_from": f.converted_from} if f.converted_from else {})}
            for f in manifest.files
        ],
        **inside,
    }
