"""The files of a local store, as the tests damage and inspect them (docs/format.md is the layout)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path


def blob_path(store, digest: str) -> Path:
    return Path(store.root) / "objects" / digest[:2] / digest[2:]


def iter_blobs(store) -> Iterator[tuple[str, int, float]]:
    """(digest, size, mtime) of every blob file of the store."""
    objects = Path(store.root) / "objects"
    for sub in sorted(objects.iterdir()) if objects.is_dir() else ():
        for entry in os.scandir(sub):
            st = entry.stat()
            yield sub.name + entry.name, st.st_size, st.st_mtime


def manifest_path(store, cid: str) -> Path:
    return Path(store.root) / "checkpoints" / f"{cid}.json"


def plant_checkpoint(store, data: bytes) -> str:
    """Put a manifest into the store by hand, with the name claim that commits it, as someone with write access
    to the folder could: the hostile-input tests' way of making a checkpoint the store never wrote."""
    import json

    from ckptstore._format.manifest import manifest_id

    cid = manifest_id(data)
    manifest_path(store, cid).write_bytes(data)
    try:
        name = json.loads(data)["name"]
        run = name.split("/", 1)[0]
        claim = Path(store.root) / "names" / run / name.replace("/", "~")
    except Exception:  # noqa: BLE001 - a malformed manifest has no usable name: it stays unclaimed
        return cid
    if ".." in str(name) or name.startswith("/"):
        return cid
    claim.parent.mkdir(parents=True, exist_ok=True)
    claim.write_text(cid + "\n")
    return cid
