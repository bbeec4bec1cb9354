"""A second backend for the tests: blobs and documents in dicts, no files, no rename, no flock.

It offers exactly what an object store offers (create-if-absent and compare-and-swap on documents, whole-blob
puts, ranged reads, no local paths, no maps), so a store that runs on it cannot be touching the filesystem above
the seam: its index and temporary files live in `scratch`, the only local folder a remote store would have too.
"""

from __future__ import annotations

import contextlib
import itertools
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence

from ckptstore.errors import CorruptObject, StoreLocked


class MemoryBlobs:
    def __init__(self) -> None:
        self.data: dict[str, tuple[bytes, float]] = {}
        self.lock = threading.Lock()

    def size(self, digest: str) -> int | None:
        item = self.data.get(digest)
        return None if item is None else len(item[0])

    def read(self, digest: str, start: int = 0, end: int | None = None) -> bytes:
        item = self.data.get(digest)
        if item is None:
            raise CorruptObject(f"Blob {digest[:12]} is missing from the store.", digest=digest)
        return item[0][start:end]

    def local_path(self, digest: str) -> None:
        return None

    def map(self, blobs: Sequence[tuple[str, int]]) -> None:
        return None

    def session(self) -> "MemorySession":
        return MemorySession(self)

    def iter(self) -> Iterator[tuple[str, int, float]]:
        with self.lock:
            items = list(self.data.items())
        for digest, (data, mtime) in items:
            yield digest, len(data), mtime

    def replace(self, digest: str, data: bytes | memoryview) -> bool:
        with self.lock:
            if digest not in self.data:
                return False
            self.data[digest] = (bytes(data), time.time())
            return True

    def delete(self, digest: str) -> None:
        with self.lock:
            self.data.pop(digest, None)


class MemorySession:
    def __init__(self, blobs: MemoryBlobs) -> None:
        self.blobs = blobs
        self.staged: dict[str, bytes] = {}
        self.lock = threading.Lock()
        self.bytes_written = 0
        self.published: list[tuple[str, int]] = []

    def put(self, digest: str, data: bytes | memoryview) -> bool:
        with self.lock:
            if digest in self.staged or digest in self.blobs.data:
                return False
            self.staged[digest] = bytes(data)
            self.bytes_written += len(self.staged[digest])
            return True

    def commit(self) -> None:
        with self.blobs.lock:
            now = time.time()
            for digest, data in self.staged.items():
                self.blobs.data.setdefault(digest, (data, now))
                self.published.append((digest, len(data)))
        self.staged.clear()

    def abort(self) -> None:
        self.staged.clear()


class MemoryDocuments:
    def __init__(self) -> None:
        self.data: dict[str, tuple[bytes, str]] = {}
        self.lock = threading.Lock()
        self._versions = itertools.count(1)

    def get(self, key: str) -> tuple[bytes, str] | None:
        with self.lock:
            return self.data.get(key)

    def create(self, key: str, data: bytes) -> bool:
        with self.lock:
            if key in self.data:
                return False
            self.data[key] = (bytes(data), str(next(self._versions)))
            return True

    def replace(self, key: str, data: bytes, expected: str) -> bool:
        with self.lock:
            current = self.data.get(key)
            if current is None or current[1] != expected:
                return False
            self.data[key] = (bytes(data), str(next(self._versions)))
            return True

    def remove(self, key: str, expected: str | None = None) -> bool:
        with self.lock:
            current = self.data.get(key)
            if current is None or (expected is not None and current[1] != expected):
                return False
            del self.data[key]
            return True

    def list(self, prefix: str) -> Iterator[str]:
        with self.lock:
            keys = [k for k in self.data if k.startswith(prefix)]
        yield from keys


class MemoryCoordination:
    """Locks between the threads of this process (the only writers a memory store can have)."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.exclusive: set[str] = set()
        self.shared: dict[str, int] = {}
        self.leases: dict[str, int] = {}

    @contextlib.contextmanager
    def lock(self, name: str, *, exclusive: bool = True, timeout: float = 60.0) -> Iterator[None]:
        deadline = time.monotonic() + timeout
        with self.cond:
            while name in self.exclusive or (exclusive and self.shared.get(name)):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise StoreLocked(f"Timed out after {timeout:.0f}s waiting for the {name} lock of the store.")
                self.cond.wait(left)
            if exclusive:
                self.exclusive.add(name)
            else:
                self.shared[name] = self.shared.get(name, 0) + 1
        try:
            yield
        finally:
            with self.cond:
                if exclusive:
                    self.exclusive.discard(name)
                else:
                    self.shared[name] -= 1
                self.cond.notify_all()

    @contextlib.contextmanager
    def lease(self, key: str) -> Iterator[None]:
        with self.cond:
            self.leases[key] = self.leases.get(key, 0) + 1
        try:
            yield
        finally:
            with self.cond:
                self.leases[key] -= 1
                if not self.leases[key]:
                    del self.leases[key]

    def live_leases(self, prefix: str) -> set[str]:
        with self.cond:
            return {k for k in self.leases if k.startswith(prefix)}


class MemoryBackend:
    def __init__(self) -> None:
        self.blobs = MemoryBlobs()
        self.documents = MemoryDocuments()
        self.coordination = MemoryCoordination()
        self._scratch = tempfile.TemporaryDirectory(prefix="ckpt-memory-")
        self.url = f"memory://{id(self):x}"

    @property
    def scratch(self) -> str:
        return self._scratch.name

    @property
    def writable(self) -> bool:
        return True

    def create(self) -> None:
        pass

    def open(self) -> None:
        pass

    def free_bytes(self) -> None:
        return None  # memory: no up-front check

    def leftovers(self, *, grace: float) -> list[str]:
        return []  # a memory session that dies takes its staged blobs with it

    def remove_leftovers(self, items) -> None:
        pass

    def close(self) -> None:
        self._scratch.cleanup()
