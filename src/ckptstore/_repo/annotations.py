"""Annotations: metrics, metadata and a message added to a checkpoint after its save.

A manifest is immutable (its id is the hash of its bytes), so what is learnt later (a test-set score, a note from
review) goes into one small document per checkpoint, ``annotations/<checkpoint-id>.json``, replaced by
compare-and-swap. Readers merge it over the manifest: annotated metrics and metadata override or extend the saved
ones, an annotated message replaces the saved one. The catalog holds each document's merged values, so ``ls``,
sorting, retention's best and ``show`` all see them; it finds changed documents by their versions.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from .._backend.protocols import Documents
from .._core.hashing import is_digest
from ..errors import CorruptObject
from .documents import upsert

if TYPE_CHECKING:
    from .catalog import Catalog

FORMAT = 1
PREFIX = "annotations/"


def key(cid: str) -> str:
    return f"{PREFIX}{cid}.json"


def _parse(data: bytes) -> dict[str, Any] | None:
    """The document's metrics, metadata and message, or None when it is not a format-1 annotation."""
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        return None
    metrics, metadata, message = doc.get("metrics", {}), doc.get("metadata", {}), doc.get("message")
    if not isinstance(metrics, dict) or not isinstance(metadata, dict) or not isinstance(message, (str, type(None))):
        return None
    return {"metrics": metrics, "metadata": metadata, "message": message}


def read(docs: Documents, cid: str) -> dict[str, Any] | None:
    """The annotation of checkpoint `cid` (None when it has none). A damaged one raises CorruptObject."""
    got = docs.get(key(cid))
    if got is None:
        return None
    doc = _parse(got[0])
    if doc is None:
        raise CorruptObject(
            f"Annotation {key(cid)} is not a format-{FORMAT} annotation document.",
            path=key(cid),
            hint="Remove that file (the checkpoint itself is intact) and annotate again.",
        )
    return doc


def write(docs: Documents, cid: str, doc: dict[str, Any]) -> None:
    data = (json.dumps({"format": FORMAT, "checkpoint": cid, **doc}, sort_keys=True, allow_nan=False, default=str)
            + "\n").encode()
    upsert(docs, key(cid), data)


def ids(docs: Documents) -> set[str]:
    out = set()
    for k in docs.list(PREFIX):
        stem = k[len(PREFIX):]
        if stem.endswith(".json") and is_digest(stem[:-5]):
            out.add(stem[:-5])
    return out


def remove(docs: Documents, checkpoint_ids: Iterable[str]) -> None:
    """Remove the annotations of deleted checkpoints (after their manifests: a crash between leaves an orphan,
    which gc removes, never a checkpoint that lost its annotation while it still exists)."""
    for cid in checkpoint_ids:
        docs.remove(key(cid))


def sync(docs: Documents, catalog: "Catalog") -> None:
    """Bring the catalog's annotations in line with the documents."""
    indexed = catalog.annotation_stamps()
    found = ids(docs)
    if not found and not indexed:
        return
    rows = []
    for cid in found:
        got = docs.get(key(cid))
        if got is None or indexed.get(cid) == got[1]:
            continue
        doc = _parse(got[0]) or {"metrics": {}, "metadata": {}, "message": None}  # damaged: annotate names it
        rows.append((cid, got[1], doc["metrics"], doc["metadata"], doc["message"]))
    removed = set(indexed) - found
    if rows or removed:
        catalog.set_annotations(rows, removed=removed)
