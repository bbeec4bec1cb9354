"""The manifest: one JSON document per checkpoint, named by the hash of its bytes (docs/format.md).

A manifest is immutable. Tags can move, so the tags recorded here are those given at save time; the current ones
live in ``refs/tags``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import blake3

from .._core.hashing import BlobRef
from .safetensors import TensorSpan
from ..errors import CorruptObject, IncompatibleFormat

MANIFEST_FORMAT = 1


@dataclass(frozen=True)
class TensorEntry(TensorSpan):
    """A tensor of a safetensors file as the manifest lists it (offsets in the data section, as in the header)."""

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    def to_json(self) -> list:
        return [self.name, self.dtype, list(self.shape), self.start, self.end]

    @classmethod
    def from_json(cls, raw: list) -> "TensorEntry":
        return cls(raw[0], raw[1], tuple(raw[2]), int(raw[3]), int(raw[4]))


@dataclass(frozen=True)
class FileEntry:
    """One file of the checkpoint. `blobs` in file order reassemble it; for a safetensors file the first blob is
    the header (8-byte length + JSON + padding) and each tensor's data follows in one or more chunk blobs."""

    path: str
    size: int
    digest: str  # BLAKE3 of the concatenated raw digests of `blobs`: the file's identity, computed for free
    blobs: tuple[BlobRef, ...]
    kind: str = "blob"  # "safetensors" or "blob"
    tensors: tuple[TensorEntry, ...] = ()
    converted_from: str | None = None  # e.g. "pytorch_model.bin" when import converted a pickle

    @property
    def is_safetensors(self) -> bool:
        return self.kind == "safetensors"

    @property
    def data_start(self) -> int:
        return self.blobs[0].size if self.is_safetensors else 0

    def tensor_blobs(self) -> dict[str, list[tuple[BlobRef, int]]]:
        """For each tensor, its blobs with their offsets in the data section (chunks never span two tensors)."""
        out: dict[str, list[tuple[BlobRef, int]]] = {}
        blobs = iter(self.blobs[1:])
        offset = 0
        for t in sorted(self.tensors, key=lambda t: (t.start, t.end)):
            parts = []
            while offset < t.end:
                blob = next(blobs)
                parts.append((blob, offset))
                offset += blob.size
            out[t.name] = parts
        return out

    def to_json(self) -> dict[str, Any]:
        raw: dict[str, Any] = {
            "path": self.path,
            "size": self.size,
            "digest": self.digest,
            "kind": self.kind,
            "blobs": [b.to_json() for b in self.blobs],
        }
        if self.tensors:
            raw["tensors"] = [t.to_json() for t in self.tensors]
        if self.converted_from:
            raw["converted_from"] = self.converted_from
        return raw

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> "FileEntry":
        return cls(
            path=raw["path"],
            size=int(raw["size"]),
            digest=raw["digest"],
            blobs=tuple(BlobRef.from_json(b) for b in raw["blobs"]),
            kind=raw.get("kind", "blob"),
            tensors=tuple(TensorEntry.from_json(t) for t in raw.get("tensors", ())),
            converted_from=raw.get("converted_from"),
        )


def file_digest(blobs: list[BlobRef] | tuple[BlobRef, ...]) -> str:
    return blake3.blake3(b"".join(bytes.fromhex(b.digest) for b in blobs)).hexdigest()


@dataclass(frozen=True)
class Manifest:
    name: str
    run: str
    created_at: float
    files: tuple[FileEntry, ...]
    step: int | None = None
    parent: str | None = None
    tags: tuple[str, ...] = ()
    metrics: dict[str, float] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
    message: str | None = None
    model: dict[str, Any] = field(default_factory=dict)
    environment: dict[str, Any] = field(default_factory=dict)
    format: int = MANIFEST_FORMAT

    @property
    def logical_bytes(self) -> int:
        return sum(f.size for f in self.files)

    def file(self, path: str) -> FileEntry | None:
        for f in self.files:
            if f.path == path:
                return f
        return None

    def blob_refs(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for f in self.files:
            for b in f.blobs:
                out[b.digest] = b.size
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "name": self.name,
            "run": self.run,
            "step": self.step,
            "created_at": self.created_at,
            "parent": self.parent,
            "tags": list(self.tags),
            "metrics": self.metrics,
            "metadata": self.metadata,
            "message": self.message,
            "model": self.model,
            "environment": self.environment,
            "files": [f.to_json() for f in self.files],
        }

    def to_bytes(self) -> bytes:
        # Stable bytes: the id is their hash, so the same document always gets the same id.
        return (json.dumps(self.to_json(), sort_keys=True, separators=(",", ":"), allow_nan=False) + "\n").encode()

    @classmethod
    def from_bytes(cls, data: bytes, *, expected_id: str | None = None) -> "Manifest":
        if expected_id is not None and manifest_id(data) != expected_id:
            raise CorruptObject(
                f"Manifest {expected_id[:12]} is corrupt: its content does not match its id.",
                digest=expected_id,
            )
        try:
            raw = json.loads(data)
        except ValueError as exc:
            raise CorruptObject(f"Manifest {str(expected_id)[:12]} is not valid JSON ({exc}).") from None
        if not isinstance(raw, dict):
            raise CorruptObject(f"Manifest {str(expected_id)[:12]} is JSON {type(raw).__name__}, not an object.")
        if raw.get("format") != MANIFEST_FORMAT:
            raise IncompatibleFormat(f"Manifest {str(expected_id)[:12]} has format {raw.get('format')!r}.")
        try:
            manifest = cls._from_raw(raw)
            problem = manifest._problem()
        except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
            problem = f"{type(exc).__name__}: {str(exc)[:100]}"
        if problem:
            # A manifest's id proves only that its bytes are unchanged, not that a trusted process wrote them.
            raise CorruptObject(f"Manifest {str(expected_id)[:12]} is malformed: {problem}.", digest=expected_id)
        return manifest

    def _problem(self) -> str | None:
        """What makes this manifest unsafe to act on (export writes its paths, reads its digests as file names)."""
        from .._core.names import check_name, file_path_problem, run_of
        from .._core.hashing import is_digest

        check_name(self.name)
        if self.run != run_of(self.name):
            return f"its run {self.run!r} is not the first part of its name {self.name!r}"
        seen: set[str] = set()
        for f in self.files:
            problem = file_path_problem(f.path)
            if problem:
                return f"file path {f.path!r} is unsafe: {problem}"
            if f.path in seen:
                return f"file {f.path!r} is listed twice"
            seen.add(f.path)
            if type(f.size) is not int or f.size < 0 or sum(b.size for b in f.blobs) != f.size:
                return f"file {f.path!r} has size {f.size!r}, not the sum of its blobs"
            bad = next((b.digest for b in f.blobs if not (isinstance(b.digest, str) and is_digest(b.digest))), None)
            if bad is not None or any(type(b.size) is not int or b.size < 0 for b in f.blobs):
                return f"file {f.path!r} lists a blob {str(bad)[:80]!r} that is not a digest and a size"
        for path in seen:
            parent = path.rpartition("/")[0]
            while parent:
                if parent in seen:
                    return f"{parent!r} is both a file and the folder of {path!r}"
                parent = parent.rpartition("/")[0]
        return None

    @classmethod
    def _from_raw(cls, raw: dict[str, Any]) -> "Manifest":
        return cls(
            name=raw["name"],
            run=raw["run"],
            created_at=float(raw["created_at"]),
            files=tuple(FileEntry.from_json(f) for f in raw["files"]),
            step=raw.get("step"),
            parent=raw.get("parent"),
            tags=tuple(raw.get("tags", ())),
            metrics=dict(raw.get("metrics") or {}),
            metadata=dict(raw.get("metadata") or {}),
            message=raw.get("message"),
            model=dict(raw.get("model") or {}),
            environment=dict(raw.get("environment") or {}),
            format=raw["format"],
        )


def manifest_id(data: bytes) -> str:
    return blake3.blake3(data).hexdigest()
