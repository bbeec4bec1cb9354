"""Checking a store: structure by default (manifests parse and match their ids, every blob exists with its size),
content on request (every blob re-hashed). A scan reports every problem, not only the first."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from ._manifest import Manifest
from ._objects import ObjectStore
from .errors import CkptError


@dataclass(frozen=True)
class Problem:
    kind: str  # "corrupt manifest", "missing blob", "corrupt blob", "wrong size", "dangling tag"
    checkpoint: str  # name (or id when the manifest cannot be read)
    checkpoint_id: str
    file: str | None = None
    digest: str | None = None
    detail: str = ""

    def __str__(self) -> str:
        where = f"{self.checkpoint}" + (f": {self.file}" if self.file else "")
        blob = f" (blob {self.digest[:12]})" if self.digest else ""
        return f"{where}: {self.kind}{blob}" + (f": {self.detail}" if self.detail else "")

    def to_json(self) -> dict:
        return {
            "kind": self.kind,
            "checkpoint": self.checkpoint,
            "checkpoint_id": self.checkpoint_id,
            "file": self.file,
            "digest": self.digest,
            "detail": self.detail,
        }


@dataclass(frozen=True)
class VerifyReport:
    checkpoints: int
    blobs: int
    bytes_checked: int
    deep: bool
    problems: tuple[Problem, ...] = field(default_factory=tuple)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def damaged(self) -> tuple[str, ...]:
        """Names of the damaged checkpoints, each once, in the order found."""
        return tuple(dict.fromkeys(p.checkpoint for p in self.problems))

    def to_json(self) -> dict:
        return {
            "ok": self.ok,
            "deep": self.deep,
            "checkpoints": self.checkpoints,
            "blobs": self.blobs,
            "bytes_checked": self.bytes_checked,
            "damaged": list(self.damaged),
            "problems": [p.to_json() for p in self.problems],
        }


def verify_manifests(
    objects: ObjectStore,
    manifests: Iterable[tuple[str, Callable[[], Manifest]]],
    *,
    deep: bool,
    on_blob: Callable[[int], None] | None = None,
) -> VerifyReport:
    """`manifests` yields (id, loader); a loader that raises means the manifest itself is damaged."""
    status: dict[str, tuple[str, str] | None] = {}  # digest -> None if good, else (kind, detail)
    problems: list[Problem] = []
    count = 0
    bytes_checked = 0
    for cid, loader in manifests:
        count += 1
        try:
            manifest = loader()
        except CkptError as exc:
            problems.append(Problem("corrupt manifest", cid[:12], cid, detail=exc.message))
            continue
        for entry in manifest.files:
            if sum(b.size for b in entry.blobs) != entry.size:
                problems.append(Problem("wrong size", manifest.name, cid, entry.path, None, "blob sizes do not add up"))
            for blob in entry.blobs:
                if blob.digest not in status:
                    result: tuple[str, str] | None = None
                    try:
                        size = objects.size(blob.digest)
                    except FileNotFoundError:
                        result = ("missing blob", "")
                    else:
                        if size != blob.size:
                            result = ("wrong size", f"{size} bytes, expected {blob.size}")
                        elif deep:
                            bytes_checked += size
                            if objects.rehash(blob.digest) != blob.digest:
                                result = ("corrupt blob", "content does not match its hash")
                    status[blob.digest] = result
                    if on_blob is not None:
                        on_blob(blob.size)
                result = status[blob.digest]
                if result is not None:
                    problems.append(Problem(result[0], manifest.name, cid, entry.path, blob.digest, result[1]))
    return VerifyReport(count, len(status), bytes_checked, deep, tuple(problems))
