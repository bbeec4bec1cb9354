"""Slimming: a run's policy ``keep_training_state=N`` drops the optimizer, scheduler and RNG state of every
checkpoint but the newest N. The checkpoint keeps its name, step, tags, metrics, annotations and lineage, and stays
loadable and exportable; it can no longer be resumed (checkout refuses it and names the newest one that can be).

A manifest is immutable, so a slimmed checkpoint is a new manifest (a new id) that records what was dropped, by
which rule, and the id it replaces (``metadata.slimmed``). The switch is crash-safe with the name claim as the commit
point (docs/format.md, "Slim"):

1. the new manifest is written (unclaimed: invisible; gc removes it if we die here);
2. the old checkpoint's annotation is copied to the new id;
3. a deletion record ``deleted/<old id>`` is written (while the old manifest is claimed it is not read);
4. **the name claim is switched from the old id to the new one by compare-and-swap**: the commit point;
5. the old manifest is removed (readers trust a claim they already know while its manifest exists, so this is
   what makes every reader read the switched claim);
6. the tags that pointed at the old id are moved to the new one; latest/best are recomputed. gc then removes the
   blobs only the old manifest referenced.

A crash before 4 leaves the old checkpoint whole and visible. A crash between 4 and 5 leaves the slimmed checkpoint
committed while readers that knew the old id still show it (whole, as it was): gc reads every claim afresh, so it
removes the old manifest as unclaimed and never the new one; the next slim of the run does step 5 itself. A tag
not yet moved is moved by the next slim (it finds the tag's id in a checkpoint's ``slimmed.replaces``).
"""

from __future__ import annotations

import dataclasses
import time
from typing import TYPE_CHECKING

from .._core.failpoints import failpoint
from .._repo import annotations
from .._repo import documents as keys
from ..errors import TrainingStateDropped
from . import retention as _retention

if TYPE_CHECKING:
    from .._format.manifest import FileEntry, Manifest
    from .._repo.repository import Repository

SLIMMED = "slimmed"


def is_training_state(path: str) -> bool:
    """Optimizer, scheduler, grad-scaler and RNG state: what a resume needs and an evaluation does not."""
    base = path.rsplit("/", 1)[-1]
    return base.startswith(("optimizer", "scheduler", "rng_state")) or base in ("scaler.pt",)


def slim_plan(repo: "Repository", run: str, keep: int) -> list[str]:
    """Ids of the run's checkpoints, beyond the newest `keep` (by step), that still hold training state."""
    infos = sorted(repo.catalog.infos(run=run), key=lambda c: (c.step if c.step is not None else -1, c.created_at),
                   reverse=True)
    out = []
    for c in infos[keep:]:
        if SLIMMED in c.metadata:
            continue
        manifest = repo.read_manifest(c.id)
        if any(is_training_state(f.path) for f in manifest.files):
            out.append(c.id)
    return out


def slim(repo: "Repository", run: str, keep: int | None = None, *, dry_run: bool = False) -> list[str]:
    """Drop the training state of the run's checkpoints beyond the newest `keep` (default: the run's storage
    policy). Returns the names slimmed (or, with `dry_run`, that would be)."""
    if keep is None:
        settings = _retention.read_settings(repo, run)
        storage = settings.storage if settings is not None else None
        if storage is None or storage.keep_training_state is None:
            return []
        keep = storage.keep_training_state
    rule = f"keep_training_state={keep}"
    done = []
    with repo.writing(), repo.commit_lock():
        repo.sync()
        _finish_switches(repo, run)
        _repair_tags(repo, run)
        for cid in slim_plan(repo, run, keep):
            name = repo.catalog.names_by_ids([cid]).get(cid)
            if name is None:
                continue
            if not dry_run:
                _switch(repo, cid, name, rule)
            done.append(name)
        if done and not dry_run:
            repo.sync()
            _repair_tags(repo, run)
            _retention.update_tags_locked(repo, [run])
    return done


def _switch(repo: "Repository", cid: str, name: str, rule: str) -> str:
    old = repo.read_manifest(cid)
    kept: tuple[FileEntry, ...] = tuple(f for f in old.files if not is_training_state(f.path))
    dropped = [f.path for f in old.files if is_training_state(f.path)]
    record = {"rule": rule, "dropped": dropped, "dropped_bytes": sum(f.size for f in old.files if f.path in dropped),
              "replaces": cid, "at": round(time.time(), 3)}
    new: Manifest = dataclasses.replace(old, files=kept, metadata={**old.metadata, SLIMMED: record})
    failpoint("slim.manifest")
    new_id = repo.write_manifest(new)
    note = annotations.read(repo.docs, cid)
    if note is not None:
        annotations.write(repo.docs, new_id, {**note, "checkpoint": new_id})
    repo.record_deleted([(cid, name)])
    got = repo.docs.get(keys.name_key(name))
    if got is None or got[0].decode().strip() != cid:
        return cid  # renamed or deleted meanwhile: leave it (the new manifest stays unclaimed, for gc)
    failpoint("slim.claim")
    if not repo.docs.replace(keys.name_key(name), (new_id + "\n").encode(), got[1]):
        return cid
    # Readers trust a claim they know while its manifest exists: removing it makes every one read the claim again.
    failpoint("slim.release")
    repo.remove_manifest(cid)
    return new_id


def _finish_switches(repo: "Repository", run: str) -> None:
    """Step 5 of a slim killed after its commit: the old manifest of a name whose claim moved on."""
    stale = False
    for cid, name in repo.catalog.names_by_ids(repo.catalog.run_ids(run)).items():
        claimed = repo.claimed_id(name)
        if claimed is not None and claimed != cid and repo.was_deleted(cid):
            repo.remove_manifest(cid)
            stale = True
    if stale:
        repo.sync()


def _repair_tags(repo: "Repository", run: str) -> None:
    """Move tags that still point at a checkpoint a slim replaced (a crash between its commit and its tags)."""
    replaced = {c.metadata[SLIMMED].get("replaces"): c.id for c in repo.catalog.infos(run=run)
                if isinstance(c.metadata.get(SLIMMED), dict)}
    for (tag_run, tag), target in repo.refs.all().items():
        if tag_run == run and target in replaced:
            repo.refs.set(run, tag, replaced[target])


def replacement_of(repo: "Repository", cid: str) -> str | None:
    """The id of the slimmed checkpoint that replaced `cid` (for lineage), or None."""
    for c in repo.catalog.infos():
        record = c.metadata.get(SLIMMED)
        if isinstance(record, dict) and record.get("replaces") == cid:
            return c.id
    return None


def refuse_slimmed(repo: "Repository", manifest: "Manifest") -> None:
    """Checkout of a slimmed checkpoint: TrainingStateDropped naming the run's newest resumable checkpoint."""
    record = manifest.metadata.get(SLIMMED)
    if not isinstance(record, dict):
        return
    from .checkout import candidates, resumable

    newest = None
    for cid in candidates(repo, manifest.run):
        try:
            if resumable(repo.read_manifest(cid)):
                newest = repo.catalog.names_by_ids([cid]).get(cid)
                break
        except Exception:  # noqa: BLE001 - a damaged manifest is not a candidate
            continue
    raise TrainingStateDropped(manifest.name, record.get("rule", "?"), newest)
