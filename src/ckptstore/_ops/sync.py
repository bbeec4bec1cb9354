"""Sync: copy checkpoints from one store to another, as ``git push`` copies commits, through the storage seam only,
so it works between any two backends (a folder, memory, an object store).

What a copy carries: the manifest's very bytes (so the checkpoint keeps its id, and with it its lineage: the parent
id inside the manifest), its blobs, its annotation, its user tags, and the run's settings where the destination has
none. ``latest`` and ``best`` are never copied: the destination moves them as it does after any save, and applies
the run's retention policy (its own settings, or those copied from the source).

Write order at the destination, per checkpoint, the same as a save's (docs/format.md): the blobs the destination
lacks (each re-hashed on arrival and refused if it does not match its name; staged in a blob session, durable
then visible), then the manifest, then the annotation, then the name claim, created only if absent: the commit
point. A sync killed at any moment leaves nothing visible at the destination that was not there before (at worst
blobs and an unclaimed manifest for gc), and running it again finishes the work: what arrived is not sent twice.

What is never done: a name the destination has claimed for another checkpoint is not overwritten (a conflict,
reported); a checkpoint the destination deleted (its deletion record) is not brought back; a user tag pointing
elsewhere at the destination is not moved unless asked (`move_tags`).
"""

from __future__ import annotations

import dataclasses
import os
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .._core.failpoints import failpoint
from .._core.hashing import hash_bytes
from .._core.info import CheckpointInfo, human_bytes
from .._core.names import RESERVED_TAGS, run_of
from .._format.manifest import Manifest
from .._format.settings import RunSettings
from .._repo import annotations, leases
from .._repo.documents import manifest_key, settings_key, upsert
from .._repo.objects import missing_blobs
from ..errors import (CheckpointNotFound, CorruptObject, InvalidArgument, NameExists, PolicyError, RetentionWarning,
                      StoreReadOnly, SyncConflict)
from . import retention
from .save import _reclaim, _undo
from .space import check_room, store_full_on_enospc

if TYPE_CHECKING:
    from .._repo.repository import Repository

__all__ = ["Conflict", "SyncReport", "SyncedCheckpoint", "sync"]

# Blobs in flight at once: enough to keep an object store's connections busy, few enough that the chunks held in
# memory stay small (each is at most the source's chunk_bytes, 16 MiB by default).
TRANSFER_THREADS = 8


@dataclass(frozen=True)
class SyncedCheckpoint:
    """A checkpoint the sync copied, and what it sent for it (blobs already at the destination are not sent)."""

    name: str
    id: str
    blobs: int
    bytes: int

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "id": self.id, "blobs": self.blobs, "bytes": self.bytes}


@dataclass(frozen=True)
class Conflict:
    """Something the destination has that the sync would have to overwrite: it is left as it is."""

    kind: str  # "name": the name is claimed for another checkpoint; "tag": the user tag points elsewhere
    key: str  # the checkpoint name, or RUN:TAG
    source_id: str
    destination_id: str

    def __str__(self) -> str:
        if self.kind == "name":
            return (f"{self.key}: the destination has another checkpoint under this name"
                    f" ({self.destination_id[:12]}, the source's is {self.source_id[:12]})")
        return (f"{self.key}: points at {self.destination_id[:12]} at the destination, at {self.source_id[:12]}"
                " at the source")

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class SyncReport:
    """What a sync did (or, with `dry_run`, would do)."""

    source: str
    destination: str
    copied: tuple[SyncedCheckpoint, ...] = ()
    present: tuple[str, ...] = ()  # already at the destination (same id): skipped
    deleted: tuple[str, ...] = ()  # deleted at the destination before: not brought back
    not_kept: tuple[str, ...] = ()  # the destination's policy for the run would remove them at once: not sent
    gone: tuple[str, ...] = ()  # removed at the source while the sync ran
    conflicts: tuple[Conflict, ...] = ()
    tags: tuple[str, ...] = ()  # RUN:TAG set or moved at the destination
    settings: tuple[str, ...] = ()  # runs whose settings were copied (the destination had none)
    pruned: tuple[str, ...] = ()  # removed at the destination by the run's policy after the copy
    blobs_transferred: int = 0
    bytes_transferred: int = 0
    blobs_present: int = 0  # blobs the copied checkpoints needed that the destination already had
    bytes_present: int = 0
    dry_run: bool = False

    @property
    def ok(self) -> bool:
        return not self.conflicts

    @property
    def bytes_transferred_str(self) -> str:
        return human_bytes(self.bytes_transferred)

    def raise_for_conflicts(self) -> None:
        """SyncConflict naming each conflict, when there is one."""
        if self.conflicts:
            raise SyncConflict(self.destination, [str(c) for c in self.conflicts])

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.name] = [v.to_json() if hasattr(v, "to_json") else v for v in value] if isinstance(value, tuple) \
                else value
        return out


# -- what to copy -------------------------------------------------------------------------------------------------


def select(src: "Repository", refs: Iterable[str]) -> list[str]:
    """The ids `refs` name at the source, in order, each once: a reference names its checkpoint; a run's name
    that is no checkpoint's names every checkpoint of the run; no refs at all: every checkpoint."""
    refs = list(refs)
    cat = src.catalog
    if not refs:
        return [c.id for c in cat.infos()]
    ids: list[str] = []
    for ref in refs:
        try:
            ids.append(src.resolve(ref))
        except CheckpointNotFound:
            if ref not in cat.runs():
                raise
            ids.extend(c.id for c in cat.infos(run=ref))
    return list(dict.fromkeys(ids))


def _order(infos: Sequence[CheckpointInfo]) -> list[CheckpointInfo]:
    # Run by run, oldest step first: each commit moves the destination's latest and best as a save in that order
    # would, and a kill part way leaves the older checkpoints there, not a newest one without its history.
    return sorted(infos, key=lambda c: (c.run, c.step is None, c.step or 0, c.created_at, c.name))


# -- the sync -----------------------------------------------------------------------------------------------------


def sync(
    src: "Repository",
    dst: "Repository",
    refs: Iterable[str] = (),
    *,
    dry_run: bool = False,
    move_tags: bool = False,
    replace_settings: bool = False,
    on_progress: Callable[[int], None] | None = None,
    threads: int = TRANSFER_THREADS,
) -> SyncReport:
    """Copy the checkpoints `refs` name (default: all) from `src` to `dst`; see the module docstring."""
    if src.identity == dst.identity:
        raise InvalidArgument(f"Source and destination are the same store ({src.url!r}).",
                              hint="Give two different stores: 'ckpt sync SRC DST'.")
    if dst.read_only and not dry_run:
        raise StoreReadOnly(dst.url)
    if not src.read_only:
        with src.commit_lock():
            src.sync()
    ids = select(src, refs)
    infos = _order(src.catalog.infos(ids=ids))
    if dst.read_only:
        dst.sync()  # a dry run against a store this process cannot write: no lock to take
    else:
        with dst.commit_lock():
            dst.sync()
    src_tags = {key: cid for key, cid in src.refs.all().items() if key[1] not in RESERVED_TAGS}

    out: dict[str, Any] = {k: [] for k in ("copied", "present", "deleted", "not_kept", "gone", "conflicts", "tags",
                                           "settings", "pruned")}
    counts = {"blobs_transferred": 0, "bytes_transferred": 0, "blobs_present": 0, "bytes_present": 0}
    todo: list[CheckpointInfo] = []
    there: list[CheckpointInfo] = []  # at the destination already: its tags and annotation are still brought over
    for info in infos:
        state = _state_at(dst, info)
        if state == "copy":
            todo.append(info)
        elif state == "present":
            out["present"].append(info.name)
            there.append(info)
        elif state == "deleted":
            out["deleted"].append(info.name)
        else:
            out["conflicts"].append(Conflict("name", info.name, info.id, state))

    runs = sorted({c.run for c in todo} | {c.run for c in there})
    for run in runs:
        if _copy_settings(src, dst, run, dry_run=dry_run, replace=replace_settings):
            out["settings"].append(run)
    # A dry run copied no settings: plan with the source's where the sync would have copied them.
    not_kept = _not_kept(src, dst, todo, from_source=set(out["settings"]) if dry_run else set())
    out["not_kept"] = [c.name for c in todo if c.id in not_kept]
    todo = [c for c in todo if c.id not in not_kept]

    scheduled: set[str] = set()  # blobs a dry run counts as sent already (an earlier checkpoint of this sync)
    for info in todo:
        try:
            raw, manifest = _read_manifest(src, info.id)
        except CheckpointNotFound:
            out["gone"].append(info.name)
            continue
        needed = manifest.blob_refs()
        if dry_run:
            missing = {d: needed[d] for d in missing_blobs(dst.blobs, [d for d in needed if d not in scheduled])}
            scheduled.update(missing)
            out["copied"].append(SyncedCheckpoint(info.name, info.id, len(missing), sum(missing.values())))
            _count(counts, needed, missing)
            out["tags"].extend(_tags_to_set(src_tags, dst, info, move_tags, out["conflicts"]))
            continue
        try:
            with _source_hold(src, info.id):
                sent = _copy_one(src, dst, info, raw, manifest, src_tags, move_tags, out, threads, on_progress)
        except CheckpointNotFound:
            out["gone"].append(info.name)
            continue
        except NameExists:  # claimed at the destination meanwhile, by another writer
            held = dst.claimed_id(info.name) or "?"
            out["conflicts"].append(Conflict("name", info.name, info.id, held))
            continue
        if sent is None:
            out["deleted"].append(info.name)
            continue
        out["copied"].append(SyncedCheckpoint(info.name, info.id, len(sent), sum(sent.values())))
        _count(counts, needed, sent)

    if there:
        out["tags"].extend(_update_present(src, dst, there, src_tags, move_tags, out["conflicts"], dry_run=dry_run))
    if not dry_run:
        for run in sorted({c.run for c in todo}):
            try:
                result = retention.after_save(dst, run)
            except Exception as exc:  # noqa: BLE001 - the checkpoints are copied; say so rather than fail the sync
                warnings.warn(f"Synced run {run!r} to {dst.url}, but applying its retention policy there failed"
                              f" ({exc}); run 'ckpt prune {run}' on that store.", RetentionWarning, stacklevel=3)
                continue
            if result is not None and result.executed:
                out["pruned"].extend(d.checkpoint.name for d in result.plan.remove)
    return SyncReport(
        source=src.url, destination=dst.url, dry_run=dry_run, **counts,
        **{k: tuple(v) for k, v in out.items()},
    )


def _count(counts: dict[str, int], needed: dict[str, int], sent: dict[str, int]) -> None:
    counts["blobs_transferred"] += len(sent)
    counts["bytes_transferred"] += sum(sent.values())
    counts["blobs_present"] += len(needed) - len(sent)
    counts["bytes_present"] += sum(needed.values()) - sum(sent.values())


def _state_at(dst: "Repository", info: CheckpointInfo) -> str:
    """'present', 'deleted', 'copy', or the id of the other checkpoint holding the name (a conflict)."""
    cat = dst.catalog
    if cat.has(info.id):
        return "present"  # under this name, or under the one it was renamed to there
    if dst.was_deleted(info.id):
        return "deleted"
    held = dst.claimed_id(info.name)
    if held is None or held == info.id or _reclaimable(dst, held):
        return "copy"
    return held


def _reclaimable(dst: "Repository", held: str) -> bool:
    """A claim a delete cut short left (its manifest gone, the deletion recorded): the name is free."""
    return dst.docs.get(manifest_key(held)) is None and dst.was_deleted(held)


def _read_manifest(src: "Repository", cid: str) -> tuple[bytes, Manifest]:
    got = src.docs.get(manifest_key(cid))
    if got is None:
        raise CheckpointNotFound(cid)
    return got[0], Manifest.from_bytes(got[0], expected_id=cid)  # its hash checked: a damaged one is not copied


def _source_hold(src: "Repository", cid: str):
    """A lease on the checkpoint at the source while its blobs are read, so a prune there cannot remove it
    meanwhile (a store this process cannot write takes none: it can be pruned by others, and that shows as gone)."""
    return leases.hold(src, cid)


def _copy_settings(src: "Repository", dst: "Repository", run: str, *, dry_run: bool, replace: bool) -> bool:
    """Give the destination the run's settings (retention policy, what best follows) when it has none, or, with
    `replace`, whenever they differ (replication: the training store's settings are the run's)."""
    key = settings_key(run)
    got = src.docs.get(key)
    if got is None:
        return False
    there = dst.docs.get(key)
    if there is not None and (not replace or there[0] == got[0]):
        return False
    try:
        RunSettings.from_bytes(got[0], path=f"{src.url}/{key}", run=run)
    except PolicyError:
        return False  # unreadable settings are not spread; the checkpoints still are
    if dry_run:
        return True
    with dst.writing(), dst.commit_lock():
        failpoint("policy.write")
        if there is None:
            return dst.docs.create(key, got[0])
        return upsert(dst.docs, key, got[0])


def _not_kept(src: "Repository", dst: "Repository", todo: list[CheckpointInfo], *, from_source: set[str]) -> set[str]:
    """Incoming checkpoints the destination's policy for their run would remove right after the copy: sending them
    would only feed gc. Planned on what the run will hold there (its checkpoints and the incoming ones), with the
    run's settings at the destination (at the source for the runs in `from_source`)."""
    out: set[str] = set()
    for run in sorted({c.run for c in todo}):
        settings = retention.read_settings(src if run in from_source else dst, run)
        if settings is None or settings.policy is None:
            continue
        incoming = [c for c in todo if c.run == run]
        with dst.commit_lock():
            protected = leases.in_use(dst)
        plan = settings.policy.plan(dst.catalog.infos(run=run) + incoming, protected_ids=protected,
                                    run_best=settings.best)
        out.update(d.checkpoint.id for d in plan.remove if d.checkpoint.id in {c.id for c in incoming})
    return out


def _copy_one(src: "Repository", dst: "Repository", info: CheckpointInfo, raw: bytes, manifest: Manifest,
              src_tags: dict[tuple[str, str], str], move_tags: bool, out: dict[str, Any], threads: int,
              on_progress: Callable[[int], None] | None) -> dict[str, int] | None:
    """Send what the destination lacks of one checkpoint, then commit it there. Returns the blobs sent, or None
    when the destination deleted the checkpoint meanwhile."""
    needed = manifest.blob_refs()
    files = {b.digest: f.path for f in manifest.files for b in f.blobs}
    named = manifest if manifest.name == info.name else dataclasses.replace(manifest, name=info.name,
                                                                            run=run_of(info.name))
    with dst.writing(), store_full_on_enospc(dst.url, info.run):
        # Under the writing lock gc cannot run at the destination, so a blob found there stays until the claim.
        missing = {d: needed[d] for d in missing_blobs(dst.blobs, needed)}
        check_room(dst, sum(missing.values()), info.run)
        sent = _transfer(src, dst, missing, lambda d: f"{info.name} ({files.get(d, '?')})", threads, on_progress)
        failpoint("sync.commit")
        with dst.commit_lock():
            dst.sync()
            if dst.was_deleted(info.id):
                return None
            held = dst.claimed_id(info.name)
            if held not in (None, info.id) and not _reclaimable(dst, held):
                raise NameExists(info.name)
            failpoint("manifest.write")
            dst.docs.create(manifest_key(info.id), raw)
            _copy_annotation(src, dst, info.id)  # before the claim: the checkpoint appears with its metrics
            if not dst.claim(info.name, info.id) and dst.claimed_id(info.name) != info.id \
                    and not _reclaim(dst, info.name, info.id):
                raise NameExists(info.name)
            previous: dict[str, str | None] = {}
            try:
                for key in _tags_to_set(src_tags, dst, info, move_tags, out["conflicts"]):
                    tag = key.split(":", 1)[1]
                    previous[tag] = dst.refs.get(info.run, tag)
                    dst.refs.set(info.run, tag, info.id)
                    out["tags"].append(key)
                dst.catalog.add_many([(info.id, named)])
                previous.update({t: dst.refs.get(info.run, t) for t in RESERVED_TAGS})
                retention.update_tags_locked(dst, [info.run])
                dst.sync()
            except BaseException:
                _undo(dst, info.id, named, previous)
                raise
    return sent


def _transfer(src: "Repository", dst: "Repository", missing: dict[str, int], where: Callable[[str], str],
              threads: int, on_progress: Callable[[int], None] | None) -> dict[str, int]:
    """Read each missing blob from the source, check it against its hash, stage it at the destination, then make
    them all durable and visible (the session's commit). Returns the blobs this session wrote."""
    if not missing:
        return {}
    session = dst.blobs.session()
    sent: dict[str, int] = {}

    def refused(digest: str, what: str = "does not match its hash") -> CorruptObject:
        return CorruptObject(
            f"Blob {digest[:12]} of {where(digest)} at {src.url} {what}; it was not copied.",
            digest=digest,
            hint=f"Run 'ckpt verify' on {src.url} to list every damaged checkpoint; nothing damaged was copied.",
        )

    def one(item: tuple[str, int]) -> None:
        digest, size = item
        failpoint("sync.blob")
        # A local source's blob is mapped, not copied into memory first; others are read (one ranged GET each).
        try:
            data = (src.blobs.map([(digest, size)]) if size else None) or src.blobs.read(digest)
        except CorruptObject:  # a remote source checks each blob on arrival: said here of its checkpoint and file
            raise refused(digest, "is missing or does not match its hash") from None
        if len(data) != size or hash_bytes(data) != digest:
            raise refused(digest)
        if session.put(digest, data):
            sent[digest] = size
        if on_progress is not None:
            on_progress(size)

    try:
        workers = max(1, min(threads, len(missing), (os.cpu_count() or 1) * 4))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ckpt-sync") as pool:
            for _ in pool.map(one, sorted(missing.items())):
                pass
        session.commit()
    except BaseException:
        session.abort()
        raise
    return sent


def _tags_to_set(src_tags: dict[tuple[str, str], str], dst: "Repository", info: CheckpointInfo, move_tags: bool,
                 conflicts: list[Conflict]) -> list[str]:
    """The source's user tags on `info` that the destination should get (RUN:TAG); a tag pointing elsewhere there
    is a conflict unless `move_tags`."""
    keys: list[str] = []
    here = dst.catalog.names_by_ids([info.id]).get(info.id, info.name)
    for (run, tag), cid in sorted(src_tags.items()):
        if cid != info.id or run != run_of(here):
            continue  # not this checkpoint's, or it lives in another run at the destination (renamed there)
        current = dst.refs.get(run, tag)
        if current == cid:
            continue
        if current is not None and not move_tags and dst.catalog.has(current):
            conflicts.append(Conflict("tag", f"{run}:{tag}", cid, current))
            continue
        keys.append(f"{run}:{tag}")
    return keys


def _update_present(src: "Repository", dst: "Repository", there: list[CheckpointInfo],
                    src_tags: dict[tuple[str, str], str], move_tags: bool, conflicts: list[Conflict], *,
                    dry_run: bool) -> list[str]:
    """Bring the source's user tags and annotations of checkpoints already at the destination over (a tag set or
    a metric annotated at the source since the last sync; or what a sync killed after its claim did not write)."""
    if dry_run:
        return [key for info in there for key in _tags_to_set(src_tags, dst, info, move_tags, conflicts)]
    keys: list[str] = []
    # objects (shared) then commit, as annotate and tag take them: gc cannot run meanwhile.
    with dst.writing(), dst.commit_lock():
        dst.sync()
        for info in there:
            if not dst.catalog.has(info.id):
                continue  # deleted at the destination meanwhile
            for key in _tags_to_set(src_tags, dst, info, move_tags, conflicts):
                run, tag = key.split(":", 1)
                dst.refs.set(run, tag, info.id)
                keys.append(key)
            _copy_annotation(src, dst, info.id)
        dst.sync()
        retention.update_tags_locked(dst, {c.run for c in there})  # an annotation may have made another best
    return keys


def _copy_annotation(src: "Repository", dst: "Repository", cid: str) -> None:
    """Bring the source's annotation of `cid` over: created when the destination has none, else merged into it
    key by key as `annotate` merges (the source's values win), and left alone when that changes nothing."""
    got = src.docs.get(annotations.key(cid))
    if got is None:
        return
    doc = annotations.read(src.docs, cid)
    if doc is None:
        return
    if dst.docs.get(annotations.key(cid)) is None and dst.docs.create(annotations.key(cid), got[0]):
        return
    try:
        mine = annotations.read(dst.docs, cid) or {"metrics": {}, "metadata": {}, "message": None}
    except CorruptObject:
        mine = {"metrics": {}, "metadata": {}, "message": None}
    merged = {
        "metrics": {**mine["metrics"], **doc["metrics"]},
        "metadata": {**mine["metadata"], **doc["metadata"]},
        "message": doc["message"] if doc["message"] is not None else mine["message"],
    }
    if merged != mine:
        annotations.write(dst.docs, cid, {**merged, "updated_at": time.time()})
