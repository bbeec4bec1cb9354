"""Collections: named, ordered groups of checkpoints across runs (a release, a model family, an ablation), as the
public API returns them. The document that stores one is in _format/collection.py."""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass
from typing import Any

from .names import _check_segments


def check_collection_name(name: str) -> str:
    """A collection's name is one segment of letters, digits, '.', '_' and '-' (it names a document)."""
    _check_segments(name, kind="collection name", max_segments=1)
    return name


@dataclass(frozen=True)
class CollectionItem:
    """One checkpoint of a collection. `name` is its name now; `saved_name` the one it had when it was added.
    `exists` is False when the checkpoint is gone (removed by a ckptstore that did not know collections)."""

    id: str
    name: str
    saved_name: str
    note: str | None
    added_at: float
    exists: bool = True

    @property
    def short_id(self) -> str:
        return self.id[:12]

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "saved_name": self.saved_name, "note": self.note,
                "added_at": self.added_at, "exists": self.exists}


@dataclass(frozen=True)
class Collection:
    name: str
    description: str | None
    created_at: float
    updated_at: float
    items: tuple[CollectionItem, ...] = ()

    @property
    def ids(self) -> tuple[str, ...]:
        return tuple(i.id for i in self.items)

    @property
    def created_at_str(self) -> str:
        return _dt.datetime.fromtimestamp(self.created_at).strftime("%Y-%m-%d %H:%M")

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description, "created_at": self.created_at,
                "updated_at": self.updated_at, "items": [i.to_json() for i in self.items]}
