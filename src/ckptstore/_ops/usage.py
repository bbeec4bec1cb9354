"""Disk usage: what the checkpoints would take as plain folders against what the store holds, per run."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._core.info import CheckpointInfo, DiskUsage, RunUsage
from .slim import replacement_of

if TYPE_CHECKING:
    from .._repo.repository import Repository


def du(repo: "Repository") -> DiskUsage:
    cat = repo.catalog
    runs = cat.run_summary_rows()  # sums in SQLite: no checkpoint's JSON parsed
    stored, blobs = cat.stored_bytes()
    unique = cat.run_unique_bytes()
    return DiskUsage(
        logical_bytes=sum(logical for _, _, _, logical, _ in runs),
        stored_bytes=stored,
        checkpoints=sum(n for _, n, _, _, _ in runs),
        blobs=blobs,
        runs=tuple(RunUsage(run, n, logical, unique.get(run, 0)) for run, n, _, logical, _ in runs),
    )


def lineage(repo: "Repository", ref: str) -> list[CheckpointInfo | str]:
    """The checkpoint, its parent, grandparent, ...; an id string where an ancestor has been deleted."""
    chain: list[CheckpointInfo | str] = []
    cid: str | None = repo.resolve(ref)
    seen = set()
    while cid and cid not in seen:
        seen.add(cid)
        infos = repo.catalog.infos(ids=[cid])
        if not infos and (replaced := replacement_of(repo, cid)) is not None:
            infos = repo.catalog.infos(ids=[replaced])  # the parent was slimmed: the same checkpoint, a new id
        if not infos:
            chain.append(cid)
            break
        chain.append(infos[0])
        cid = infos[0].parent
    return chain
