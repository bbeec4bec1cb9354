"""The change journal of a remote store: what lets a reader's index catch up with one LIST instead of a listing of
every manifest, name claim, tag and annotation.

Every change to a document the index shows (a name claim made or released, a tag set, moved or removed, an
annotation written, a deletion record) is followed by a small immutable journal document, created if absent:

    journal/<UTC nanoseconds, 20 digits>-<8 random hex>/<key of the changed document>

The key says everything (the body is empty), so a reader needs no GET for the entry itself, only for the documents
it names, and reads their *current* state: applying an entry twice, or entries out of order, is harmless. A reader
keeps in its index (the catalog's meta table) the newest entry time it has seen and the entries it applied in the
last skew window, and LISTs ``journal/`` from (newest seen - window) with S3's start-after: with nothing new that is
one request, however large the store. An entry written by a machine whose clock is behind by less than the window
is still seen.

What the journal cannot promise falls back to the full listing sync (Repository.sync): a reader with no journal
state, one whose last sync is older than the journal's retention (gc trims older entries), and every
``CKPT_JOURNAL_FULL_SYNC_SECONDS`` (10 minutes) in any case, which is what shows a change whose writer died between
the change and its entry, or whose clock was off by more than the window, or that an older ckptstore made.
"""

from __future__ import annotations

import dataclasses
import json
import secrets
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .._backend.protocols import Documents, Version
from .._core.failpoints import failpoint
from .._core.hashing import is_digest
from .._core.names import run_of
from ..config import env_seconds
from ..errors import CheckpointNotFound, CkptError, InvalidName
from . import annotations
from .documents import DELETED, NAMES, TAGS, manifest_key, name_of_key

if TYPE_CHECKING:
    from .catalog import Catalog
    from .repository import Repository

PREFIX = "journal/"
WATCHED = (NAMES, TAGS, annotations.PREFIX, DELETED)
_STATE = "journal"  # the catalog meta row holding this reader's position
_NS = 1_000_000_000


def skew_seconds() -> float:
    """How far behind a writer's clock may be for its entries to be seen at once (else at the next full sync)."""
    return env_seconds("CKPT_JOURNAL_SKEW_SECONDS", 600.0)


def retention_seconds() -> float:
    """How long gc keeps journal entries; a reader idle for longer does a full sync."""
    return env_seconds("CKPT_JOURNAL_RETENTION_SECONDS", 7 * 86400.0)


def full_sync_seconds() -> float:
    """A reader does a full listing sync at least this often, whatever the journal says."""
    return env_seconds("CKPT_JOURNAL_FULL_SYNC_SECONDS", 600.0)


def entry_key(changed: str, now_ns: int | None = None) -> str:
    stamp = time.time_ns() if now_ns is None else now_ns
    return f"{PREFIX}{stamp:020d}-{secrets.token_hex(4)}/{changed}"


def parse(key: str) -> tuple[int, str] | None:
    """(time in ns, changed key) of a journal entry's key; None for anything else under the prefix."""
    head, _, changed = key[len(PREFIX):].partition("/")
    stamp, _, rand = head.partition("-")
    if len(stamp) != 20 or not stamp.isdigit() or not rand or not changed.startswith(WATCHED):
        return None
    return int(stamp), changed


def supported(docs: Any) -> bool:
    """Documents that can list from an offset (object stores); a local store keeps its plain listing sync."""
    return callable(getattr(docs, "list_after", None))


class JournaledDocuments:
    """Documents that write a journal entry after each change to a document the index shows."""

    def __init__(self, inner: Documents) -> None:
        self.inner = inner

    def __getattr__(self, name: str) -> Any:  # list_meta, list_after, put and whatever else the backend offers
        return getattr(self.inner, name)

    def note(self, key: str) -> None:
        if not key.startswith(WATCHED):
            return
        failpoint("journal.write")
        try:
            self.inner.create(entry_key(key), b"")
        except CkptError:
            # The change itself is done and must not be reported as failed: readers see it at their next full
            # sync (at most CKPT_JOURNAL_FULL_SYNC_SECONDS later).
            pass

    def get(self, key: str) -> tuple[bytes, Version] | None:
        return self.inner.get(key)

    def create(self, key: str, data: bytes) -> bool:
        done = self.inner.create(key, data)
        if done:
            self.note(key)
        return done

    def replace(self, key: str, data: bytes, expected: Version) -> bool:
        done = self.inner.replace(key, data, expected)
        if done:
            self.note(key)
        return done

    def remove(self, key: str, expected: Version | None = None) -> bool:
        done = self.inner.remove(key, expected)
        if done:
            self.note(key)
        return done

    def list(self, prefix: str) -> Iterator[str]:
        return self.inner.list(prefix)


@dataclass
class _State:
    cursor: int = 0  # the newest entry time seen (ns, the writers' clocks)
    applied: set[str] = field(default_factory=set)  # entries applied at or after cursor - window
    synced_at: float = 0.0  # this reader's clock
    full_at: float = 0.0

    @classmethod
    def load(cls, cat: Catalog) -> _State | None:
        row = cat.db.execute("SELECT value FROM meta WHERE key = ?", (_STATE,)).fetchone()
        if row is None:
            return None
        try:
            doc = json.loads(row[0])
            return cls(int(doc["cursor"]), set(doc["applied"]), float(doc["synced_at"]), float(doc["full_at"]))
        except (ValueError, KeyError, TypeError):
            return None

    def save(self, cat: Catalog) -> None:
        doc = {"cursor": self.cursor, "applied": sorted(self.applied), "synced_at": self.synced_at,
               "full_at": self.full_at}
        with cat._tx():
            cat.db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (_STATE, json.dumps(doc)))

    def advance(self, keys: Iterable[str]) -> None:
        # An entry from a clock ahead of this one moves the cursor no further than now: else it would hide the
        # entries of correct clocks (older than cursor - window) until the next full sync.
        now = time.time_ns()
        for key in keys:
            got = parse(key)
            if got is not None:
                self.applied.add(key)
                self.cursor = max(self.cursor, min(got[0], now))
        floor = self.offset()
        self.applied = {k for k in self.applied if k > floor}

    def offset(self) -> str:
        return f"{PREFIX}{max(0, self.cursor - int(skew_seconds() * _NS)):020d}"


def _tail(docs: Any, offset: str) -> list[str]:
    return [k for k in docs.list_after(PREFIX, offset) if parse(k) is not None]


def begin_full(docs: Any) -> list[str]:
    """Before a full sync: the entries of the last window, which the full listing that follows makes applied."""
    now = time.time_ns()
    return _tail(docs, f"{PREFIX}{max(0, now - int(skew_seconds() * _NS)):020d}")


def end_full(cat: Catalog, listed: list[str], started: float) -> None:
    state = _State(cursor=int(started * _NS), synced_at=started, full_at=started)
    state.advance(listed)
    state.save(cat)


def incremental(repo: Repository, cat: Catalog) -> bool:
    """Catch the index up from the journal; False when a full sync is needed instead."""
    state = _State.load(cat)
    now = time.time()
    if (state is None or now - state.full_at >= full_sync_seconds() or now < state.full_at
            or now - state.synced_at >= retention_seconds() - skew_seconds()):
        return False
    listed = _tail(repo.docs, state.offset())
    new = [k for k in listed if k not in state.applied]
    if new:
        apply(repo, cat, {parse(k)[1] for k in new})
    state.advance(listed)
    state.synced_at = now
    state.save(cat)
    return True


def apply(repo: Repository, cat: Catalog, changed: set[str]) -> None:
    """Bring the index in line with the current state of the `changed` documents (their keys)."""
    names: set[str] = set()
    tags: set[tuple[str, str]] = set()
    notes: set[str] = set()
    deleted: set[str] = set()
    for key in changed:
        if key.startswith(NAMES):
            names.add(name_of_key(key))
        elif key.startswith(TAGS):
            parts = key[len(TAGS):].split("/")
            if len(parts) == 2:
                tags.add((parts[0], parts[1]))
        elif key.startswith(annotations.PREFIX):
            stem = key[len(annotations.PREFIX):]
            if stem.endswith(".json") and is_digest(stem[:-5]):
                notes.add(stem[:-5])
        elif key.startswith(DELETED) and is_digest(key[len(DELETED):]):
            deleted.add(key[len(DELETED):])
    # A deletion record comes before the manifest goes and the name is released: once the manifest is gone the
    # checkpoint is, even if its deleter died before releasing the name (as the full sync decides).
    for cid in deleted:
        if cat.has(cid) and repo.docs.get(manifest_key(cid)) is None:
            cat.remove_many([cid])
    claims: dict[str, str | None] = {}
    for name in sorted(names):
        try:
            claims[name] = repo.claimed_id(name)
        except InvalidName:
            continue
    added_runs: set[str] = set()
    for name, cid in claims.items():  # claims made first: a rename's new name before its old one's release
        if cid is None:
            continue
        indexed = cat.id_for_name(name)
        if indexed == cid or cid in repo.damaged_manifests:
            continue
        try:
            manifest = repo.read_manifest(cid)
        except CheckpointNotFound:
            if not repo.was_deleted(cid) and cid not in cat.lost():
                cat.add_lost([(cid, name)])
            continue
        except CkptError as exc:
            repo.damaged_manifests[cid] = exc.message
            continue
        if manifest.name != name:  # renamed since it was saved: the claim names it
            manifest = dataclasses.replace(manifest, name=name, run=run_of(name))
        stale = {c for c in (cid, indexed) if c is not None and cat.has(c)}
        cat.remove_many(stale)
        cat.add_many([(cid, manifest)])
        notes.add(cid)
        added_runs.add(run_of(name))
    for name, cid in claims.items():  # names released: deleted, or renamed away (then indexed anew above)
        if cid is not None:
            continue
        indexed = cat.id_for_name(name)
        if indexed is not None:
            cat.remove_many([indexed], lost=not repo.was_deleted(indexed))
    # A tag may have been applied before the checkpoint it names was indexed (entries of two writers out of
    # order): a run that gained a checkpoint has its tags read again.
    for run in added_runs:
        for key in repo.docs.list(f"{TAGS}{run}/"):
            parts = key[len(TAGS):].split("/")
            if len(parts) == 2:
                tags.add((parts[0], parts[1]))
    current = cat.tags()
    wanted = dict(current)
    for run, tag in tags:
        try:
            cid = repo.refs.get(run, tag)
        except InvalidName:
            continue
        if cid is not None:
            wanted[(run, tag)] = cid
        else:
            wanted.pop((run, tag), None)
    wanted = {k: v for k, v in wanted.items() if cat.has(v)}
    if wanted != current:
        cat.set_tags(wanted)
    if notes:
        stamps = cat.annotation_stamps()
        rows, removed = [], set()
        for cid in notes:
            got = repo.docs.get(annotations.key(cid))
            if got is None:
                if cid in stamps:
                    removed.add(cid)
            elif stamps.get(cid) != got[1]:
                doc = annotations._parse(got[0]) or {"metrics": {}, "metadata": {}, "message": None}
                rows.append((cid, got[1], doc["metrics"], doc["metadata"], doc["message"]))
        if rows or removed:
            cat.set_annotations(rows, removed=removed)


def trim(docs: Any, *, now: float | None = None) -> int:
    """Remove journal entries older than the retention (gc). Returns how many."""
    cutoff = f"{PREFIX}{int(((time.time() if now is None else now) - retention_seconds()) * _NS):020d}"
    old = sorted(k for k in docs.list(PREFIX) if k < cutoff)
    for key in old:
        docs.remove(key)
    return len(old)
