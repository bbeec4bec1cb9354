"""Blobs as their raw bytes, whatever form they are stored in (raw, zstd, delta: _format/encoding.py).

The repository reads every blob through `EncodedBlobs`, which wraps the backend's blobs: `read` and `size` give the
raw bytes and size (decoding an encoded object, and its delta base first), so export, checkout, verify, diff and
every other reader work unchanged on a packed store. Raw blobs stay zero-copy: `local_path` and `map` are the
backend's own, and their callers compare the stored size with the raw size the manifest gives (an encoded object
is always strictly shorter), falling back to `read` when they differ.

Every decoded blob is checked against its digest (and a delta's base against its own), so a damaged base is
reported as damage of each blob that depends on it, and never yields wrong bytes.

Decoded once, kept: `decoded_path` decodes a packed blob into the user's local blob cache (_backend/blobcache.py,
the one remote stores read through: content-addressed by the raw digest, written atomically, capped, least
recently used out), so the next load maps it zero-copy and the next export copies it, as for a raw blob. The store
itself is never written by a read. A cache file of the wrong size is dropped when met; with `verify` a cache file
is hashed before use, and a damaged one is dropped and decoded again from the store.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence

from .._backend.blobcache import BlobCache, default_max_bytes
from .._backend.protocols import Blobs, BlobSession
from .._core.hashing import hash_bytes
from .._format.encoding import DELTA, HEADER_SIZE, MAX_DECODE_CHAIN, ZSTD, Header, decode, parse_header
from ..errors import CorruptObject

_decodes = 0  # packed blobs decoded by this process (tests check that a warm load decodes none)
_decodes_lock = threading.Lock()


def decode_count() -> int:
    return _decodes


def _hash_file(path: str) -> str:
    import blake3

    return blake3.blake3().update_mmap(path).hexdigest()


class EncodedBlobs:
    """A Blobs whose `read` and `size` are those of the raw blob (see the module docstring)."""

    def __init__(self, inner: Blobs) -> None:
        self.inner = inner
        # Packing replaces a stored object in place, which only a backend with `replace` can do (a local folder).
        # Elsewhere (object storage) every object is raw: reads pass straight through, never a header read more.
        self.encodings = callable(getattr(inner, "replace", None))
        self._cache: BlobCache | None | bool = False  # False: not opened yet; None: no cache (cap 0, unwritable)

    def __getattr__(self, name: str):
        # What a backend's blobs offer beyond the protocol (a remote's prefetch and rehash) stays reachable.
        return getattr(self.inner, name)

    # -- what is stored ---------------------------------------------------------------------------------------
    def _stored(self, digest: str) -> tuple[int | None, Header | None]:
        """The stored object's size (None: missing) and its header (None: raw), from one stat and, only for an
        object long enough to hold one, one read of its first bytes."""
        size = self.inner.size(digest)
        if size is None or size < HEADER_SIZE or not self.encodings:
            return size, None
        return size, parse_header(self.inner.read(digest, 0, HEADER_SIZE), digest)

    def header(self, digest: str) -> Header | None:
        """The header of the blob's stored object when it is encoded; None when it is stored raw (or missing)."""
        if not self.encodings:
            return None
        return self._stored(digest)[1]

    def stored_size(self, digest: str) -> int | None:
        return self.inner.size(digest)

    def chain(self, digest: str) -> list[Header]:
        """The headers from the blob down its delta bases (empty for a raw blob). CorruptObject when a base is
        missing or the chain does not end."""
        out: list[Header] = []
        current: str | None = digest
        while current is not None:
            if len(out) > MAX_DECODE_CHAIN:
                raise CorruptObject(f"Blob {digest[:12]} has a delta chain longer than {MAX_DECODE_CHAIN} (a loop?).",
                                    digest=digest)
            size, head = self._stored(current)
            if size is None:
                raise CorruptObject(
                    f"Blob {digest[:12]} is missing" if current == digest
                    else f"Blob {digest[:12]} is a delta whose base {current[:12]} is missing from the store.",
                    digest=digest,
                )
            if head is None:
                break
            out.append(head)
            current = head.base
        return out

    # -- the Blobs protocol, raw --------------------------------------------------------------------------------
    def size(self, digest: str) -> int | None:
        stored, head = self._stored(digest)
        return stored if head is None else head.raw_size

    def read(self, digest: str, start: int = 0, end: int | None = None) -> bytes:
        if not self.encodings:
            return self.inner.read(digest, start, end)
        if start or end is not None:
            if self.header(digest) is None:
                return self.inner.read(digest, start, end)
            return self._raw(digest, 0)[start:end]
        return self._raw(digest, 0)

    def _raw(self, digest: str, depth: int) -> bytes:
        global _decodes
        stored = self.inner.read(digest)
        head = parse_header(stored[:HEADER_SIZE], digest) if len(stored) >= HEADER_SIZE else None
        if head is None:
            return stored
        if depth == 0:
            with _decodes_lock:
                _decodes += 1
        if head.base is not None and depth == 0:
            fast = self._chain_fast(stored, head)
            if fast is not None:
                return fast
        return self._decode_links(digest, stored, head, depth)

    def _chain_fast(self, stored: bytes, head: Header) -> bytes | None:
        """A delta chain decoded in the grouped domain: grouping is a permutation, so the XOR of every link's
        decompressed planes, ungrouped once, is the blob. One ungroup and one hash instead of one per link. None
        when the chain mixes widths or does not check out (the caller then decodes link by link, which names the
        damaged link)."""
        import numpy as np
        import zstandard

        from .._format.encoding import ungroup, xor

        decompress = zstandard.ZstdDecompressor().decompress
        acc = None
        current: tuple[bytes, Header] | None = (stored, head)
        base_raw = None
        links = 0
        try:
            while current is not None:
                data, h = current
                if (h.encoding not in (ZSTD, DELTA) or h.width != head.width or h.raw_size != head.raw_size
                        or links > MAX_DECODE_CHAIN):
                    return None
                body = np.frombuffer(decompress(bytes(data[HEADER_SIZE:]), max_output_size=h.raw_size), np.uint8)
                if len(body) != h.raw_size:
                    return None
                acc = body.copy() if acc is None else np.bitwise_xor(acc, body, out=acc)
                links += 1
                if h.base is None:
                    current = None
                    break
                nxt = self.inner.read(h.base)
                nh = parse_header(nxt[:HEADER_SIZE], h.base) if len(nxt) >= HEADER_SIZE else None
                if nh is None:
                    base_raw = nxt  # the chain ends on a raw blob
                    current = None
                else:
                    current = (nxt, nh)
        except (zstandard.ZstdError, CorruptObject):
            return None
        raw = ungroup(acc.tobytes(), head.width)
        if base_raw is not None:
            if len(base_raw) != head.raw_size:
                return None
            raw = xor(raw, base_raw)
        return raw if hash_bytes(raw) == head.digest else None

    def _decode_links(self, digest: str, stored: bytes, head: Header, depth: int) -> bytes:
        if depth > MAX_DECODE_CHAIN:
            raise CorruptObject(f"Blob {digest[:12]} has a delta chain longer than {MAX_DECODE_CHAIN} (a loop?).",
                                digest=digest)
        base = None
        if head.base is not None:
            try:
                base = self._raw(head.base, depth + 1)
            except CorruptObject as exc:
                raise CorruptObject(f"Blob {digest[:12]} is a delta whose base is damaged: {exc.message}",
                                    digest=digest) from None
            if hash_bytes(base) != head.base:
                raise CorruptObject(
                    f"Blob {digest[:12]} is a delta whose base {head.base[:12]} does not match its hash.",
                    digest=digest,
                )
        try:
            raw = decode(stored, head, base)
        except ValueError as exc:
            raise CorruptObject(f"Blob {digest[:12]} ({head.name}) cannot be decoded: {exc}.", digest=digest) from None
        if hash_bytes(raw) != digest:
            raise CorruptObject(f"Blob {digest[:12]} ({head.name}) decodes to bytes that do not match its hash.",
                                digest=digest)
        return raw

    # -- decoded blobs, kept in the local blob cache --------------------------------------------------------------
    def decoded_cache(self) -> BlobCache | None:
        if self._cache is False:
            self._cache = BlobCache() if self.encodings and default_max_bytes() > 0 else None
        return self._cache  # type: ignore[return-value]

    def decoded_path(self, digest: str, size: int, *, verify: bool = False) -> str | None:
        """A file holding the raw bytes of the packed blob `digest` (`size` bytes): its copy in the local blob
        cache, decoded from the store first when absent. None when the blob is not stored encoded (raw, or
        damaged: the caller reads it and reports the damage) or cannot be cached (then the caller decodes it)."""
        if self.header(digest) is None:  # raw (or damaged): never a cache look-up, no file touched for it
            return None
        cache = self.decoded_cache()
        if cache is None:
            return None
        path = cache.path(digest, size)
        if path is not None and verify and _hash_file(path) != digest:
            cache.discard(digest)  # damaged on the local disk: never served, decoded again below
            path = None
        if path is not None:
            return path
        if size > cache.max_bytes:
            return None
        raw = self._raw(digest, 0)  # checked against the digest (CorruptObject when the store's bytes are bad)
        try:
            return cache.add(digest, raw, checked=True)
        except OSError:
            return None  # a full or read-only disk: the caller decodes into memory instead

    def local_path(self, digest: str) -> str | None:
        """The backend's file of the stored object: the raw bytes only when its size is the raw size."""
        return self.inner.local_path(digest)

    def map(self, blobs: Sequence[tuple[str, int]]) -> memoryview | None:
        try:
            return self.inner.map(blobs)
        except CorruptObject:
            if any(self.header(digest) is not None for digest, _ in blobs):
                return None  # an encoded blob among them: the caller reads (and so decodes) instead
            raise

    def session(self) -> BlobSession:
        return self.inner.session()

    def iter(self) -> Iterator[tuple[str, int, float]]:
        """Every stored object with its stored size (what the store occupies)."""
        return self.inner.iter()

    def replace(self, digest: str, data: bytes | memoryview) -> bool:
        return self.inner.replace(digest, data)

    def delete(self, digest: str) -> None:
        self.inner.delete(digest)


def delta_bases(blobs: EncodedBlobs, raw_sizes: dict[str, int], stored: dict[str, int]) -> set[str]:
    """Every blob some blob of `raw_sizes` (digest -> raw size, the live ones) needs to decode: the bases of its
    delta chain, transitively. `stored` gives each stored object's size, so that only objects shorter than their
    raw size (the encoded ones) have their header read."""
    out: set[str] = set()
    todo = [d for d, size in raw_sizes.items() if stored.get(d, size) < size]
    while todo:
        digest = todo.pop()
        head = blobs.header(digest)
        if head is None or head.base is None or head.base in out:
            continue
        out.add(head.base)
        if stored.get(head.base, head.raw_size) < head.raw_size:
            todo.append(head.base)
    return out
