"""A collection's document, ``collections/<name>.json`` (docs/format.md)::

    {"format": 1, "name": "release-1", "description": "what ships in 1.0", "created_at": 1795977826.5,
     "updated_at": 1795977900.1,
     "items": [{"id": "<checkpoint id>", "name": "sst2/step-500", "note": "the one we ship", "added_at": ...}]}

Items are in the order they were added. `name` is the checkpoint's name when it was added (a rename keeps the id,
so readers show the current name); a checkpoint appears once.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from typing import Any

from .._core.hashing import is_digest
from ..errors import CorruptObject

FORMAT = 1
PREFIX = "collections/"


def key(name: str) -> str:
    return f"{PREFIX}{name}.json"


def name_of_key(k: str) -> str | None:
    stem = k[len(PREFIX):]
    return stem[:-5] if k.startswith(PREFIX) and stem.endswith(".json") and "/" not in stem else None


@dataclass(frozen=True)
class Entry:
    id: str
    name: str
    note: str | None
    added_at: float

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "note": self.note, "added_at": self.added_at}


@dataclass(frozen=True)
class CollectionDoc:
    name: str
    description: str | None
    created_at: float
    updated_at: float
    entries: tuple[Entry, ...] = field(default=())

    def ids(self) -> list[str]:
        return [e.id for e in self.entries]

    def with_entries(self, entries: list[Entry] | tuple[Entry, ...], now: float) -> "CollectionDoc":
        return replace(self, entries=tuple(entries), updated_at=now)

    def to_bytes(self) -> bytes:
        data = {"format": FORMAT, "name": self.name, "description": self.description, "created_at": self.created_at,
                "updated_at": self.updated_at, "items": [e.to_json() for e in self.entries]}
        return (json.dumps(data, indent=2, sort_keys=True, allow_nan=False) + "\n").encode()

    @classmethod
    def from_bytes(cls, data: bytes, *, key: str) -> "CollectionDoc":
        try:
            raw = json.loads(data)
            if not isinstance(raw, dict) or raw.get("format") != FORMAT:
                raise ValueError(f"not a format-{FORMAT} collection")
            entries = tuple(Entry(str(i["id"]), str(i["name"]), i.get("note"), float(i["added_at"]))
                            for i in raw["items"])
            if any(not is_digest(e.id) for e in entries):
                raise ValueError("an item's id is not a checkpoint id")
            return cls(str(raw["name"]), raw.get("description"), float(raw["created_at"]),
                       float(raw.get("updated_at", raw["created_at"])), entries)
        except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
            raise CorruptObject(
                f"Collection document {key} is damaged ({exc}).", path=key,
                hint="Restore it from a backup, or remove it and create the collection again; no checkpoint was"
                " touched.",
            ) from None
