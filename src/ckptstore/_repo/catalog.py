"""The SQLite index: a cache of manifests and refs that makes listing and queries fast.

It holds nothing that is not also in the store's files, so it is rebuilt whenever it is missing, damaged or of
another schema, and reconciled with the manifests on every open (a directory listing: cheap), so a crash
between a manifest write and the index update never hides a checkpoint.

A reader that cannot write the store (a read-only mount, a store owned by another user) keeps its own index in
its cache folder, ``$XDG_CACHE_HOME/ckptstore/<hash of the store>/index.sqlite``, or in memory when even that
cannot be written: the same cache, built from the same manifests.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import sqlite3
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

from .._core.failpoints import failpoint
from .._core.info import CheckpointInfo
from .._format.manifest import Manifest
from ..errors import StoreFull, StoreLocked
from . import modelindex

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS checkpoints (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    run TEXT NOT NULL,
    step INTEGER,
    created_at REAL NOT NULL,
    parent TEXT,
    message TEXT,
    logical_bytes INTEGER NOT NULL,
    file_count INTEGER NOT NULL,
    metrics TEXT NOT NULL,
    metadata TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS checkpoints_run ON checkpoints (run, step);
CREATE TABLE IF NOT EXISTS blob_refs (
    checkpoint TEXT NOT NULL,
    digest TEXT NOT NULL,
    size INTEGER NOT NULL,
    PRIMARY KEY (checkpoint, digest)
);
CREATE INDEX IF NOT EXISTS blob_refs_digest ON blob_refs (digest);
CREATE TABLE IF NOT EXISTS tags (run TEXT NOT NULL, tag TEXT NOT NULL, id TEXT NOT NULL, PRIMARY KEY (run, tag));
-- Checkpoints whose manifest or name claim vanished without a delete (a store delete records itself in deleted/
-- first): the only record that they existed, so that verify can name them. Cleared when the manifest comes back,
-- or by reindex (which accepts the loss).
CREATE TABLE IF NOT EXISTS lost (id TEXT PRIMARY KEY, name TEXT NOT NULL, noticed_at REAL NOT NULL);
-- annotations/<id>.json as last read (stamp: the document's version), merged over the manifest's values by infos().
CREATE TABLE IF NOT EXISTS annotations (
    id TEXT PRIMARY KEY, stamp TEXT NOT NULL, metrics TEXT NOT NULL, metadata TEXT NOT NULL, message TEXT
);
"""

# Primary SQLite result codes (the low byte of sqlite_errorcode).
_SQLITE_PERM, _SQLITE_READONLY, _SQLITE_FULL, _SQLITE_CANTOPEN = 3, 8, 13, 14
_NOT_WRITABLE = (errno.EROFS, errno.EACCES, errno.EPERM)


class IndexNotWritable(Exception):
    """The index file cannot be written by this process (read-only mount, another user's store)."""


def _sqlite_code(exc: BaseException) -> int | None:
    code = getattr(exc, "sqlite_errorcode", None)
    return code & 0xFF if isinstance(code, int) else None


def disk_full(exc: BaseException) -> bool:
    """SQLite's "database or disk is full" (SQLITE_FULL), or an OSError ENOSPC."""
    if isinstance(exc, OSError):
        return exc.errno == errno.ENOSPC
    return _sqlite_code(exc) == _SQLITE_FULL or "database or disk is full" in str(exc)


def open_catalog(root: Path, *, read_only: bool, identity: str, store_id: str | None = None) -> Catalog:
    """The store's own index in `root`; for a process that cannot write it, an index of its own (see the module
    docstring), named after the store's `identity`. `store_id`: the id in the store's store.json, which the index
    records; an index recorded for another id (a remote store's local index, kept by URL, after a new store was
    made at that URL) is thrown away and rebuilt, never taken for this store's."""
    if not read_only:
        try:
            return Catalog(root / "index.sqlite", store_id=store_id)
        except IndexNotWritable:
            pass
    path = reader_index_path(identity)
    if path is not None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            return Catalog(path, store_id=store_id)
        except (OSError, IndexNotWritable):
            pass
    return Catalog(":memory:", store_id=store_id)


def reader_index_path(identity: str) -> Path | None:
    """Where a reader without write access keeps its index of the store `identity` names (its location and its id,
    so that a store made again at the same place gets a fresh index, not one that would take its missing
    checkpoints for lost ones). None: no cache folder."""
    base = os.environ.get("XDG_CACHE_HOME")
    if not base:
        try:
            base = str(Path.home() / ".cache")
        except RuntimeError:
            return None
    return Path(base) / "ckptstore" / hashlib.sha256(identity.encode()).hexdigest()[:24] / "index.sqlite"


_SCHEMA_NAMES = set(re.findall(r"CREATE (?:TABLE|INDEX) IF NOT EXISTS (\w+)", _SCHEMA + modelindex.SCHEMA))
_BUSY_MS = 60_000  # how long a write waits for another connection's write transaction (writers: their commits)

_COLUMNS = "id, name, run, step, created_at, parent, message, logical_bytes, file_count, metrics, metadata"


class Catalog:
    def __init__(self, path: Path | str, *, store_id: str | None = None) -> None:
        self.path = path
        self.store_id = store_id
        self.db = self._connect()

    def _connect(self) -> sqlite3.Connection:
        try:
            db = self._open()
            row = db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
            if row is None or str(row[0]) != str(SCHEMA_VERSION):
                raise sqlite3.DatabaseError("schema mismatch")
            # A damaged page shows only when a query reaches it, possibly long after opening; quick_check reads
            # every page once (a few ms per MB of index) so damage is found here, where it can be rebuilt.
            if db.execute("PRAGMA quick_check").fetchone()[0] != "ok":
                raise sqlite3.DatabaseError("index damaged")
            if self.store_id is not None:
                # Read only: opening never writes (it would wait for the writer of the moment). An index made
                # before the id was recorded has none and is not checked.
                row = db.execute("SELECT value FROM meta WHERE key = 'store'").fetchone()
                if row is not None and row[0] != self.store_id:
                    raise sqlite3.DatabaseError("the index of another store")
            return db
        except OSError as exc:
            if exc.errno in _NOT_WRITABLE:
                raise IndexNotWritable(str(exc)) from exc
            raise
        except sqlite3.DatabaseError as exc:
            if _sqlite_code(exc) in (_SQLITE_PERM, _SQLITE_READONLY, _SQLITE_CANTOPEN) and not _writable(self.path):
                # Not damage: this process may not write the file or its folder. Deleting it would fail, or
                # destroy the index of the store's owner.
                raise IndexNotWritable(str(exc)) from None
            if disk_full(exc):
                raise StoreFull(str(Path(self.path).parent), "its index") from None
            if isinstance(exc, sqlite3.OperationalError) and ("locked" in str(exc) or "busy" in str(exc)):
                # Busy is not damage: another process is writing. Deleting the files under it would lose its work.
                raise StoreLocked(f"The index {self.path} stayed locked by another process for 60s.") from None
            # A cache that cannot be read is thrown away and rebuilt from the manifests.
            try:
                db.close()  # type: ignore[possibly-undefined]
            except Exception:
                pass
            for suffix in ("", "-wal", "-shm", "-journal"):
                Path(str(self.path) + suffix).unlink(missing_ok=True)
            try:
                return self._open()
            except sqlite3.OperationalError as again:
                if disk_full(again):
                    raise StoreFull(str(Path(self.path).parent), "its index") from None
                raise

    def _open(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=60, isolation_level=None, check_same_thread=False)
        db.execute(f"PRAGMA busy_timeout = {_BUSY_MS}")
        db.execute("PRAGMA journal_mode = WAL")  # no lock taken when the file already is in WAL mode
        db.execute("PRAGMA synchronous = NORMAL")  # a cache: losing the last transaction on power loss is fine
        if not _has_schema(db):
            # CREATE ... IF NOT EXISTS and INSERT OR IGNORE take the write lock even when they change nothing: run
            # only when something is missing, or every open waits for the writer of the moment (a reader's too).
            db.executescript(_SCHEMA)
            db.executescript(modelindex.SCHEMA)
            # The store's id before the schema row: an opener that finds the schema complete finds the id too.
            if self.store_id is not None:
                db.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('store', ?)", (self.store_id,))
            db.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
        return db

    @contextlib.contextmanager
    def patience(self, seconds: float) -> Iterator[None]:
        """Wait at most `seconds` for another connection's write transaction (then StoreLocked) meanwhile."""
        self.db.execute(f"PRAGMA busy_timeout = {int(seconds * 1000)}")
        try:
            yield
        finally:
            self.db.execute(f"PRAGMA busy_timeout = {_BUSY_MS}")

    @contextlib.contextmanager
    def snapshot(self) -> Iterator[None]:
        """Run several queries on one snapshot: a commit landing between them is seen by all of them or none."""
        if self.db.in_transaction:
            yield
            return
        self.db.execute("BEGIN")  # deferred: a read transaction, which in WAL mode never waits for a writer
        try:
            yield
        finally:
            if self.db.in_transaction:
                self.db.execute("COMMIT")

    def close(self) -> None:
        self.db.close()

    # -- writes -----------------------------------------------------------------------------------------------
    def add_many(self, items: Iterable[tuple[str, Manifest]]) -> None:
        items = list(items)
        if not items:
            return
        failpoint("index.update")
        with self._tx():
            for cid, m in items:
                self.db.execute("DELETE FROM lost WHERE id = ?", (cid,))
                self.db.execute("DELETE FROM checkpoints WHERE name = ? AND id != ?", (m.name, cid))
                self.db.execute(
                    f"INSERT OR REPLACE INTO checkpoints ({_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                    (
                        cid, m.name, m.run, m.step, m.created_at, m.parent, m.message, m.logical_bytes,
                        len(m.files), json.dumps(m.metrics), json.dumps(m.metadata, default=str),
                    ),
                )
                self.db.executemany(
                    "INSERT OR IGNORE INTO blob_refs (checkpoint, digest, size) VALUES (?,?,?)",
                    [(cid, d, s) for d, s in m.blob_refs().items()],
                )
            modelindex.fill(self.db, items)

    def remove_many(self, ids: Iterable[str], *, lost: bool = False) -> None:
        """Drop the rows of `ids`; with `lost`, remember their names in the `lost` table (see the schema)."""
        ids = list(ids)
        if not ids:
            return
        failpoint("index.update")
        with self._tx():
            for cid in ids:
                if lost:
                    self.db.execute(
                        "INSERT OR REPLACE INTO lost (id, name, noticed_at) SELECT id, name, ? FROM checkpoints"
                        " WHERE id = ?",
                        (time.time(), cid),
                    )
                self.db.execute("DELETE FROM checkpoints WHERE id = ?", (cid,))
                self.db.execute("DELETE FROM blob_refs WHERE checkpoint = ?", (cid,))
                self.db.execute("DELETE FROM model_facts WHERE id = ?", (cid,))

    def add_lost(self, items: Iterable[tuple[str, str]]) -> None:
        """Remember (id, name) of checkpoints whose name is claimed but whose manifest is gone."""
        with self._tx():
            self.db.executemany("INSERT OR REPLACE INTO lost (id, name, noticed_at) VALUES (?,?,?)",
                                [(cid, name, time.time()) for cid, name in items])

    def lost(self) -> dict[str, str]:
        """id -> name of the checkpoints whose manifest vanished behind the store's back."""
        return dict(self.db.execute("SELECT id, name FROM lost ORDER BY name").fetchall())

    def set_tags(self, tags: dict[tuple[str, str], str], *, expected: dict[tuple[str, str], str] | None = None,
                 known: set[str] | None = None) -> bool:
        """Replace the tag rows with `tags`. With `expected`, only when the rows still are that (False when another
        connection changed them since: its tags may be newer than the caller's). With `known`, only tags of those
        checkpoints, or of ones indexed at that moment (a save that committed after the caller looked)."""
        failpoint("index.tags")
        with self._tx():
            if expected is not None and self.tags() != expected:
                return False
            if known is not None:
                ids = self.ids()
                tags = {k: v for k, v in tags.items() if v in known or v in ids}
            self.db.execute("DELETE FROM tags")
            self.db.executemany(
                "INSERT INTO tags (run, tag, id) VALUES (?,?,?)", [(r, t, i) for (r, t), i in tags.items()]
            )
        return True

    def set_tag(self, run: str, tag: str, cid: str | None) -> None:
        """Index one tag as its document now says (None: removed), for a writer that just wrote that document
        under the commit lock: one row, where a sync would list and read every tag of the store."""
        failpoint("index.tags")
        with self._tx():
            if cid is None:
                self.db.execute("DELETE FROM tags WHERE run = ? AND tag = ?", (run, tag))
            else:
                self.db.execute("INSERT OR REPLACE INTO tags (run, tag, id) VALUES (?,?,?)", (run, tag, cid))

    def annotation_stamps(self) -> dict[str, str]:
        return dict(self.db.execute("SELECT id, stamp FROM annotations").fetchall())

    def set_annotations(self, rows: Iterable[tuple[str, str, dict, dict, str | None]], *, removed: Iterable[str] = ()
                        ) -> None:
        """Index annotation documents: (id, stamp, metrics, metadata, message) each; drop those in `removed`."""
        with self._tx():
            self.db.executemany("DELETE FROM annotations WHERE id = ?", [(cid,) for cid in removed])
            self.db.executemany(
                "INSERT OR REPLACE INTO annotations (id, stamp, metrics, metadata, message) VALUES (?,?,?,?,?)",
                [(cid, stamp, json.dumps(m), json.dumps(md, default=str), msg) for cid, stamp, m, md, msg in rows],
            )

    def _tx(self):
        return _Transaction(self.db)

    # -- reads ------------------------------------------------------------------------------------------------
    def ids(self) -> set[str]:
        return {r[0] for r in self.db.execute("SELECT id FROM checkpoints")}

    def tags(self) -> dict[tuple[str, str], str]:
        return {(r, t): i for r, t, i in self.db.execute("SELECT run, tag, id FROM tags")}

    def has(self, cid: str) -> bool:
        return self.db.execute("SELECT 1 FROM checkpoints WHERE id = ?", (cid,)).fetchone() is not None

    def names_by_ids(self, ids: Iterable[str]) -> dict[str, str]:
        ids = list(ids)
        marks = ",".join("?" * len(ids))
        return dict(self.db.execute(f"SELECT id, name FROM checkpoints WHERE id IN ({marks})", ids).fetchall())

    def names_by_id(self) -> dict[str, str]:
        return dict(self.db.execute("SELECT id, name FROM checkpoints").fetchall())

    def id_for_name(self, name: str) -> str | None:
        row = self.db.execute("SELECT id FROM checkpoints WHERE name = ?", (name,)).fetchone()
        return row[0] if row else None

    def ids_with_prefix(self, prefix: str) -> list[str]:
        return [r[0] for r in self.db.execute("SELECT id FROM checkpoints WHERE id LIKE ? ORDER BY id", (prefix + "%",))]

    def names(self) -> list[str]:
        return [r[0] for r in self.db.execute("SELECT name FROM checkpoints ORDER BY name")]

    def runs(self) -> list[str]:
        return [r[0] for r in self.db.execute("SELECT DISTINCT run FROM checkpoints ORDER BY run")]

    def infos(self, *, run: str | None = None, ids: Iterable[str] | None = None) -> list[CheckpointInfo]:
        # Filtered in SQL: a save asks for its one checkpoint, and reading every row of a large store for it cost
        # a scan per save. The ids go as one JSON array, so that no list is too long for SQLite's variables.
        where, args = [], []
        if run is not None:
            where.append("run = ?")
            args.append(run)
        if ids is not None:
            where.append("id IN (SELECT value FROM json_each(?))")
            args.append(json.dumps(list(ids)))
        cond = f" WHERE {' AND '.join(where)}" if where else ""
        with self.snapshot():  # rows, tags and annotations as of one commit
            rows = self.db.execute(f"SELECT {_COLUMNS} FROM checkpoints{cond}", args).fetchall()
            tag_rows = sorted(self.tags().items())
            # Annotations override or extend what the manifest saved (see _annotations).
            notes = {r[0]: (json.loads(r[1]), json.loads(r[2]), r[3]) for r in self.db.execute(
                "SELECT id, metrics, metadata, message FROM annotations"
                + (f" WHERE id IN (SELECT id FROM checkpoints{cond})" if cond else ""), args)}
        tags: dict[str, list[str]] = {}
        for (_run, tag), cid in tag_rows:
            tags.setdefault(cid, []).append(tag)
        none: tuple[dict, dict, str | None] = ({}, {}, None)
        out = [
            CheckpointInfo(
                id=r[0], name=r[1], run=r[2], step=r[3], created_at=r[4], parent=r[5],
                message=notes.get(r[0], none)[2] or r[6], logical_bytes=r[7], file_count=r[8],
                metrics={**json.loads(r[9]), **notes.get(r[0], none)[0]},
                metadata={**json.loads(r[10]), **notes.get(r[0], none)[1]},
                tags=tuple(tags.get(r[0], ())),
            )
            for r in rows
        ]
        # Newest first: by creation time, then numerically by step (never lexically by name).
        out.sort(key=lambda c: (c.created_at, c.step if c.step is not None else -1, c.name), reverse=True)
        return out

    def newest_id(self, run: str) -> str | None:
        """The id of the run's newest checkpoint, as `infos` orders them, without reading the run's rows."""
        row = self.db.execute(
            "SELECT id FROM checkpoints WHERE run = ? ORDER BY created_at DESC, coalesce(step, -1) DESC, name DESC"
            " LIMIT 1", (run,)).fetchone()
        return row[0] if row else None

    def run_ids(self, run: str) -> set[str]:
        return {r[0] for r in self.db.execute("SELECT id FROM checkpoints WHERE run = ?", (run,))}

    def tag_facts(self, run: str, metric: str) -> list[CheckpointInfo]:
        """The run's checkpoints as lean records holding only what placing ``latest`` and ``best`` needs (id, name,
        step, created_at, `metric` alone in metrics, the convert record as ``{"converted": {}}`` in metadata).

        Every save moves those tags, so this is one query that leaves the JSON in SQLite: on a run of 5000
        checkpoints it takes ~8 ms where `infos` takes ~120 ms."""
        rows = self.db.execute(
            # An annotated metric overrides the saved one, as in infos().
            "SELECT id, name, step, created_at, coalesce("
            "(SELECT value FROM annotations a, json_each(a.metrics) WHERE a.id = checkpoints.id AND key = ?),"
            " (SELECT value FROM json_each(metrics) WHERE key = ?)),"
            " json_type(metadata, '$.converted') = 'object' FROM checkpoints WHERE run = ?",
            (metric, metric, run),
        ).fetchall()
        return [
            CheckpointInfo(
                id=cid, name=name, run=run, step=step, created_at=created,
                metrics={} if value is None else {metric: value}, metadata={"converted": {}} if converted else {},
            )
            for cid, name, step, created, value, converted in rows
        ]

    def stored_bytes(self) -> tuple[int, int]:
        """(bytes, count) of distinct blobs referenced by at least one checkpoint."""
        row = self.db.execute("SELECT coalesce(sum(size), 0), count(*) FROM (SELECT DISTINCT digest, size FROM blob_refs)").fetchone()
        return int(row[0]), int(row[1])

    def run_unique_bytes(self) -> dict[str, int]:
        """For each run, bytes of blobs that no other run references (what removing the run would free)."""
        rows = self.db.execute(
            """
            SELECT run, coalesce(sum(size), 0) FROM (
                SELECT b.digest AS digest, min(b.size) AS size, min(c.run) AS run
                FROM blob_refs b JOIN checkpoints c ON c.id = b.checkpoint
                GROUP BY b.digest HAVING count(DISTINCT c.run) = 1
            ) GROUP BY run
            """
        ).fetchall()
        return {r: int(s) for r, s in rows}

    def exclusive_bytes(self, ids: Iterable[str]) -> int:
        """Bytes of the distinct blobs that `ids` reference and no other checkpoint does (what gc frees after
        deleting them). One query, not one per blob."""
        ids = list(ids)
        if not ids:
            return 0
        marks = ",".join("?" * len(ids))
        row = self.db.execute(
            f"""
            SELECT coalesce(sum(size), 0) FROM (
                SELECT digest, min(size) AS size FROM blob_refs GROUP BY digest
                HAVING sum(checkpoint IN ({marks})) > 0 AND sum(checkpoint NOT IN ({marks})) = 0
            )
            """,
            ids + ids,
        ).fetchone()
        return int(row[0])

    def blob_refcount(self, digests: Iterable[str]) -> dict[str, int]:
        """digest -> how many checkpoints reference it: one query for all (a checkpoint has hundreds of blobs)."""
        out = dict.fromkeys(digests, 0)
        out.update(self.db.execute(
            "SELECT digest, count(*) FROM blob_refs WHERE digest IN (SELECT value FROM json_each(?)) GROUP BY digest",
            (json.dumps(list(out)),)).fetchall())
        return out

    # -- a run's storage history (the web view) ----------------------------------------------------------------
    def run_growth_rows(self, run: str) -> list[tuple[str, str, float, int, int]]:
        """(id, name, created_at, logical bytes, new bytes) of the run's checkpoints in save order; new bytes are
        those of blobs no checkpoint of the run saved before it references. One query, no JSON parsed: a run
        page of 1,000 checkpoints asks for it."""
        order = "c.created_at, coalesce(c.step, 0), c.name"
        return self.db.execute(
            f"""
            SELECT c.id, c.name, c.created_at, c.logical_bytes, coalesce(n.bytes, 0) FROM checkpoints c
            LEFT JOIN (
                SELECT checkpoint, sum(size) AS bytes FROM (
                    SELECT b.checkpoint AS checkpoint, b.size AS size,
                           row_number() OVER (PARTITION BY b.digest ORDER BY {order}) AS first
                    FROM blob_refs b JOIN checkpoints c ON c.id = b.checkpoint WHERE c.run = ?
                ) WHERE first = 1 GROUP BY checkpoint
            ) n ON n.checkpoint = c.id
            WHERE c.run = ? ORDER BY {order}
            """,
            (run, run),
        ).fetchall()

    def run_summary_rows(self) -> list[tuple[str, int, int | None, int, float]]:
        """(run, checkpoints, highest step, logical bytes, newest created_at) of every run, without parsing a
        checkpoint's JSON."""
        return self.db.execute(
            "SELECT run, count(*), max(step), coalesce(sum(logical_bytes), 0), max(created_at) FROM checkpoints"
            " GROUP BY run ORDER BY run"
        ).fetchall()

    def child_ids(self, cid: str) -> list[str]:
        """Ids of the checkpoints whose parent is `cid`."""
        return [r[0] for r in self.db.execute("SELECT id FROM checkpoints WHERE parent = ? ORDER BY name", (cid,))]

    def run_stored_bytes(self) -> dict[str, int]:
        """For each run, bytes of the distinct blobs its checkpoints reference (shared with other runs or not)."""
        rows = self.db.execute(
            "SELECT run, coalesce(sum(size), 0) FROM (SELECT DISTINCT c.run AS run, b.digest AS digest,"
            " b.size AS size FROM blob_refs b JOIN checkpoints c ON c.id = b.checkpoint) GROUP BY run"
        ).fetchall()
        return {r: int(s) for r, s in rows}


class _Transaction:
    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> None:
        try:
            self.db.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as busy:
            if "locked" in str(busy) or "busy" in str(busy):
                raise StoreLocked(f"The index in {_db_folder(self.db)} is being written by another process.",
                                  hint="Wait for it to finish (a process stopped in a commit holds it) and try"
                                       " again.") from None
            raise

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            try:
                self.db.execute("COMMIT")
            except sqlite3.OperationalError as failed:
                if disk_full(failed):
                    if self.db.in_transaction:
                        self.db.execute("ROLLBACK")
                    raise StoreFull(_db_folder(self.db), "an index update") from failed
                raise
        else:
            if self.db.in_transaction:  # SQLite may have rolled back already (a full disk does that)
                self.db.execute("ROLLBACK")
            if isinstance(exc, sqlite3.OperationalError) and disk_full(exc):
                raise StoreFull(_db_folder(self.db), "an index update") from exc


def _has_schema(db: sqlite3.Connection) -> bool:
    """Whether every table and index of the schema, and its version row, are there (read without a write lock)."""
    names = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type IN ('table', 'index')")}
    if not _SCHEMA_NAMES <= names:
        return False
    return db.execute("SELECT 1 FROM meta WHERE key = 'schema'").fetchone() is not None


def _db_folder(db: sqlite3.Connection) -> str:
    row = db.execute("PRAGMA database_list").fetchone()
    return str(Path(row[2]).parent) if row and row[2] else ":memory:"


def _writable(path: Path | str) -> bool:
    """Whether this process could write the index file at `path` and create its -wal and -shm beside it."""
    if str(path) == ":memory:":
        return True
    p = Path(path)
    return os.access(p.parent, os.W_OK) and (not p.exists() or os.access(p, os.W_OK))
