"""The local blob cache of remote stores: content-addressed files, checked against their hash before they enter,
size-capped, least recently used first out.

A blob enters only through `add`, which hashes the bytes and refuses them when they do not match their name, then
writes them to a temporary file and renames it into place: a file under a blob's name always holds that blob, so
the cache never serves bad bytes (a file of the wrong size, damaged on the local disk, is dropped when met).
The layout is a store's (``objects/ab/cdef...``), so the local backend's zero-copy maps work on it unchanged, and
one cache serves every remote store of the user (a blob is the same blob whichever bucket it came from).

Where: ``$CKPT_CACHE_DIR``, else ``$XDG_CACHE_HOME/ckptstore/blobs`` (``~/.cache/ckptstore/blobs``); cap:
``$CKPT_CACHE_MAX_BYTES`` (default 20 GiB), enforced as blobs enter by removing the least recently used blobs.

It also keeps the decoded bytes of a local store's packed blobs (_repo/encoded.py): the same bytes under the same
name, so a second load maps them zero-copy and an export copies them, as for a raw blob.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .._core.hashing import hash_bytes
from .._core.info import human_bytes
from ..errors import CorruptObject
from .local import LocalBlobs
from .posix import make_tmp_path

DEFAULT_MAX_BYTES = 20 << 30


def cache_home() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "ckptstore"


def default_cache_dir() -> Path:
    return Path(os.environ.get("CKPT_CACHE_DIR") or cache_home() / "blobs")


def default_max_bytes() -> int:
    raw = os.environ.get("CKPT_CACHE_MAX_BYTES")
    try:
        return int(raw) if raw else DEFAULT_MAX_BYTES
    except ValueError:
        return DEFAULT_MAX_BYTES


@dataclass(frozen=True)
class CacheUsage:
    path: str
    blobs: int
    bytes: int
    max_bytes: int

    @property
    def bytes_str(self) -> str:
        return human_bytes(self.bytes)

    def to_json(self) -> dict:
        return {"path": self.path, "blobs": self.blobs, "bytes": self.bytes, "max_bytes": self.max_bytes}


class BlobCache:
    def __init__(self, root: str | os.PathLike[str] | None = None, *, max_bytes: int | None = None) -> None:
        self.root = Path(root) if root is not None else default_cache_dir()
        self.max_bytes = default_max_bytes() if max_bytes is None else max_bytes
        self.files = LocalBlobs(self.root)  # objects/ab/cdef..., mapped as a local store's blobs are
        self._lock = threading.Lock()
        self._total: int | None = None  # what the cache holds, counted once then kept up to date by `add`

    def path(self, digest: str, size: int | None = None) -> str | None:
        """The cached file of `digest` (its use recorded for LRU), or None. A file of the wrong size is dropped."""
        path = self.files.fspath(digest)
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return None
        if size is not None and st.st_size != size:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            return None
        # Recency by mtime: atime is often not kept (noatime, relatime), and a touch is one cheap syscall.
        if time.time() - st.st_mtime > 60:
            with contextlib.suppress(OSError):
                os.utime(path)
        return path

    def add(self, digest: str, data: bytes | memoryview, *, source: str = "", checked: bool = False) -> str:
        """Check `data` against `digest`, then keep it. CorruptObject (nothing cached) when it does not match.
        `checked`: the caller has just hashed these very bytes (a decode checks its output), so not twice."""
        if not checked and hash_bytes(data) != digest:
            raise CorruptObject(
                f"Blob {digest[:12]} fetched from {source or 'the remote store'} does not match its hash (its bytes"
                " were changed in the store); it was not used or cached.",
                digest=digest,
            )
        final = self.files.fspath(digest)
        os.makedirs(os.path.dirname(final), exist_ok=True)
        self.files.tmp.mkdir(parents=True, exist_ok=True)
        tmp = make_tmp_path(self.files.tmp, ".blob")
        try:
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, final)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        with self._lock:  # loads and exports add from several threads
            if self._total is None:
                self._total = self.usage().bytes  # once: every other process's blobs count too
            else:
                self._total += len(data)
            if self._total > self.max_bytes:
                # Down to 15/16 of the cap, so that a full cache is not walked again at the next blob.
                _, freed = self.prune(self.max_bytes - self.max_bytes // 16)
                self._total -= freed
        return final

    def discard(self, digest: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.files.fspath(digest))

    def entries(self) -> Iterator[tuple[str, int, float]]:
        return self.files.iter()

    def usage(self) -> CacheUsage:
        n = total = 0
        for _, size, _ in self.entries():
            n += 1
            total += size
        return CacheUsage(str(self.root), n, total, self.max_bytes)

    def prune(self, max_bytes: int | None = None) -> tuple[int, int]:
        """Remove the least recently used blobs until the cache holds at most `max_bytes`. Returns (blobs, bytes)
        removed. A blob mapped by a running load stays readable: unlinking keeps the mapped file alive."""
        limit = self.max_bytes if max_bytes is None else max_bytes
        items = sorted(self.entries(), key=lambda e: e[2])
        total = sum(size for _, size, _ in items)
        removed = freed = 0
        for digest, size, _ in items:
            if total <= limit:
                break
            self.discard(digest)
            total -= size
            removed += 1
            freed += size
        return removed, freed
