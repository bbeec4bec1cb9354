"""Opening a store: its backend from a location, its settings from store.json, and the upgrade of format 1.

Format 1 (the first release) claimed a checkpoint's name through the SQLite index under a file lock and logged
deletions by appending to one file: mechanisms an object store does not have. Format 2 claims each name with a
create-if-absent document and records each deletion as a document of its own. A format-1 store is upgraded in
place the first time this version opens it for writing; read-only, it is read as it is.

The upgrade is crash-safe because every step can be done twice: it writes the claims and deletion records of what
the store already holds (create-if-absent: a second run finds them there), and only then store.json, which is
what makes the store format 2. A kill before that leaves a format-1 store that the next open upgrades again; a
kill after it leaves checkpoints/deleted.log behind, which format 2 never reads and `ckpt fsck --upgrade` removes.
In a format-1 store the manifests and the log are the truth and names/ is derived from them, so an upgrade that
finds claims an interrupted one wrote makes them match the manifests (a format-1 writer may have deleted or
saved since).
"""

from __future__ import annotations

import os
import uuid

from .._backend.local import LocalBackend
from .._backend.protocols import Backend
from .._core.failpoints import failpoint
from ..config import FORMAT_VERSION, StoreConfig, check_chunk_bytes, resolve_store_location
from ..errors import CkptError, InvalidArgument, StoreNotFound
from . import documents as keys
from . import format1
from .repository import Repository


def backend_for(location: str | os.PathLike[str] | None) -> Backend:
    where = resolve_store_location(location)
    if isinstance(where, str):
        from .._backend.objectstore import ObjectStoreBackend  # obstore is imported only for a remote store

        return ObjectStoreBackend(where)
    return LocalBackend(where)


def read_config(backend: Backend) -> StoreConfig | None:
    got = backend.documents.get(keys.STORE_JSON)
    if got is None:
        return None
    return StoreConfig.from_json_bytes(got[0], path=f"{backend.url}/{keys.STORE_JSON}")


def init_repository(backend: Backend, *, chunk_bytes: int | None = None, exist_ok: bool = True) -> Repository:
    if read_config(backend) is not None:
        if not exist_ok:
            raise InvalidArgument(f"A store already exists at {backend.url!r}.", hint="Open it instead.")
        return open_repository(backend)
    backend.create()
    config = StoreConfig(chunk_bytes=check_chunk_bytes(chunk_bytes) if chunk_bytes else StoreConfig.chunk_bytes,
                         id=uuid.uuid4().hex)
    # store.json last: a location without it is not a store yet, so an interrupted init can simply be re-run.
    keys.upsert(backend.documents, keys.STORE_JSON, config.to_json_bytes())
    return open_repository(backend)


def open_repository(backend: Backend, *, create: bool = False) -> Repository:
    backend.open()
    config = read_config(backend)
    if config is None:
        if create:
            return init_repository(backend)
        raise StoreNotFound(backend.url)
    repo = Repository(backend, config)
    if config.format < FORMAT_VERSION and backend.writable:
        upgrade(repo)
    return repo


def upgrade(repo: Repository) -> bool:
    """Upgrade a format-1 store to format 2 in place. Returns False when there was nothing to do."""
    with repo.commit_lock():
        current = read_config(repo.backend)
        if current is None:
            return False
        if current.format >= FORMAT_VERSION:
            # Another process upgraded it while this one waited for the lock: read it as what it is now, or this
            # one would go on reading a format-2 store as format 1 (its deletions from a log that is gone).
            if repo.config.format != current.format:
                repo.config = current
                repo.close()  # its next look syncs from the claims
            if repo.docs.get(format1.DELETION_LOG) is None:
                return False
            repo.docs.remove(format1.DELETION_LOG)  # left by an upgrade killed after it wrote store.json
            repo.upgraded_from = 1  # this finished it
            return True
        # The old index knows the names of manifests that no longer parse; claim those too, so that verify keeps
        # naming them and gc keeps refusing to guess their blobs, exactly as in format 1.
        known = {}
        try:
            known = repo.catalog.names_by_id()
        except CkptError:
            pass
        named: dict[str, tuple[float, str]] = {}
        for cid in sorted(repo.manifest_ids()):
            try:
                manifest = repo.read_manifest(cid)
                name, created = manifest.name, manifest.created_at
            except CkptError:
                if cid not in known:
                    continue
                name, created = known[cid], 0.0
            if name not in named or named[name][0] <= created:  # two manifests of one name: the newest wins
                named[name] = (created, cid)
        # Claims an interrupted upgrade wrote for checkpoints a format-1 writer has deleted (or saved again) since.
        for key in sorted(repo.docs.list(keys.NAMES)):
            name = keys.name_of_key(key)
            if name not in named:
                repo.release(name)
        for name, (_, cid) in sorted(named.items()):
            failpoint("upgrade.claim")
            if not repo.claim(name, cid) and repo.claimed_id(name) != cid:
                repo.release(name)
                repo.claim(name, cid)
        repo.record_deleted(format1.deletions(repo))
        failpoint("upgrade.config")
        upgraded = StoreConfig(chunk_bytes=current.chunk_bytes, id=current.id or uuid.uuid4().hex)
        keys.upsert(repo.docs, keys.STORE_JSON, upgraded.to_json_bytes())
        repo.config = upgraded
        repo.upgraded_from = current.format
        repo.docs.remove(format1.DELETION_LOG)
        repo.close()  # the next look syncs from the claims
    return True
