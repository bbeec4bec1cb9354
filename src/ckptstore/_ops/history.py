"""A run's history as the web view draws it: what each checkpoint added to the store over time, against what
plain folders would have taken, and the checkpoints the store deleted (pruned) from the run.

Both come from the index and the deletion records; no manifest or blob is read."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .._core.info import CheckpointInfo
from .._core.names import run_of, step_from_name
from .._repo.documents import DELETED

if TYPE_CHECKING:
    from .._repo.repository import Repository


@dataclass(frozen=True)
class StorageStep:
    """One checkpoint of a run, in save order: its own size, the bytes of blobs no checkpoint of the run saved
    before it references (`new_bytes`), and the run's totals up to it, as plain folders and as stored."""

    id: str
    name: str
    created_at: float
    logical_bytes: int
    new_bytes: int
    folders_bytes: int
    stored_bytes: int

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "created_at": self.created_at, "logical_bytes": self.logical_bytes,
                "new_bytes": self.new_bytes, "folders_bytes": self.folders_bytes, "stored_bytes": self.stored_bytes}


@dataclass(frozen=True)
class DeletedCheckpoint:
    """A checkpoint the store deleted (rm, prune): all a deletion record keeps is its id and name."""

    id: str
    name: str
    run: str
    step: int | None

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "run": self.run, "step": self.step}


@dataclass(frozen=True)
class RunSummary:
    """A run at a glance, from the index alone: its checkpoints, highest step, size as plain folders, last save,
    and the checkpoint ``RUN:best`` points at (None before any checkpoint records the run's metric)."""

    run: str
    checkpoints: int
    latest_step: int | None
    logical_bytes: int
    last_saved: float
    best: CheckpointInfo | None


def run_summaries(repo: "Repository") -> list[RunSummary]:
    rows = repo.catalog.run_summary_rows()
    best_ids = {run: cid for (run, tag), cid in repo.catalog.tags().items() if tag == "best"}
    best = {c.id: c for c in repo.catalog.infos(ids=best_ids.values())} if best_ids else {}
    return [RunSummary(run, n, step, logical, last, best.get(best_ids.get(run, "")))
            for run, n, step, logical, last in rows]


def storage_growth(repo: "Repository", run: str) -> list[StorageStep]:
    """The run's checkpoints that are still stored, oldest first, with what each added. Deleted checkpoints are
    left out (their blobs may be gone), so the totals are those of the run as it stands."""
    rows = repo.catalog.run_growth_rows(run)
    if not rows:
        repo.check_run(run)
    folders = stored = 0
    out = []
    for cid, name, created_at, logical, new in rows:
        folders += logical
        stored += new
        out.append(StorageStep(cid, name, created_at, logical, new, folders, stored))
    return out


def deleted_checkpoints(repo: "Repository", run: str | None = None,
                        known: dict[str, str] | None = None) -> list[DeletedCheckpoint]:
    """The checkpoints the store deleted (of `run`, when given), from the deletion records. `known` (id -> name)
    spares reading records already read: a record never changes once written."""
    out = []
    for key in repo.docs.list(DELETED):
        cid = key[len(DELETED):]
        name = (known or {}).get(cid)
        if name is None:
            got = repo.docs.get(key)
            if got is None:
                continue
            name = got[0].decode("utf-8", "replace").strip()
        owner = run_of(name)
        if run is None or owner == run:
            out.append(DeletedCheckpoint(cid, name, owner, step_from_name(name)))
    return out
