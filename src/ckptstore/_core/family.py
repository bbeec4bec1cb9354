"""A model's family from lineage (`ckpt ls --family`): its base and everything made from it, as records."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .info import CheckpointInfo

# How a member came from its parent.
BASE, IMPORT, FINE_TUNE, CONVERSION, CONTINUED, DELETED = (
    "base", "import", "fine-tune", "conversion", "continued", "deleted")


@dataclass(frozen=True)
class FamilyMember:
    """One checkpoint of a family. `relation` says how it came from `parent`: 'fine-tune' (a checkpoint of
    another run made from it), 'conversion' (ckpt convert), 'continued' (the next checkpoint of the same run);
    the root is the 'base', or 'import' when it was imported. A deleted ancestor at the root is a member with no
    `info` and relation 'deleted'. `depth` indents the tree: a run's next checkpoint stays at its parent's
    depth, a branch goes one deeper."""

    id: str
    info: CheckpointInfo | None
    relation: str
    depth: int
    parent: str | None = None
    detail: str = ""  # e.g. "bf16", "hf cache sentence-transformers/all-MiniLM-L6-v2@main"
    is_ref: bool = False  # the checkpoint the family was asked for

    @property
    def name(self) -> str:
        return self.info.name if self.info is not None else f"{self.id[:12]} (deleted)"

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.info.name if self.info else None, "relation": self.relation,
                "depth": self.depth, "parent": self.parent, "detail": self.detail, "is_ref": self.is_ref,
                "step": self.info.step if self.info else None, "run": self.info.run if self.info else None}
