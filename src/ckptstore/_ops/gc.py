"""Garbage collection as a plan: which blobs no committed checkpoint references, how many bytes they free; then
the removal, of those blobs, of manifests no name claims (saves that died before their commit), and of leftovers
of interrupted writes.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .._core.failpoints import failpoint
from .._core.info import human_bytes
from .._repo import annotations
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
    tmp_files: tuple[Path, ...]  # leftovers of interrupted writes
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


def _writer_alive(name: str) -> bool:
    """Temporary names start with the writer's pid (see make_tmp_path). A reused pid only makes gc keep a file."""
    pid = name.split("-", 1)[0]
    if not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stale_tmp_files(tmp_dir: Path, *, grace: float) -> list[Path]:
    """What gc may delete in tmp/. Blob files (`*.blob`) are written only under the objects lock, which gc holds
    exclusively, so all of them are leftovers of interrupted saves. Anything else (a tag or policy being written,
    a folder materialized for a load) may belong to a command running now: it goes when the process that wrote
    it is gone, or after `grace` seconds."""
    if not tmp_dir.is_dir():
        return []
    now = time.time()
    out = []
    for p in tmp_dir.iterdir():
        try:
            if p.name.endswith(".blob") and p.is_file():
                out.append(p)
            elif not _writer_alive(p.name) or now - p.lstat().st_mtime >= grace:
                out.append(p)
        except FileNotFoundError:
            pass
    return sorted(out)


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
        claimed = set(repo.claims().values())
        referenced: set[str] = set()
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
                referenced.update(manifest.blob_refs())
            else:
                unclaimed.append(cid)
        garbage = tuple((d, s) for d, s, _ in repo.blobs.iter() if d not in referenced)
        tmp = tuple(stale_tmp_files(repo.tmp, grace=TMP_GRACE_SECONDS))
        plan = GcPlan(garbage, tmp, len(referenced), saves_in_progress=saving, manifests=tuple(unclaimed))
        if dry_run:
            return plan
        failpoint("gc.plan")
        for cid in unclaimed:  # before their blobs: a manifest never outlives what it lists
            repo.remove_manifest(cid)
        annotations.remove(repo.docs, annotations.ids(repo.docs) - claimed)  # left by a crashed delete
        for digest, _ in garbage:
            repo.blobs.delete(digest)
        for p in tmp:
            failpoint("gc.tmp")
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
    return GcPlan(garbage, tmp, len(referenced), executed=True, manifests=tuple(unclaimed))
