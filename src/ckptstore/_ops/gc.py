"""Garbage collection as a plan: which blobs no committed checkpoint references, how many bytes they free; then
the removal, of those blobs, of manifests no name claims (saves that died before their commit), and of leftovers
of interrupted writes.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .._core.failpoints import failpoint
from .._core.info import human_bytes
from .._repo import annotations, journal
from .._repo.encoded import delta_bases
from ..errors import CkptError, CorruptObject, StoreLocked

if TYPE_CHECKING:
    from .._repo.repository import Repository

# Temporary files not written under the objects lock (tag and policy writes, folders materialized for a load) may
# belong to a command running now; gc leaves them this long.
TMP_GRACE_SECONDS = 3600.0


@dataclass(frozen=True)
class GcPlan:
    """What `gc` removes. Nothing happens until the store executes it (`Store.gc(dry_run=False)`)."""

    blobs: tuple[tuple[str, int], ...]  # (digest, size) of unreferenced blobs
    tmp_files: tuple[str, ...]  # leftovers of interrupted writes (the backend's temporary files)
    referenced_blobs: int
    executed: bool = False
    saves_in_progress: bool = False  # a dry run that found saves running: their uncommitted blobs are counted
    manifests: tuple[str, ...] = ()  # ids of manifests no name claims (a save that died before its commit)

    @property
    def bytes_freed(self) -> int:
        return sum(size for _, size in self.blobs)

    @property
    def bytes_freed_str(self) -> str:
        return human_bytes(self.bytes_freed)

    def to_json(self) -> dict:
        return {
            "executed": self.executed,
            "blobs_removed": len(self.blobs),
            "bytes_freed": self.bytes_freed,
            "tmp_files_removed": len(self.tmp_files),
            "referenced_blobs": self.referenced_blobs,
            "saves_in_progress": self.saves_in_progress,
            "manifests_removed": len(self.manifests),
        }


def gc(repo: "Repository", *, dry_run: bool = False, timeout: float = 60.0) -> GcPlan:
    """Delete blobs that no committed checkpoint references, unclaimed manifests and interrupted writes."""
    with contextlib.ExitStack() as held:
        held.enter_context(repo.coord.lock("gate", timeout=timeout))
        saving = False
        try:
            held.enter_context(repo.coord.lock("objects", timeout=0 if dry_run else timeout))
        except StoreLocked:
            if not dry_run:
                raise
            # A dry run does not wait for saves in progress: it reports, counting the blobs they have written
            # but not committed yet (gc itself waits for them and keeps those), and says so.
            held.enter_context(repo.coord.lock("objects", exclusive=False, timeout=timeout))
            saving = True
        repo.sync()
        lost = repo.catalog.lost()
        if lost and not dry_run:
            names = ", ".join(repr(n) for n in list(lost.values())[:3])
            raise CorruptObject(
                f"{len(lost)} checkpoint(s) lost their manifest ({names}); gc stops so as not to delete their"
                " blobs.",
                hint="Restore the manifests from a backup, or run 'ckpt fsck --reindex' to accept the loss.",
            )
        # No save is in flight now (each holds the objects lock shared), so every blob no claimed manifest
        # references, every unclaimed manifest and every temporary blob file is garbage.
        claimed = set(repo.claims(fresh=True).values())
        referenced: set[str] = set()
        raw_sizes: dict[str, int] = {}
        unclaimed = []
        for cid in sorted(repo.manifest_ids()):
            try:
                manifest = repo.read_manifest(cid)
            except CkptError as exc:
                raise CorruptObject(
                    f"Manifest {cid[:12]} cannot be read ({exc.message}); gc stops so as not to delete its blobs.",
                    digest=cid,
                    hint="Run 'ckpt verify' and restore or remove that manifest, then run gc again.",
                ) from None
            if cid in claimed:
                raw_sizes.update(manifest.blob_refs())
            else:
                unclaimed.append(cid)
        grace = getattr(repo.backend, "blob_grace", 0.0)  # 0 locally: the objects lock alone keeps saves safe
        young = time.time() - grace
        listed = tuple(repo.blobs.iter())
        stored = {d: s for d, s, _ in listed}
        referenced.update(raw_sizes)
        # A packed blob may be a delta against a blob no checkpoint lists any more: that base stays while it does.
        referenced |= delta_bases(repo.blobs, raw_sizes, stored)
        garbage = tuple((d, s) for d, s, mtime in listed if d not in referenced and (not grace or mtime < young))
        tmp = tuple(repo.backend.leftovers(grace=TMP_GRACE_SECONDS))
        plan = GcPlan(garbage, tmp, len(referenced), saves_in_progress=saving, manifests=tuple(unclaimed))
        if dry_run:
            return plan
        failpoint("gc.plan")
        for cid in unclaimed:  # before their blobs: a manifest never outlives what it lists
            repo.remove_manifest(cid)
        annotations.remove(repo.docs, annotations.ids(repo.docs) - claimed)  # left by a crashed delete
        for digest, _ in garbage:
            repo.blobs.delete(digest)
        repo.backend.remove_leftovers(tmp)
        if repo.journaled:
            journal.trim(repo.docs)
    return GcPlan(garbage, tmp, len(referenced), executed=True, manifests=tuple(unclaimed))
