"""Annotations: metrics, metadata and a message added to a checkpoint after its save.

A manifest is immutable (its id is the hash of its bytes), so what is learnt later (a test-set score, a note from
review) goes into one small document per checkpoint, ``annotations/<checkpoint-id>.json``, replaced atomically
under the commit lock. Readers merge it over the manifest: annotated metrics and metadata override or extend the
saved ones, an annotated message replaces the saved one. The index holds each document's merged values, so ``ls``,
sorting, retention's best and ``show`` all see them; it finds changed documents by their file stamps.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._backend import atomic_write_bytes, fsync_dir
from ._objects import is_digest, refuse_link
from .errors import CheckpointNotFound, CorruptObject, InvalidArgument

if TYPE_CHECKING:
    from ._catalog import Catalog
    from .store import Store

FORMAT = 1
FOLDER = "annotations"


def _folder(root: Path) -> Path:
    return root / FOLDER


def _doc_path(root: Path, cid: str) -> Path:
    return _folder(root) / f"{cid}.json"


def _parse(data: bytes) -> dict[str, Any] | None:
    """The document's (metrics, metadata, message), or None when it is not a format-1 annotation."""
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


def read(root: Path, cid: str) -> dict[str, Any] | None:
    """The annotation of checkpoint `cid` (None when it has none). A damaged one raises CorruptObject."""
    path = _doc_path(root, cid)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    doc = _parse(data)
    if doc is None:
        raise CorruptObject(
            f"Annotation {path} is not a format-{FORMAT} annotation document.",
            path=str(path),
            hint="Remove that file (the checkpoint itself is intact) and annotate again.",
        )
    return doc


def annotate(store: "Store", cid: str, *, metrics: Mapping[str, float], metadata: Mapping[str, Any],
             message: str | None) -> None:
    """Merge `metrics`, `metadata` and `message` into the annotation of checkpoint `cid`, then move the run's
    ``latest``/``best`` tags as after a save (a new metric can make another checkpoint the best)."""
    from . import _retention

    if not metrics and not metadata and message is None:
        raise InvalidArgument("Nothing to annotate.", hint="Give --metric K=V, --meta K=V or -m MESSAGE.")
    refuse_link(_folder(store.root))
    # objects (shared) then commit, the order a save takes them in: gc, which removes annotations of deleted
    # checkpoints, cannot run meanwhile, and the tags move under the same locks as after a save.
    with store._writing(), store._commit_lock():
        if not store._manifest_path(cid).exists():  # deleted since the reference was resolved
            raise CheckpointNotFound(cid)
        old = read(store.root, cid) or {"metrics": {}, "metadata": {}, "message": None}
        doc = {
            "format": FORMAT,
            "checkpoint": cid,
            "metrics": {**old["metrics"], **metrics},
            "metadata": {**old["metadata"], **metadata},
            "message": message if message is not None else old["message"],
            "updated_at": time.time(),
        }
        data = (json.dumps(doc, sort_keys=True, allow_nan=False, default=str) + "\n").encode()
        _folder(store.root).mkdir(exist_ok=True)
        atomic_write_bytes(_doc_path(store.root, cid), data, store.root / "tmp", failpoint_name="annotation")
        store._sync_index()
        _retention.update_tags_locked(store, [store.catalog.infos(ids=[cid])[0].run])


def remove(root: Path, ids: Iterable[str]) -> None:
    """Remove the annotations of deleted checkpoints (after their manifests: a crash between leaves an orphan,
    which gc removes, never a checkpoint that lost its annotation while it still exists)."""
    removed = False
    for cid in ids:
        try:
            _doc_path(root, cid).unlink()
            removed = True
        except FileNotFoundError:
            pass
    if removed:
        fsync_dir(_folder(root))


def remove_orphans(root: Path, manifest_ids: set[str]) -> int:
    """Remove annotations whose checkpoint is gone; the caller keeps annotate from running (gc's locks)."""
    orphans = [cid for cid in _stamps(root) if cid not in manifest_ids]
    remove(root, orphans)
    return len(orphans)


def _stamps(root: Path) -> dict[str, str]:
    """checkpoint id -> a stamp that changes whenever its document is replaced (a new inode each time)."""
    out: dict[str, str] = {}
    try:
        entries = list(os.scandir(_folder(root)))
    except FileNotFoundError:
        return out
    for entry in entries:
        if entry.name.endswith(".json") and is_digest(entry.name[:-5]) and entry.is_file(follow_symlinks=False):
            st = entry.stat(follow_symlinks=False)
            out[entry.name[:-5]] = f"{st.st_ino}:{st.st_mtime_ns}:{st.st_size}"
    return out


def sync(root: Path, catalog: "Catalog") -> None:
    """Bring the index's annotations in line with the documents on disk (a listing and a stat: cheap)."""
    disk = _stamps(root)
    indexed = catalog.annotation_stamps()
    if disk == indexed:
        return
    rows = []
    for cid, stamp in disk.items():
        if indexed.get(cid) == stamp:
            continue
        try:
            doc = _parse(_doc_path(root, cid).read_bytes())
        except FileNotFoundError:
            continue
        doc = doc or {"metrics": {}, "metadata": {}, "message": None}  # damaged: none here; annotate names it
        rows.append((cid, stamp, doc["metrics"], doc["metadata"], doc["message"]))
    catalog.set_annotations(rows, removed=set(indexed) - set(disk))
