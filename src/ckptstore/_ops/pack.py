"""Packing: store the blobs of older checkpoints encoded (zstd over byte planes, or a delta against the same tensor
of the checkpoint before), off the training path. Formats: _format/encoding.py; reading: _repo/encoded.py.

What is packed: the checkpoints asked for, oldest first, except the blobs a checkpoint kept raw shares (the run's
latest, its best and user-tagged checkpoints when the run keeps them raw), so those load zero-copy as before.

Each blob is encoded in memory, decoded again and checked against its digest, then put in place of its raw form
through `Blobs.replace` (temporary file, fsync, rename), so a crash at any point leaves every blob whole in one form
or the other. Packing holds the objects lock shared (gc never runs meanwhile, so no base a new delta names can be
collected) and a `pack` lock exclusively (two packers never build chains through each other).

Chains stay short and acyclic: a delta's base chain is at most `max_chain` long (else the blob is stored zstd, a
full copy), a blob that already serves as some delta's base is never turned into a delta itself, and an encoded blob
is never encoded again.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .._core.hashing import BlobRef, hash_bytes
from .._format import encoding as enc
from .._format.manifest import FileEntry, Manifest
from .._format.safetensors import DTYPES
from ..errors import CkptError, InvalidArgument

if TYPE_CHECKING:
    from .._core.info import CheckpointInfo
    from .._repo.repository import Repository

# bench/bench_storage.py's level table: on XOR deltas grouped in byte planes, level 1 compressed as well as levels
# 3 to 9, at twice their speed.
DEFAULT_LEVEL = 1
DEFAULT_MAX_CHAIN = 8  # a full copy at least every 8 deltas: a read decodes at most 8 bases
MIN_BLOB = 4096  # smaller blobs (configs, headers, the pickle) gain little and cost a read each
_WORTH = 0.97  # keep the raw form unless the encoded one saves at least 3%
_SAMPLE = 1 << 18
_RECENT_BYTES = 1 << 30  # raw bytes of the last packed checkpoint kept in memory as the next one's delta bases


@dataclass(frozen=True)
class PackReport:
    """What a pack did (or, with `dry_run`, would look at): checkpoints and blobs, raw and stored bytes."""

    checkpoints: tuple[str, ...]
    blobs_encoded: int = 0
    raw_bytes: int = 0  # raw bytes of the blobs encoded
    stored_bytes: int = 0  # what they take now
    encodings: dict[str, int] = field(default_factory=dict)  # encoding -> blobs
    kept_raw: int = 0  # blobs left raw: shared with a checkpoint kept raw, too small, or not worth it
    candidates: int = 0  # raw blobs of these checkpoints that packing considered
    candidate_bytes: int = 0
    seconds: float = 0.0
    dry_run: bool = False

    @property
    def saved_bytes(self) -> int:
        return self.raw_bytes - self.stored_bytes

    def to_json(self) -> dict[str, Any]:
        return {
            "checkpoints": list(self.checkpoints), "blobs_encoded": self.blobs_encoded, "raw_bytes": self.raw_bytes,
            "stored_bytes": self.stored_bytes, "saved_bytes": self.saved_bytes, "encodings": dict(self.encodings),
            "kept_raw": self.kept_raw, "candidates": self.candidates, "candidate_bytes": self.candidate_bytes,
            "seconds": round(self.seconds, 3), "dry_run": self.dry_run,
        }


def _width(entry: FileEntry, index: int, tensor_dtype: dict[int, str], data: bytes | memoryview) -> int:
    dtype = tensor_dtype.get(index)
    if dtype is not None:
        bits = DTYPES.get(dtype, 8)
        return max(1, bits // 8)
    if entry.kind != "torchzip":
        return 1
    # A storage record does not say its dtype without the pickle (never opened): the width whose planes compress
    # best on a sample is the dtype's width for float data.
    import zstandard

    sample = bytes(data[:_SAMPLE])
    best, best_size = 1, None
    for width in (2, 4):
        size = len(zstandard.ZstdCompressor(level=1).compress(enc.group(sample, width)))
        if best_size is None or size < best_size:
            best, best_size = width, size
    return best


def _delta_pays(raw: bytes, base: bytes, width: int) -> bool:
    """Whether XOR against `base` compresses better than the blob alone, judged on a sample (one fast level)."""
    import zstandard

    if len(raw) <= _SAMPLE:
        a, b = raw, base
    else:  # three slices: the start, the middle and the end
        step = len(raw) // 3
        cuts = [(i * step, i * step + _SAMPLE // 3) for i in range(3)]
        a = b"".join(raw[x:y] for x, y in cuts)
        b = b"".join(base[x:y] for x, y in cuts)
    compress = zstandard.ZstdCompressor(level=1).compress
    return len(compress(enc.group(enc.xor(a, b), width))) < len(compress(enc.group(a, width)))


def _positions(manifest: Manifest) -> dict[tuple[str, int], tuple[BlobRef, str | None]]:
    """Each blob by its place in the checkpoint (file, index), with its tensor's dtype when known."""
    out: dict[tuple[str, int], tuple[BlobRef, str | None]] = {}
    for entry in manifest.files:
        dtypes = _dtype_by_index(entry)
        for i, blob in enumerate(entry.blobs):
            out[(entry.path, i)] = (blob, dtypes.get(i))
    return out


def _dtype_by_index(entry: FileEntry) -> dict[int, str]:
    if not entry.is_safetensors:
        return {}
    out: dict[int, str] = {}
    index = 1
    offset = 0
    for t in sorted(entry.tensors, key=lambda t: (t.start, t.end)):
        while offset < t.end and index < len(entry.blobs):
            out[index] = t.dtype
            offset += entry.blobs[index].size
            index += 1
    return out


def _previous(infos: list["CheckpointInfo"], target: "CheckpointInfo", visible: dict[str, "CheckpointInfo"]
              ) -> "CheckpointInfo | None":
    """The checkpoint a delta of `target` is taken against: its parent, else the run's one before it by step."""
    if target.parent and target.parent in visible:
        return visible[target.parent]
    before = [c for c in infos if c.run == target.run and c.id != target.id and _order(c) < _order(target)]
    return max(before, key=_order) if before else None


def _order(c: "CheckpointInfo") -> tuple[int, float]:
    return (c.step if c.step is not None else -1, c.created_at)


def pack(repo: "Repository", ids: Iterable[str], *, dry_run: bool = False, level: int = DEFAULT_LEVEL,
         max_chain: int = DEFAULT_MAX_CHAIN, keep_raw: set[str] | None = None, threads: int | None = None,
         timeout: float = 60.0) -> PackReport:
    """Encode the blobs of the checkpoints `ids` (see the module docstring). `keep_raw`: checkpoint ids whose
    blobs must stay raw."""
    if not repo.blobs.encodings:
        raise InvalidArgument(
            f"{repo.url} keeps every blob raw: packing replaces stored objects in place, which only a local store"
            " does.",
            hint="Pack the local store you train into (ckpt pack), then 'ckpt sync' it; sync sends raw blobs.",
        )
    started = time.perf_counter()
    with repo.writing(), repo.coord.lock("pack", timeout=timeout):
        repo.sync()
        infos = repo.catalog.infos()
        visible = {c.id: c for c in infos}
        targets = sorted((visible[i] for i in dict.fromkeys(ids) if i in visible), key=_order)
        manifests = {c.id: repo.read_manifest(c.id) for c in infos}
        raw_sizes: dict[str, int] = {}
        for m in manifests.values():
            raw_sizes.update(m.blob_refs())
        stored = {d: s for d, s, _ in repo.blobs.iter()}
        encoded = {d for d, size in raw_sizes.items() if stored.get(d, size) < size}
        protected: set[str] = set()
        for cid in keep_raw or set():
            if cid in manifests:
                protected.update(manifests[cid].blob_refs())
        # Blobs that are some delta's base: they may be stored zstd, never as deltas (that would lengthen, or
        # close into a loop, the chains that run through them).
        bases: set[str] = set()
        depth: dict[str, int] = {}
        for d in encoded | {d for d in stored if d not in raw_sizes and stored[d] >= enc.HEADER_SIZE}:
            head = repo.blobs.header(d)
            if head is not None and head.base is not None:
                bases.add(head.base)

        def chain_length(digest: str) -> int:
            # A blob planned in this call counts at the chain it will have (at most: it may end zstd or raw), not
            # at the raw one it has now; else one call packing ten checkpoints builds a chain ten deep.
            if digest not in depth:
                try:
                    depth[digest] = len(repo.blobs.chain(digest))
                except CkptError:
                    depth[digest] = max_chain + 1  # a damaged chain is never extended
            return depth[digest]

        jobs: list[tuple[BlobRef, int, str | None, FileEntry, int]] = []  # blob, index, base digest, entry
        seen: set[str] = set()
        kept_raw = 0
        for ordinal, target in enumerate(targets):
            manifest = manifests[target.id]
            prev = _previous(infos, target, visible)
            prev_positions = _positions(manifests[prev.id]) if prev is not None else {}
            for entry in manifest.files:
                for i, blob in enumerate(entry.blobs):
                    if blob.digest in seen or blob.digest in encoded:
                        continue
                    seen.add(blob.digest)
                    if blob.digest in protected or blob.size < MIN_BLOB:
                        kept_raw += 1
                        continue
                    base = None
                    candidate = prev_positions.get((entry.path, i))
                    if (candidate is not None and blob.digest not in bases and candidate[0].size == blob.size
                            and candidate[0].digest != blob.digest and chain_length(candidate[0].digest) < max_chain):
                        base = candidate[0].digest
                    depth[blob.digest] = chain_length(base) + 1 if base is not None else 1
                    jobs.append((blob, i, base, entry, ordinal))
        candidate_bytes = sum(j[0].size for j in jobs)
        if dry_run:
            return PackReport(tuple(t.name for t in targets), kept_raw=kept_raw, candidates=len(jobs),
                              candidate_bytes=candidate_bytes, seconds=time.perf_counter() - started, dry_run=True)
        results = _encode_all(repo, jobs, level=level, threads=threads)
    counts: dict[str, int] = {}
    raw_bytes = stored_bytes = 0
    for name, raw, size in results:
        if name == "raw":
            kept_raw += 1
            continue
        counts[name] = counts.get(name, 0) + 1
        raw_bytes += raw
        stored_bytes += size
    return PackReport(tuple(t.name for t in targets), sum(counts.values()), raw_bytes, stored_bytes, counts, kept_raw,
                      len(jobs), candidate_bytes, time.perf_counter() - started)


def _encode_all(repo: "Repository", jobs, *, level: int, threads: int | None) -> list[tuple[str, int, int]]:
    # Jobs run in checkpoint order, oldest first, and a base is always a blob of an earlier checkpoint (or one
    # already stored), so each base is in its final form, durable, before a delta naming it is written.
    # The raw bytes of the checkpoint packed just before (hash-checked as they were read), up to _RECENT_BYTES:
    # they are the next checkpoint's bases, which would otherwise be decoded back through their whole chain.
    recent: dict[str, bytes] = {}
    current: dict[str, bytes] = {}
    budget = [_RECENT_BYTES]

    def one(job) -> tuple[str, int, int]:
        blob, index, base, entry, _ = job
        raw = repo.blobs.read(blob.digest)
        if hash_bytes(raw) != blob.digest:
            return ("raw", blob.size, blob.size)  # damaged: verify reports it; packing never hides it
        if budget[0] >= len(raw):
            budget[0] -= len(raw)
            current[blob.digest] = raw
        width = _width(entry, index, _dtype_by_index(entry), raw)
        base_raw = (recent.get(base) or repo.blobs.read(base)) if base is not None else None
        if base_raw is not None and not _delta_pays(raw, base_raw, width):
            base_raw = base = None  # the tensor moved too far (or was re-initialized) for a delta to pay
        depth = len(repo.blobs.chain(base)) + 1 if base is not None else 0
        data = enc.encode(raw, blob.digest, width=width, level=level, base=base_raw, base_digest=base, depth=depth)
        if len(data) >= blob.size * _WORTH:
            return ("raw", blob.size, blob.size)
        head = enc.parse_header(data, blob.digest)
        assert head is not None
        if enc.decode(data, head, base_raw if head.base else None) != raw:
            return ("raw", blob.size, blob.size)  # never stored unless it gives back the very bytes
        repo.blobs.replace(blob.digest, data)
        return (head.name, blob.size, len(data))

    threads = threads or max(1, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="ckpt-pack") as pool:
        # Blobs of one checkpoint run side by side; the next checkpoint starts once they are all in place, since
        # its deltas may name them as bases.
        out: list[tuple[str, int, int]] = []
        batch: list = []
        for job in jobs:
            if batch and job[4] != batch[0][4]:
                out.extend(pool.map(one, batch))
                batch = []
                recent, current = current, {}
                budget[0] = _RECENT_BYTES - sum(len(v) for v in recent.values())
            batch.append(job)
        out.extend(pool.map(one, batch))
        return out
