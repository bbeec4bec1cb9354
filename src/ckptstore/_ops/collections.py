"""Collections: named, ordered groups of checkpoints across runs, one document each (_format/collection.py).

Every write is a compare-and-swap of that document (created if absent, else replaced at the version read), under
the commit lock, the lock a delete and a prune decide under: so a checkpoint cannot be added to a collection while a
delete removes it, and a prune or delete always sees every collection as it is. Checkpoints are kept by id (a rename
keeps the id), so a collection follows its checkpoints through renames.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from .._core.collection import Collection, CollectionItem, check_collection_name
from .._core.suggest import close_matches
from .._format.collection import PREFIX, CollectionDoc, Entry, key, name_of_key
from ..errors import CheckpointNotFound, CollectionExists, CollectionNotFound, InCollection, InvalidArgument
from ..errors import ReferenceError_

if TYPE_CHECKING:
    from .._repo.repository import Repository


def _names(repo: "Repository") -> list[str]:
    return sorted(n for k in repo.docs.list(PREFIX) if (n := name_of_key(k)) is not None)


def _read(repo: "Repository", name: str) -> tuple[CollectionDoc, object]:
    got = repo.docs.get(key(check_collection_name(name)))
    if got is None:
        raise CollectionNotFound(name, close_matches(name, _names(repo), cutoff=0.5))
    return CollectionDoc.from_bytes(got[0], key=key(name)), got[1]


def _update(repo: "Repository", name: str, change: Callable[[CollectionDoc], CollectionDoc | None]) -> CollectionDoc:
    """Apply `change` to the collection's document by compare-and-swap, again if another writer replaced it in
    between. `change` returns None to leave the document as it is."""
    while True:
        doc, version = _read(repo, name)
        new = change(doc)
        if new is None:
            return doc
        if repo.docs.replace(key(name), new.to_bytes(), version):
            return new


def _record(repo: "Repository", doc: CollectionDoc) -> Collection:
    names = repo.catalog.names_by_ids(doc.ids())
    items = tuple(CollectionItem(e.id, names.get(e.id, e.name), e.name, e.note, e.added_at, e.id in names)
                  for e in doc.entries)
    return Collection(doc.name, doc.description, doc.created_at, doc.updated_at, items)


def create(repo: "Repository", name: str, description: str | None = None) -> Collection:
    check_collection_name(name)
    now = time.time()
    doc = CollectionDoc(name, description, now, now)
    with repo.commit_lock():
        if not repo.docs.create(key(name), doc.to_bytes()):
            raise CollectionExists(name)
    return _record(repo, doc)


def add(repo: "Repository", name: str, ref: str, note: str | None = None) -> tuple[Collection, bool]:
    """Append the checkpoint `ref` names to the collection (its note replaced when it is there already).
    Returns the collection and whether the checkpoint was added (False: it was there)."""
    cid = repo.resolve(ref)
    added = False

    def change(doc: CollectionDoc) -> CollectionDoc | None:
        nonlocal added
        now = time.time()
        if cid in doc.ids():
            added = False
            if note is None:
                return None
            return doc.with_entries([Entry(e.id, e.name, note, e.added_at) if e.id == cid else e
                                     for e in doc.entries], now)
        added = True
        return doc.with_entries([*doc.entries, Entry(cid, repo.info(cid).name, note, now)], now)

    with repo.commit_lock():
        repo.sync()
        if not repo.catalog.has(cid):  # deleted since the reference was resolved
            raise CheckpointNotFound(ref)
        doc = _update(repo, name, change)
    return _record(repo, doc), added


def _entry_for(repo: "Repository", doc: CollectionDoc, ref: str) -> str:
    """The id of the collection's entry `ref` names: a reference to a stored checkpoint, or the name an entry was
    added under, or a prefix of its id (for an entry whose checkpoint is gone)."""
    try:
        cid = repo.resolve(ref)
    except ReferenceError_:
        cid = None
    if cid not in doc.ids():
        matches = [e.id for e in doc.entries if e.name == ref or (len(ref) >= 4 and e.id.startswith(ref.lower()))]
        if len(matches) != 1:
            shown = [e.name for e in doc.entries]
            raise ReferenceError_(
                f"{ref!r} is not in collection {doc.name!r}." + ("" if not shown else
                                                                 f" It holds {', '.join(shown[:5])}"
                                                                 + (", ..." if len(shown) > 5 else "") + "."),
                ref=ref, candidates=tuple(close_matches(ref, shown)),
                hint=f"Run 'ckpt collection show {doc.name}' to see its checkpoints.",
            )
        cid = matches[0]
    return cid


def remove(repo: "Repository", name: str, refs: Iterable[str]) -> tuple[Collection, list[str]]:
    """Take the checkpoints `refs` name out of the collection (the checkpoints stay). Returns the collection and
    the names taken out."""
    refs = [refs] if isinstance(refs, str) else list(refs)
    if not refs:
        raise InvalidArgument("Nothing to take out.", hint=f"Name the checkpoints: 'ckpt collection rm {name} REF'.")
    with repo.commit_lock():
        repo.sync()
        doc, _ = _read(repo, name)
        ids = {_entry_for(repo, doc, r) for r in refs}
        gone = [e.name for e in doc.entries if e.id in ids]
        doc = _update(repo, name, lambda d: d.with_entries([e for e in d.entries if e.id not in ids], time.time()))
    return _record(repo, doc), gone


def delete(repo: "Repository", name: str) -> Collection:
    """Delete the collection (never its checkpoints, which retention may then remove as usual)."""
    with repo.commit_lock():
        doc, version = _read(repo, name)
        if not repo.docs.remove(key(name), version):
            doc, version = _read(repo, name)  # changed in between: delete what it is now
            repo.docs.remove(key(name))
    return _record(repo, doc)


def get(repo: "Repository", name: str) -> Collection:
    return _record(repo, _read(repo, name)[0])


def all_collections(repo: "Repository") -> list[Collection]:
    out = []
    for name in _names(repo):
        try:
            out.append(get(repo, name))
        except CollectionNotFound:  # deleted while listing
            continue
    return out


def membership(repo: "Repository", ids: Iterable[str] | None = None) -> dict[str, list[str]]:
    """checkpoint id -> the collections holding it (of `ids`, or every one). A damaged collection document raises
    CorruptObject: a prune or delete that cannot read it cannot know what it protects."""
    wanted = None if ids is None else set(ids)
    out: dict[str, list[str]] = {}
    for name in _names(repo):
        got = repo.docs.get(key(name))
        if got is None:
            continue
        for cid in CollectionDoc.from_bytes(got[0], key=key(name)).ids():
            if wanted is None or cid in wanted:
                out.setdefault(cid, []).append(name)
    return out


def pins(repo: "Repository") -> dict[str, list[str]]:
    """What retention keeps for collections: id -> ["in collection NAME", ...]."""
    return {cid: [f"in collection {n}" for n in names] for cid, names in membership(repo).items()}


def guard_delete(repo: "Repository", ids: list[str], *, force: bool) -> dict[str, list[str]]:
    """Before a delete of `ids` (the caller holds the commit lock when it is about to act): refuse when
    collections hold any of them, unless `force`, which takes them out of those collections first (so a crash in
    between leaves the checkpoint, out of its collections, never a collection holding a deleted checkpoint).
    Returns id -> collections it was (or, unforced, is) in."""
    held = membership(repo, ids)
    if not held:
        return {}
    if not force:
        names = repo.catalog.names_by_ids(list(held))
        raise InCollection({cid: (names.get(cid, cid[:12]), cols) for cid, cols in held.items()})
    return held


def release(repo: "Repository", held: dict[str, list[str]]) -> None:
    """Take the checkpoints of `held` (id -> collections) out of those collections; the caller holds the commit
    lock."""
    by_collection: dict[str, set[str]] = {}
    for cid, cols in held.items():
        for col in cols:
            by_collection.setdefault(col, set()).add(cid)
    for col, ids in sorted(by_collection.items()):
        try:
            _update(repo, col, lambda d, ids=ids: d.with_entries([e for e in d.entries if e.id not in ids],
                                                                 time.time()))
        except CollectionNotFound:  # deleted meanwhile: nothing to take out
            continue
