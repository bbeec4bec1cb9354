"""`Repository`: one store's storage, catalog, locks and references, for the operations in ``_ops`` to act on.

It owns no policy and no feature: it knows where each document lives, how the catalog (a SQLite cache) is kept in
line with the documents (the truth), which locks a writer takes, and how a reference resolves to an id.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

from .._backend.protocols import Backend
from .._core.failpoints import failpoint
from .._core.hashing import is_digest
from .._core.info import CheckpointInfo
from .._core.names import run_of, split_tag_ref
from .._core.suggest import close_matches
from .._format.manifest import Manifest, manifest_id
from ..config import StoreConfig
from ..errors import AmbiguousReference, CheckpointNotFound, CkptError, InvalidArgument, StoreLocked
from . import documents as keys
from . import format1
from . import annotations
from . import journal
from . import modelindex
from .catalog import Catalog, open_catalog
from .encoded import EncodedBlobs
from .refs import Refs

MIN_ID_PREFIX = 4
# How long a reader's refresh waits for another process's index transaction (they last milliseconds).
READER_PATIENCE = 2.0


class Repository:
    def __init__(self, backend: Backend, config: StoreConfig) -> None:
        self.backend = backend
        self.blobs = EncodedBlobs(backend.blobs)  # raw bytes whatever the stored form (packed blobs decode)
        # In object storage every change the index shows is journaled, so readers catch up with one LIST.
        self.journaled = journal.supported(backend.documents)
        self.docs = journal.JournaledDocuments(backend.documents) if self.journaled else backend.documents
        self.coord = backend.coordination
        self.config = config
        self.scratch = Path(backend.scratch)
        self.tmp = self.scratch / "tmp"
        # This process cannot write the store (read-only mount, another user's): reads use an index of their own,
        # writes fail with StoreReadOnly.
        self.read_only = not backend.writable
        self.refs = Refs(self.docs)
        self._catalog: Catalog | None = None
        self.damaged_manifests: dict[str, str] = {}  # id -> why it could not be indexed
        self._commit_owner: int | None = None  # the thread holding the commit lock through this repository
        self._writing_threads: set[int] = set()  # threads holding the objects lock through `writing`
        self.upgraded_from: int | None = None  # the format this repository upgraded the store from (opening.py)

    @property
    def url(self) -> str:
        return self.backend.url

    @property
    def identity(self) -> str:
        """The store's location and id (format 1 stores, which have no id: the version of their store.json)."""
        got = self.docs.get(keys.STORE_JSON)
        return f"{self.url}\0{self.config.id or (got[1] if got else '')}"

    def close(self) -> None:
        if self._catalog is not None:
            self._catalog.close()
            self._catalog = None

    # -- locks ----------------------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def writing(self) -> Iterator[None]:
        """Held for a whole save: keeps gc from deleting blobs this save has written or decided to reuse. The gate,
        taken briefly, lets a waiting gc in before a stream of saves could starve it."""
        me = threading.get_ident()
        if me in self._writing_threads:
            # A staged save commits inside the hold it took before its processes staged blobs (Store.staging):
            # taking the gate again there would wait for a gc that itself waits for this hold.
            yield
            return
        with self.coord.lock("gate", exclusive=False):
            pass
        with self.coord.lock("objects", exclusive=False):
            self._writing_threads.add(me)
            try:
                yield
            finally:
                self._writing_threads.discard(me)

    @contextlib.contextmanager
    def commit_lock(self) -> Iterator[None]:
        # Re-entrant for the thread that holds it (code that holds it calls helpers that take it too); another
        # thread of this process waits like any other process.
        me = threading.get_ident()
        if self._commit_owner == me:
            yield
            return
        with self.coord.lock("commit"):
            self._commit_owner = me
            try:
                yield
            finally:
                self._commit_owner = None

    # -- manifests and names ----------------------------------------------------------------------------------------
    def read_manifest(self, cid: str) -> Manifest:
        if self.journaled and self._catalog is not None and self._catalog.has(cid):
            # Indexed, so there at the last sync; with no listing of manifests to vouch for the local copy, the
            # copy's bytes hashing to the id do.
            data = self.backend.documents.copy(keys.manifest_key(cid))
            if data is not None:
                try:
                    return Manifest.from_bytes(data, expected_id=cid)
                except CkptError:
                    pass
        got = self.docs.get(keys.manifest_key(cid))
        if got is None:
            raise CheckpointNotFound(cid)
        return Manifest.from_bytes(got[0], expected_id=cid)

    def write_manifest(self, manifest: Manifest, data: bytes | None = None) -> str:
        """Store the manifest (immutable: a second write of the same bytes is a no-op). Returns its id. `data`: its
        bytes, when the caller has encoded it already (a large model's manifest takes milliseconds to encode)."""
        data = manifest.to_bytes() if data is None else data
        cid = manifest_id(data)
        failpoint("manifest.write")
        self.docs.create(keys.manifest_key(cid), data)
        return cid

    def remove_manifest(self, cid: str) -> None:
        failpoint("delete.manifest")
        self.docs.remove(keys.manifest_key(cid))

    def manifest(self, ref: str) -> Manifest:
        """The manifest of the checkpoint `ref` names, under the name it has now (a rename keeps the manifest)."""
        cid = self.resolve(ref)
        manifest = self.read_manifest(cid)
        name = self.catalog.names_by_ids([cid]).get(cid, manifest.name)
        return manifest if name == manifest.name else dataclasses.replace(manifest, name=name, run=run_of(name))

    def manifest_ids(self) -> set[str]:
        out = set()
        for key in self.docs.list(keys.MANIFESTS):
            stem = key[len(keys.MANIFESTS):]
            if stem.endswith(".json") and is_digest(stem[:-5]):
                out.add(stem[:-5])
        return out

    def claim(self, name: str, cid: str) -> bool:
        """Claim `name` for checkpoint `cid`: the commit point of a save. False when the name is taken."""
        failpoint("name.claim")
        return self.docs.create(keys.name_key(name), (cid + "\n").encode())

    def claimed_id(self, name: str) -> str | None:
        """The id `name` is claimed for, read from the store (not the catalog)."""
        got = self.docs.get(keys.name_key(name))
        text = got[0].decode("ascii", "replace").strip() if got else ""
        return text if is_digest(text) else None

    def release(self, name: str) -> None:
        failpoint("name.release")
        self.docs.remove(keys.name_key(name))

    def claims(self, on_disk: set[str] | None = None, *, fresh: bool = False) -> dict[str, str]:
        """name -> id of every claimed name. Claims change only by a slim (_ops/slim.py), which removes the old
        manifest right after switching the claim, so only claims the catalog does not know with a live manifest
        are read; `fresh` reads every claim (gc: a slim killed between its switch and that removal)."""
        cat = self._catalog
        if self.config.format < 2:
            return format1.claims(self, cat.names_by_id() if cat is not None else {})
        on_disk = self.manifest_ids() if on_disk is None else on_disk
        known = {name: cid for cid, name in cat.names_by_id().items()} if cat is not None else {}
        out: dict[str, str] = {}
        for key in self.docs.list(keys.NAMES):
            name = keys.name_of_key(key)
            cid = known.get(name)
            if fresh or cid is None or cid not in on_disk:
                cid = self.claimed_id(name)
            if cid is not None:
                out[name] = cid
        return out

    def record_deleted(self, items: Iterable[tuple[str, str]]) -> None:
        """One deletion record per checkpoint, durable before the delete removes anything: what tells a checkpoint
        the store deleted from one lost behind its back."""
        failpoint("delete.log")
        for cid, name in items:
            self.docs.create(keys.deleted_key(cid), (name + "\n").encode())

    def was_deleted(self, cid: str) -> bool:
        if self.config.format < 2:
            return any(c == cid for c, _ in format1.deletions(self))
        return self.docs.get(keys.deleted_key(cid)) is not None

    # -- the catalog -------------------------------------------------------------------------------------------------
    @property
    def catalog(self) -> Catalog:
        if self._catalog is None:
            self.refresh()
        return self._catalog  # type: ignore[return-value]

    def _open_catalog(self) -> Catalog:
        if self._catalog is None:
            self._catalog = open_catalog(self.scratch, read_only=self.read_only, identity=self.identity,
                                         store_id=self.config.id)
        return self._catalog

    def refresh(self) -> bool:
        """`sync` for a reader: never waits for a writer. False when the index stayed write-locked for
        READER_PATIENCE seconds (a process stopped inside an index transaction): the catalog is then served as the
        last commit left it, a consistent snapshot, and the next refresh tries again.

        No commit lock either: a reader waiting for it starved behind a writer saving in a tight loop, and one
        stopped in its commit blocked them all. sync reads the catalog before the documents, and writes the tags
        only if no one changed them since, so that racing a commit it can neither drop the new checkpoint, call it
        lost, nor move a tag back. A sync that races a delete may index a checkpoint about to go; the next sync
        drops it (its deletion record is written first), so the race cannot make a checkpoint look lost."""
        cat = self._open_catalog()
        with cat.patience(READER_PATIENCE):
            try:
                self.sync()
            except StoreLocked:
                return False
        return True

    def sync(self) -> None:
        """Bring the catalog in line with the documents (they are the truth)."""
        cat = self._open_catalog()
        if self.journaled and self.config.format >= 2:
            if journal.incremental(self, cat):
                modelindex.backfill(self, cat)
                return
            started, listed = time.time(), journal.begin_full(self.docs)
        # The catalog first, the documents after it: a save writes its manifest, then its claim, then its row, so
        # a checkpoint indexed here is always among the manifests and claims listed next (never taken for one
        # that vanished), whatever a writer does meanwhile.
        indexed = cat.names_by_id()
        indexed_tags = cat.tags()
        disk = self.manifest_ids()
        claims = self.claims(disk)
        visible = {cid: name for name, cid in claims.items() if cid in disk}
        renamed = {cid for cid, name in indexed.items() if cid in visible and visible[cid] != name}
        extra = set(indexed) - set(visible) | renamed
        if extra:
            deleted = {cid for cid in extra if cid in renamed or self.was_deleted(cid)}
            cat.remove_many(deleted)
            cat.remove_many(extra - deleted, lost=True)
        known_lost = cat.lost()
        # A claim listed without its manifest may be a save that wrote both after the manifests were listed: lost
        # only if the manifest is still missing now (it is written before the claim).
        lost = [(cid, name) for name, cid in claims.items()
                if cid not in disk and cid not in indexed and cid not in known_lost and not self.was_deleted(cid)
                and self.docs.get(keys.manifest_key(cid)) is None]
        if lost:
            cat.add_lost(lost)
        missing = set(visible) - (set(indexed) - extra) - set(self.damaged_manifests)
        if missing:
            found = []
            for cid in sorted(missing):
                try:
                    manifest = self.read_manifest(cid)
                except CkptError as exc:
                    self.damaged_manifests[cid] = exc.message
                    continue
                name = visible[cid]
                if manifest.name != name:  # renamed since it was saved: the claim names it
                    manifest = dataclasses.replace(manifest, name=name, run=run_of(name))
                found.append((cid, manifest))
            found.sort(key=lambda item: item[1].created_at)
            cat.add_many(found)
        self._sync_tags(cat, set(visible), indexed_tags)
        annotations.sync(self.docs, cat)
        modelindex.backfill(self, cat)
        if self.journaled and self.config.format >= 2:
            journal.end_full(cat, listed, started)

    def _sync_tags(self, cat: Catalog, visible: set[str], indexed: dict[tuple[str, str], str]) -> None:
        """The tag rows from the tag documents, unless another connection wrote rows since `indexed` was read (its
        documents may be newer than these): then read the documents again. A tag of a checkpoint saved after
        `visible` was listed is kept once the checkpoint is indexed (its save indexes it before moving tags)."""
        for _ in range(5):
            tags = self.refs.all()
            if {k: v for k, v in tags.items() if v in visible} == indexed:
                return
            if cat.set_tags(tags, expected=indexed, known=visible):
                return
            indexed = cat.tags()

    def reindex(self) -> int:
        """Throw the catalog away and rebuild it from the documents. Returns the number of checkpoints."""
        with self.commit_lock():  # no other process is writing the catalog meanwhile
            if not self.read_only and self.config.format >= 2:
                # Rebuilding accepts what is lost: a name whose manifest is gone is released, with a deletion
                # record so that every other index forgets it too.
                on_disk = self.manifest_ids()
                gone = [(cid, name) for name, cid in self.claims().items() if cid not in on_disk]
                self.record_deleted(gone)
                for _, name in gone:
                    self.release(name)
            path = str(self.catalog.path)
            self.close()
            if path != ":memory:":
                for suffix in ("", "-wal", "-shm", "-journal"):
                    Path(path + suffix).unlink(missing_ok=True)
            self.damaged_manifests.clear()
            self.sync()
            return len(self.catalog.ids())

    # -- references --------------------------------------------------------------------------------------------------
    def resolve(self, ref: str) -> str:
        """The id of the checkpoint `ref` names: a name, ``RUN:TAG``, or an id or unambiguous id prefix."""
        if not isinstance(ref, str) or not ref:
            raise InvalidArgument("Empty reference.", hint="Give a checkpoint name, RUN:TAG or an id prefix.")
        cat = self.catalog
        tag_ref = split_tag_ref(ref)
        if tag_ref is not None:
            run, tag = tag_ref
            cid = self.refs.get(run, tag)
            if cid is not None and cat.has(cid):
                return cid
            run_tags = sorted(f"{r}:{t}" for (r, t) in cat.tags() if r == run)
            raise CheckpointNotFound(ref, close_matches(ref, run_tags, cutoff=0.5) or tuple(run_tags[:3]), run=run)
        cid = cat.id_for_name(ref)
        if cid is not None:
            return cid
        lowered = ref.lower()
        hexadecimal = all(c in "0123456789abcdef" for c in lowered)
        if len(lowered) >= MIN_ID_PREFIX and hexadecimal:
            matches = cat.ids_with_prefix(lowered)
            if len(matches) == 1:
                return matches[0]
            if len(matches) > 1:
                names = {c.id: c.name for c in cat.infos(ids=matches)}
                raise AmbiguousReference(ref, tuple(f"{m[:12]} ({names.get(m, '?')})" for m in matches))
        names = cat.names()
        candidates = close_matches(ref, names, cutoff=0.6)
        if not candidates:
            candidates = tuple(n for n in names if n.startswith(ref.rstrip("/") + "/"))[:3]
        exc = CheckpointNotFound(ref, candidates, run=run_of(ref) if run_of(ref) in cat.runs() else None)
        if not candidates and 0 < len(lowered) < MIN_ID_PREFIX and hexadecimal:
            exc.hint = f"An id prefix needs at least {MIN_ID_PREFIX} hex digits ('ckpt ls' shows ids)."
        raise exc

    def info(self, cid: str) -> CheckpointInfo:
        infos = self.catalog.infos(ids=[cid])
        if not infos:
            raise CheckpointNotFound(cid)
        return infos[0]

    def check_run(self, run: str) -> str:
        """`run` if it has checkpoints; else CheckpointNotFound naming the closest runs."""
        runs = self.catalog.runs()
        if run not in runs:
            raise CheckpointNotFound(run, close_matches(run, runs, cutoff=0.5), kind="run")
        return run

