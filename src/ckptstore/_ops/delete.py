"""Deleting checkpoints: a plan first (what goes, which tags, the bytes gc can then free), then the removal.

Order (docs/format.md): the deletion records, the tags, the catalog rows, the manifests, then the name claims. A
crash part way leaves a checkpoint that is still whole (its claim and manifest both there), or one whose
manifest is gone and whose deletion is recorded, which every reader takes as deleted and the next save of that
name reclaims. Blobs stay until gc: another checkpoint may share them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .._core.info import CheckpointInfo
from .._core.names import RESERVED_TAGS
from .._repo import annotations
from . import collections, retention

if TYPE_CHECKING:
    from .._repo.repository import Repository


@dataclass(frozen=True)
class DeletePlan:
    """What `delete` removes: the checkpoints, the tags that go with them, and the bytes `gc` can then free. A run's
    `latest` and `best` go only with its last checkpoint; otherwise they move to what the run keeps."""

    checkpoints: tuple[CheckpointInfo, ...]
    tags: tuple[str, ...]  # "run:tag"
    reclaimable_bytes: int
    executed: bool = False
    # (checkpoint name, collection) for each collection a forced delete takes a checkpoint out of
    collections: tuple[tuple[str, str], ...] = ()

    def to_json(self) -> dict:
        return {
            "executed": self.executed,
            "checkpoints": [c.name for c in self.checkpoints],
            "ids": [c.id for c in self.checkpoints],
            "tags": list(self.tags),
            "reclaimable_bytes": self.reclaimable_bytes,
            "collections": [{"name": n, "collection": c} for n, c in self.collections],
        }


def delete(repo: "Repository", refs: str | Iterable[str], *, dry_run: bool = False, force: bool = False
           ) -> DeletePlan:
    if isinstance(refs, str):
        refs = [refs]
    ids = list(dict.fromkeys(repo.resolve(r) for r in refs))
    return delete_ids(repo, ids, dry_run=dry_run, force=force)


def _released(infos: tuple[CheckpointInfo, ...], held: dict[str, list[str]]) -> tuple[tuple[str, str], ...]:
    return tuple((c.name, col) for c in infos for col in held.get(c.id, ()))


def delete_ids(repo: "Repository", ids: list[str], *, dry_run: bool, force: bool = False) -> DeletePlan:
    """Remove the checkpoints `ids`. Those a collection holds are refused (InCollection), a dry run too, unless
    `force`, which takes them out of their collections first."""
    cat = repo.catalog
    infos = tuple(cat.infos(ids=ids))
    # latest and best of a run that keeps checkpoints move to one of those; they go only with its last one.
    emptied = {r for r in {c.run for c in infos} if cat.run_ids(r) <= set(ids)}
    tags = tuple(f"{r}:{t}" for (r, t), i in sorted(cat.tags().items())
                 if i in set(ids) and (t not in RESERVED_TAGS or r in emptied))
    held = collections.guard_delete(repo, ids, force=force)
    plan = DeletePlan(infos, tags, cat.exclusive_bytes(ids), collections=_released(infos, held))
    if dry_run or not ids:
        return plan
    with repo.writing(), repo.commit_lock():
        held = collections.guard_delete(repo, ids, force=force)  # again: one may have been added meanwhile
        collections.release(repo, held)
        remove_locked(repo, ids)
        # The runs' latest and best move to what is left, as after a prune, rather than vanish.
        retention.update_tags_locked(repo, {c.run for c in infos})
    return DeletePlan(infos, tags, plan.reclaimable_bytes, executed=True, collections=_released(infos, held))


def remove_locked(repo: "Repository", ids: list[str]) -> None:
    """Remove the checkpoints `ids`. The caller holds the commit lock (prune plans under it too)."""
    names = repo.catalog.names_by_ids(ids)
    repo.record_deleted([(cid, names.get(cid, "?")) for cid in ids])
    gone = set(ids)
    for (run, tag), cid in repo.refs.all().items():
        if cid in gone:
            repo.refs.remove(run, tag)
    repo.catalog.remove_many(ids)
    for cid in ids:
        repo.remove_manifest(cid)
        if cid in names:
            repo.release(names[cid])
    annotations.remove(repo.docs, ids)
    repo.sync()
