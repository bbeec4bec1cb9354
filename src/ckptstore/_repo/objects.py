"""Blobs as a save writes and a load reads them: hashing in worker threads over the backend's blob session.

Write order (docs/format.md): blobs are made durable before anything references them. A session stages new blobs
and makes them durable and visible together on commit, so a blob under its name always holds its whole content; a
crash leaves at worst unreferenced blobs for gc.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor

import blake3

from .._backend.protocols import Blobs
from .._core.hashing import BlobRef, flat, hash_bytes
from ..errors import CorruptObject


class BlobHasher:
    """A BlobWriter that writes nothing: the BlobRefs a save would produce, to compare a folder with what is stored
    (ingest gives it the same blobs it gives a writer, so equal files come out with equal digests)."""

    bytes_written = 0

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=os.cpu_count() or 1, thread_name_prefix="ckpt-hash")

    def put(self, data: bytes | memoryview) -> Future[BlobRef]:
        return self._pool.submit(self._ref, data)

    @staticmethod
    def _ref(data: bytes | memoryview) -> BlobRef:
        view = flat(data)
        return BlobRef(hash_bytes(view), len(view))

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


class BlobWriter:
    """Writes the blobs of one save: hashing and writing run in worker threads (BLAKE3 and the backend's writes
    release the GIL), blobs already stored are skipped, and nothing becomes visible before `commit`.

    ``put`` returns a future of the BlobRef; callers keep the futures in file order to build the manifest.
    """

    def __init__(self, blobs: Blobs, *, threads: int | None = None) -> None:
        if threads is None:
            # One worker more than there are cores, so the cores keep hashing while a worker waits in write(2)
            # or for the disk queue. Measured on 2 cores (BERT-base first save, median of 9): 2 workers 0.48 s,
            # 3 workers 0.39 s, 4 workers 0.49 s. More than 4 was never measured to pay.
            threads = min(4, (os.cpu_count() or 1) + 1)
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="ckpt-blob")
        self._session = blobs.session()
        self._lock = threading.Lock()
        self.bytes_hashed = 0

    @property
    def bytes_written(self) -> int:
        return self._session.bytes_written

    @property
    def wants_known_blobs(self) -> bool:
        """Whether the backend's session saves work when told which blobs are stored (a remote store: a request
        per blob); a local one checks with a stat and is not told."""
        return hasattr(self._session, "assume_present")

    def assume_present(self, digests: set[str]) -> None:
        self._session.assume_present(digests)

    def put(self, data: bytes | memoryview) -> Future[BlobRef]:
        return self._pool.submit(self._put, data)

    def _put(self, data: bytes | memoryview) -> BlobRef:
        view = flat(data)
        digest = hash_bytes(view)
        with self._lock:
            self.bytes_hashed += len(view)
        self._session.put(digest, view)
        return BlobRef(digest, len(view))

    def commit(self) -> None:
        """Make every staged blob durable, then visible under its digest."""
        self._pool.shutdown(wait=True)
        self._session.commit()

    def abort(self) -> None:
        """Forget what is staged (blobs already made visible stay for gc: see `published`)."""
        try:
            self._pool.shutdown(wait=True, cancel_futures=True)
        finally:  # a second Ctrl-C during the wait still removes what is staged
            self._session.abort()

    @property
    def published(self) -> list[tuple[str, int]]:
        return self._session.published

    @property
    def published_bytes(self) -> int:
        return sum(size for _, size in self._session.published)


def missing_blobs(blobs: Blobs, digests: Iterable[str]) -> list[str]:
    """The blobs of `digests` the store does not hold, each asked once. Existence is the stored object's size (a
    packed blob's header is not read for it). On a remote store each is a HEAD request: asked side by side, not
    one after another (a save carrying over blobs, a sync sending a checkpoint's)."""
    unique = list(dict.fromkeys(digests))
    size = getattr(blobs, "stored_size", blobs.size)
    if len(unique) < 2:
        return [d for d in unique if size(d) is None]
    with ThreadPoolExecutor(max_workers=min(16, len(unique)), thread_name_prefix="ckpt-check") as pool:
        sizes = list(pool.map(size, unique))
    return [d for d, got in zip(unique, sizes) if got is None]


def read_blob(blobs: Blobs, digest: str, *, verify: bool = True) -> bytes:
    data = blobs.read(digest)
    if verify and hash_bytes(data) != digest:
        raise CorruptObject(f"Blob {digest[:12]} is corrupt: its content does not match its hash.", digest=digest)
    return data


def rehash(blobs: Blobs, digest: str, size: int | None = None) -> str:
    """The hash of the raw bytes stored under `digest` now (deep verification): mapped and hashed on every core
    where the blob is a local raw file of `size` bytes, read (and so decoded, when packed) elsewhere."""
    remote = getattr(blobs, "rehash", None)
    if remote is not None:  # a remote store: its local files are a cache, and verify checks the store itself
        return remote(digest)
    path = blobs.local_path(digest)
    if path is None:
        return hash_bytes(blobs.read(digest))
    try:
        stored = os.stat(path).st_size
    except FileNotFoundError:
        raise CorruptObject(f"Blob {digest[:12]} is missing from the store.", digest=digest) from None
    if size is not None and stored != size:
        return hash_bytes(blobs.read(digest))
    size = stored
    hasher = blake3.blake3(max_threads=blake3.blake3.AUTO)
    if size:
        hasher.update_mmap(path)
    return hasher.hexdigest()
