"""ObjectStoreBackend: the storage protocols on object storage (S3 and S3-compatible servers, GCS, Azure).

An object store has no rename, no flock and no append, but conditional PUT, and this backend uses nothing else:
- blobs: ``objects/ab/cdef...`` written straight to their final key (a blob is named by its hash, so a key
  holds its whole content or nothing: a single PUT, or a multipart upload that is invisible until completed).
  A session uploads in the background, a bounded number at a time, skipping blobs already there (one HEAD);
  `commit` waits for every upload. Nothing references a blob before the manifest, written after the commit.
  Reads go through the local blob cache (blobcache.py): fetched in parallel, ranged GETs for large blobs, checked
  against their hash on arrival, then mapped zero-copy like a local store's blobs.
- documents: create is a PUT with If-None-Match (mode "create"), replace a PUT with If-Match on the ETag read.
  Small documents a recent listing showed unchanged (same ETag) are served from a local copy: this is what makes
  an index sync with nothing new cost its few LIST requests and no GET.
- coordination: leases and locks as documents with an expiry kept fresh by a heartbeat (remote_coord.py).
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from .._core.failpoints import failpoint
from .._core.hashing import hash_bytes
from ..config import env_seconds
from ..errors import CorruptObject, InvalidArgument, StoreReadOnly
from .blobcache import BlobCache, cache_home
from .remote_client import RequestCounter, make_client, split_url, translate
from .remote_coord import RemoteCoordination

# Blobs above this are uploaded in parts and fetched with ranged GETs side by side.
MULTIPART_BYTES = 32 << 20
PART_BYTES = 8 << 20
# What a store's prefix may hold; anything else there means the prefix is not a store (init refuses it).
LAYOUT = ("store.json", "objects", "checkpoints", "names", "refs", "policies", "deleted", "annotations", "locks",
          "leases", "journal")


def _concurrency() -> int:
    raw = os.environ.get("CKPT_REMOTE_CONCURRENCY", "")
    return max(1, int(raw)) if raw.isdigit() else 8


def _blob_key(digest: str) -> str:
    return f"objects/{digest[:2]}/{digest[2:]}"


class Remote:
    """The client, the URL it is known by, and the request counter every call goes through."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.client = make_client(url)
        self.requests = RequestCounter()
        self.read_only = False

    def call(self, kind: str, fn, *args, key: str | None = None, missing_ok: bool = False, **kwargs) -> Any:
        import obstore.exceptions as oe

        if self.read_only and kind in ("PUT", "DELETE"):
            hint = "Unset CKPT_REMOTE_READ_ONLY, with credentials that may write the bucket."
            exc = StoreReadOnly(self.url)
            exc.hint = hint
            raise exc
        self.requests.add(kind)
        try:
            return fn(self.client, *args, **kwargs)
        except (oe.AlreadyExistsError, oe.PreconditionError):
            raise
        except FileNotFoundError as exc:
            if "NoSuchBucket" in str(exc) or not missing_ok:
                raise translate(exc, self.url, key=key) from None
            raise
        except oe.BaseError as exc:
            raise translate(exc, self.url, key=key) from None

    def head(self, key: str) -> dict | None:
        import obstore

        try:
            return self.call("HEAD", obstore.head, key, key=key, missing_ok=True)
        except FileNotFoundError:
            return None

    def list(self, prefix: str, offset: str | None = None) -> Iterator[dict]:
        import obstore
        import obstore.exceptions as oe

        # `offset`: only keys after it (S3's start-after), so a reader of the journal lists only its tail.
        stream = obstore.list(self.client, prefix=prefix, offset=offset, chunk_size=1000)
        pages = 0
        while True:
            try:
                chunk = next(stream)
            except StopIteration:
                if not pages:
                    self.requests.add("LIST")  # an empty listing is one request too
                return
            except oe.BaseError as exc:
                self.requests.add("LIST")
                raise translate(exc, self.url) from None
            pages += 1
            self.requests.add("LIST")  # one page of up to 1000 keys, one request
            yield from chunk


class ObjectBlobs:
    def __init__(self, remote: Remote, cache: BlobCache) -> None:
        self.remote = remote
        self.cache = cache
        self._pools: dict[str, ThreadPoolExecutor] = {}
        self._pool_lock = threading.Lock()

    def pool(self, kind: str = "blobs") -> ThreadPoolExecutor:
        """Workers for whole blobs, and others for the ranges of large ones: a blob's fetch waits for its ranges,
        so they must not queue behind it in the same pool."""
        with self._pool_lock:
            if kind not in self._pools:
                self._pools[kind] = ThreadPoolExecutor(max_workers=_concurrency(), thread_name_prefix=f"ckpt-{kind}")
            return self._pools[kind]

    # -- what the store holds ----------------------------------------------------------------------------------------
    def size(self, digest: str) -> int | None:
        path = self.cache.path(digest)
        if path is not None:  # a cached blob was checked against its hash: its size is the stored blob's
            return os.stat(path).st_size
        meta = self.remote.head(_blob_key(digest))
        return None if meta is None else int(meta["size"])

    def exists_remotely(self, digest: str) -> bool:
        return self.remote.head(_blob_key(digest)) is not None

    def iter(self) -> Iterator[tuple[str, int, float]]:
        for meta in self.remote.list("objects/"):
            parts = meta["path"].split("/")
            if len(parts) == 3 and len(parts[1]) == 2 and len(parts[2]) == 62:
                yield parts[1] + parts[2], int(meta["size"]), meta["last_modified"].timestamp()

    def delete(self, digest: str) -> None:
        import obstore

        failpoint("gc.unlink")
        self.remote.call("DELETE", obstore.delete, _blob_key(digest))

    # -- reading -------------------------------------------------------------------------------------------------------
    def _get(self, digest: str, size: int | None = None) -> bytes:
        """The blob's bytes from the remote: one GET, or ranged GETs side by side for a large blob."""
        try:
            return self._get_bytes(digest, size)
        except CorruptObject:  # not found: said of the blob, so that callers can name its checkpoint and file
            raise CorruptObject(f"Blob {digest[:12]} is missing from the store.", digest=digest) from None

    def _get_bytes(self, digest: str, size: int | None) -> bytes:
        import obstore

        key = _blob_key(digest)
        if size is not None and size > MULTIPART_BYTES:
            starts = list(range(0, size, PART_BYTES))
            ends = [min(s + PART_BYTES, size) for s in starts]
            futures = [self.pool("ranges").submit(self.remote.call, "GET", obstore.get_range, key, start=s, end=e,
                                          key=key)
                       for s, e in zip(starts, ends)]
            return b"".join(bytes(f.result()) for f in futures)
        return bytes(self.remote.call("GET", lambda c, k: obstore.get(c, k).bytes(), key, key=key))

    def fetch(self, digest: str, size: int | None = None) -> str:
        """The cached file of the blob, fetched and checked first when it is not cached."""
        path = self.cache.path(digest, size)
        if path is not None:
            return path
        data = self._get(digest, size)
        if size is not None and len(data) != size:
            raise CorruptObject(f"Blob {digest[:12]} has {len(data)} bytes in {self.remote.url}, expected {size}.",
                                digest=digest)
        return self.cache.add(digest, data, source=self.remote.url)

    def prefetch(self, blobs: Sequence[tuple[str, int]]) -> None:
        """Fetch every blob not cached yet, side by side (the first error is raised once all have finished)."""
        todo = {d: s for d, s in blobs if self.cache.path(d, s) is None}
        if not todo:
            return
        futures = [self.pool().submit(self.fetch, d, s) for d, s in todo.items()]
        errors = [f.exception() for f in futures]
        first = next((e for e in errors if e is not None), None)
        if first is not None:
            raise first

    def read(self, digest: str, start: int = 0, end: int | None = None) -> bytes:
        path = self.cache.path(digest)
        if path is None:
            path = self.fetch(digest)
        with open(path, "rb") as f:
            if start:
                f.seek(start)
            return f.read() if end is None else f.read(end - start)

    def rehash(self, digest: str) -> str:
        """The hash of what the remote holds now (verify checks the store, not the cache)."""
        meta = self.remote.head(_blob_key(digest))
        if meta is None:
            raise CorruptObject(f"Blob {digest[:12]} is missing from the store.", digest=digest)
        return hash_bytes(self._get(digest, int(meta["size"])))

    def local_path(self, digest: str) -> str | None:
        return self.fetch(digest)

    def map(self, blobs: Sequence[tuple[str, int]]) -> memoryview | None:
        self.prefetch(blobs)
        return self.cache.files.map(blobs)

    def session(self) -> "ObjectBlobSession":
        return ObjectBlobSession(self)


class ObjectBlobSession:
    """Uploads the blobs of one save in the background, a bounded number in flight (each holds a copy of its bytes:
    the caller's buffer may be a map of a file that is closed once `put` returns)."""

    def __init__(self, blobs: ObjectBlobs) -> None:
        self._blobs = blobs
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(_concurrency() * 2)
        self._futures: list[Future[None]] = []
        self._seen: set[str] = set()
        self.published: list[tuple[str, int]] = []
        self.bytes_written = 0
        self._aborted = False

    def assume_present(self, digests: set[str]) -> None:
        """Blobs the caller knows are stored (a committed checkpoint's, kept by gc while the save holds the objects
        lock): `put` skips them without asking the server."""
        with self._lock:
            self._seen.update(digests)

    def put(self, digest: str, data: bytes | memoryview) -> bool:
        with self._lock:
            if digest in self._seen:
                return False
            self._seen.add(digest)
        self._slots.acquire()
        try:
            payload = bytes(data)
            future = self._blobs.pool().submit(self._upload, digest, payload)
        except BaseException:
            self._slots.release()
            raise
        future.add_done_callback(lambda _: self._slots.release())
        with self._lock:
            self._futures.append(future)
        return True

    def _upload(self, digest: str, data: bytes) -> None:
        import obstore
        import obstore.exceptions as oe

        if self._aborted:
            return
        remote = self._blobs.remote
        key = _blob_key(digest)
        if remote.head(key) is not None:
            return
        failpoint("blob.write")
        try:
            if len(data) > MULTIPART_BYTES:  # multipart takes no condition; the HEAD above skipped what was there
                remote.call("PUT", obstore.put, key, data, use_multipart=True, chunk_size=PART_BYTES,
                            max_concurrency=4, key=key)
                remote.requests.add("PUT", -(len(data) // -PART_BYTES) + 1)  # parts, and the complete call
            else:
                remote.call("PUT", obstore.put, key, data, mode="create", key=key)
        except oe.AlreadyExistsError:
            return  # another writer uploaded it meanwhile: the same bytes, by its name
        with self._lock:
            self.bytes_written += len(data)
            self.published.append((digest, len(data)))

    def commit(self) -> None:
        failpoint("blob.sync")
        first = None
        for future in list(self._futures):
            exc = future.exception()
            if exc is not None and first is None:
                first = exc
        if first is not None:
            raise first

    def abort(self) -> None:
        self._aborted = True
        for future in list(self._futures):
            future.cancel()
        for future in list(self._futures):
            if not future.cancelled():
                future.exception()


class ObjectDocuments:
    def __init__(self, remote: Remote, scratch: Path) -> None:
        self.remote = remote
        self._listed: dict[str, tuple[str, float]] = {}  # key -> (ETag, when a listing showed it)
        self._lock = threading.Lock()
        self._copies = scratch / "documents"
        self._settings: tuple[bytes, str] | None = None

    def _copy_path(self, key: str) -> Path:
        return self._copies / hashlib.sha256(key.encode()).hexdigest()[:40]

    def _cached(self, key: str) -> tuple[bytes, str] | None:
        with self._lock:
            seen = self._listed.get(key)
        # A manifest never changes (its key is the hash of its bytes): a listing this process made says it is there,
        # however long ago. Other documents may move, so only a listing of the last seconds vouches for them.
        if seen is None or (time.monotonic() - seen[1] > 10.0 and not key.startswith("checkpoints/")):
            return None
        try:
            raw = self._copy_path(key).read_bytes()
        except OSError:
            return None
        etag, _, data = raw.partition(b"\n")
        return (data, seen[0]) if etag.decode() == seen[0] else None

    def copy(self, key: str) -> bytes | None:
        """The local copy of a document last read or listed, however old: for manifests, whose bytes never change
        (the caller checks them against their hash), once the index says they are there."""
        try:
            return self._copy_path(key).read_bytes().partition(b"\n")[2]
        except OSError:
            return None

    def _keep(self, key: str, data: bytes, etag: str) -> None:
        if len(data) > 1 << 20:
            return
        path = self._copy_path(key)
        try:
            self._copies.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}")
            tmp.write_bytes(etag.encode() + b"\n" + data)
            os.replace(tmp, path)
        except OSError:
            pass

    def _forget(self, key: str) -> None:
        if key == "store.json":
            self._settings = None
        with self._lock:
            self._listed.pop(key, None)

    def get(self, key: str) -> tuple[bytes, str] | None:
        import obstore

        cached = self._cached(key)
        if cached is not None:
            return cached
        if key == "store.json" and self._settings is not None:
            return self._settings  # read once per open: it changes only at init and at a format upgrade
        try:
            result = self.remote.call("GET", obstore.get, key, key=key, missing_ok=True)
        except FileNotFoundError:
            return None
        data = bytes(result.bytes())
        etag = result.meta["e_tag"] or ""
        self._keep(key, data, etag)
        if key == "store.json":
            self._settings = (data, etag)
        return data, etag

    def create(self, key: str, data: bytes) -> bool:
        import obstore
        import obstore.exceptions as oe

        self._forget(key)
        try:
            self.remote.call("PUT", obstore.put, key, data, mode="create", key=key)
        except (oe.AlreadyExistsError, oe.PreconditionError):
            return False
        return True

    def replace(self, key: str, data: bytes, expected: str) -> bool:
        import obstore
        import obstore.exceptions as oe

        self._forget(key)
        try:
            self.remote.call("PUT", obstore.put, key, data, mode={"e_tag": expected}, key=key)
        except (oe.AlreadyExistsError, oe.PreconditionError, FileNotFoundError):
            return False
        return True

    def put(self, key: str, data: bytes) -> None:
        import obstore

        self._forget(key)
        self.remote.call("PUT", obstore.put, key, data, key=key)

    def remove(self, key: str, expected: str | None = None) -> bool:
        import obstore

        self._forget(key)
        # S3 deletes take no condition here: compare, then delete (only gc and tag removal call this, under the
        # store's commit lock, so no other ckptstore writer changes the document in between).
        if expected is not None:
            current = self.get(key)
            if current is None or current[1] != expected:
                return False
        elif self.remote.head(key) is None:
            return False
        self.remote.call("DELETE", obstore.delete, key, key=key)
        return True

    def list(self, prefix: str) -> Iterator[str]:
        now = time.monotonic()
        for meta in self.remote.list(prefix):
            key = meta["path"]
            if meta.get("e_tag"):
                with self._lock:
                    self._listed[key] = (meta["e_tag"], now)
            yield key

    def list_meta(self, prefix: str) -> Iterator[dict]:
        yield from self.remote.list(prefix)

    def list_after(self, prefix: str, offset: str) -> Iterator[str]:
        """Keys under `prefix` that sort after `offset` (one request per 1000 of them): the journal's tail."""
        for meta in self.remote.list(prefix, offset=offset):
            yield meta["path"]


class ObjectStoreBackend:
    """A store under a prefix of a bucket, reached through obstore."""

    def __init__(self, url: str, *, cache: BlobCache | None = None) -> None:
        scheme, bucket, prefix = split_url(url)
        self.url = f"{scheme}://{bucket}/{prefix}".rstrip("/")
        self.remote = Remote(self.url)
        self._scratch = cache_home() / "remote" / hashlib.sha256(self.url.encode()).hexdigest()[:24]
        self.cache = cache or BlobCache()
        self.blobs = ObjectBlobs(self.remote, self.cache)
        self.documents = ObjectDocuments(self.remote, self._scratch)
        self.lease_seconds = env_seconds("CKPT_REMOTE_LEASE_SECONDS", 60.0, minimum=1.0)
        # gc keeps unreferenced blobs younger than this: a save whose lease lapsed (a paused process) may still
        # reference them.
        self.blob_grace = env_seconds("CKPT_REMOTE_GC_GRACE_SECONDS", 3600.0)
        self.coordination = RemoteCoordination(self.documents, ttl=self.lease_seconds, url=self.url)
        self.remote.read_only = not self.writable

    @property
    def requests(self) -> RequestCounter:
        return self.remote.requests

    @property
    def scratch(self) -> str:
        self._scratch.mkdir(parents=True, exist_ok=True)
        return os.fspath(self._scratch)

    @property
    def writable(self) -> bool:
        # Credentials that may only read (a deploy machine) say so with CKPT_REMOTE_READ_ONLY=1: loads then take no
        # lease (a write). Otherwise a refused write is a RemoteStoreError naming the credentials.
        return os.environ.get("CKPT_REMOTE_READ_ONLY", "") not in ("1", "true", "yes")

    def create(self) -> None:
        others = set()
        for meta in self.remote.list(""):
            top = meta["path"].split("/", 1)[0]
            if top not in LAYOUT:
                others.add(top)
                if len(others) > 3:
                    break
        if others:
            raise InvalidArgument(
                f"{self.url} already holds objects ({', '.join(sorted(others)[:3])}) and is not a store.",
                hint="A store gets a prefix of its own: choose a new one, e.g. s3://BUCKET/ckpts.",
            )

    def open(self) -> None:
        pass

    def leftovers(self, *, grace: float) -> list[str]:
        # Parts of multipart uploads a killed save left are invisible and never listed; a bucket lifecycle rule
        # (AbortIncompleteMultipartUpload) removes them (README, "Remote stores").
        return []

    def remove_leftovers(self, items: list[str] | tuple[str, ...]) -> None:
        pass

    def free_bytes(self) -> int | None:
        return None

    def close(self) -> None:
        self.coordination.close()

    def __repr__(self) -> str:
        return f"ObjectStoreBackend({self.url!r})"
