"""The storage seam: the three small protocols every store backend fills.

Everything above this package (the repository, the operations, the facade) reaches store files only through these,
so a store can live in a local folder (LocalBackend), in memory (the tests' second backend), or in an object store,
which has no rename, no flock and no append, but has conditional PUT (If-None-Match for create, If-Match for
compare-and-swap). Each protocol asks only for what such a store can give:

- **blobs**: immutable, named by the hash of their bytes; written through a session that makes them durable and
  visible together on commit (a blob under its final name always holds its whole content).
- **documents**: small named byte strings (manifests, name claims, tags, run settings, deletion records) with a
  version: created only if absent, replaced only if unchanged since read, removed, listed by prefix.
- **coordination**: locks between writers and gc, and leases that mark a checkpoint in use while a process reads it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from typing import Protocol, runtime_checkable

Version = str
"""What a document's version is to its backend (an ETag, a content hash): opaque above the seam."""


@runtime_checkable
class BlobSession(Protocol):
    """The blobs of one save. `put` may be called from several threads at once; nothing is visible before `commit`."""

    bytes_written: int
    published: list[tuple[str, int]]  # (digest, size) of blobs this session made visible (for a failed commit)

    def put(self, digest: str, data: bytes | memoryview) -> bool:
        """Stage `data` (whose hash the caller computed) under `digest`; False when the store already has it."""
        ...

    def commit(self) -> None:
        """Make every staged blob durable, then visible under its digest."""
        ...

    def abort(self) -> None:
        """Forget what was staged; nothing becomes visible."""
        ...


@runtime_checkable
class Blobs(Protocol):
    def size(self, digest: str) -> int | None:
        """The stored blob's size in bytes, or None when it is not stored."""
        ...

    def read(self, digest: str, start: int = 0, end: int | None = None) -> bytes:
        """Bytes [start, end) of the blob (to its end when `end` is None). CorruptObject when it is missing."""
        ...

    def local_path(self, digest: str) -> str | None:
        """A local file holding exactly the blob's bytes, for zero-copy maps and kernel copies; None where the
        backend keeps no such file. The caller checks the file's size before mapping it."""
        ...

    def map(self, blobs: Sequence[tuple[str, int]]) -> memoryview | None:
        """The blobs (digest, size) laid end to end in one private read-only-to-the-store buffer, without copying;
        None where the backend cannot map (the caller then reads)."""
        ...

    def session(self) -> BlobSession: ...

    def iter(self) -> Iterator[tuple[str, int, float]]:
        """Every stored blob as (digest, size, modification time)."""
        ...

    def replace(self, digest: str, data: bytes | memoryview) -> bool:
        """Atomically put `data`, another stored form of the same blob (an encoding, docs/format.md), in place of
        the stored one: readers see the old form or the new, never a mix, and the new one is durable when this
        returns. False when the blob is not stored."""
        ...

    def delete(self, digest: str) -> None: ...


@runtime_checkable
class Documents(Protocol):
    def get(self, key: str) -> tuple[bytes, Version] | None: ...

    def create(self, key: str, data: bytes) -> bool:
        """Write `data` under `key` only if nothing is there (If-None-Match: *); False when something is."""
        ...

    def replace(self, key: str, data: bytes, expected: Version) -> bool:
        """Write `data` over the version `expected` (If-Match); False when the document changed or is gone."""
        ...

    def remove(self, key: str, expected: Version | None = None) -> bool:
        """Remove the document (only at version `expected` when given); False when it was not there or changed."""
        ...

    def list(self, prefix: str) -> Iterator[str]:
        """Keys that start with `prefix`, in no particular order."""
        ...


@runtime_checkable
class Coordination(Protocol):
    def lock(self, name: str, *, exclusive: bool = True, timeout: float = 60.0) -> AbstractContextManager[None]:
        """Held between processes until the block ends; StoreLocked after `timeout` seconds of waiting."""
        ...

    def lease(self, key: str) -> AbstractContextManager[None]:
        """Mark `key` in use until the block ends; a lease never outlives its holder (process death ends it)."""
        ...

    def live_leases(self, prefix: str) -> set[str]:
        """Keys under `prefix` with a live lease (stale ones are cleared on the way)."""
        ...


class Backend(Protocol):
    """A store's storage: its blobs, documents and coordination, plus a local folder for caches and scratch files."""

    blobs: Blobs
    documents: Documents
    coordination: Coordination
    url: str

    @property
    def scratch(self) -> str:
        """A local folder this store may use for its index and temporary files."""
        ...

    @property
    def writable(self) -> bool: ...

    def create(self) -> None:
        """Make the container of a new store; refuse a location that holds something else."""
        ...

    def open(self) -> None:
        """Check the location before anything reads through it."""
        ...

    def leftovers(self, *, grace: float) -> list[str]:
        """Temporary files of interrupted writes, for gc to remove (under the objects lock, so no save is writing;
        other temporary files only once their writer is gone or `grace` seconds old)."""
        ...

    def remove_leftovers(self, items: list[str] | tuple[str, ...]) -> None: ...

    def free_bytes(self) -> int | None:
        """Bytes a write can still use (None where there is no such limit to check up front)."""
        ...


__all__ = ["Backend", "BlobSession", "Blobs", "Coordination", "Documents", "Version"]
