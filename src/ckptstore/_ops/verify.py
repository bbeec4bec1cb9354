"""Checking a store: structure by default (manifests parse and match their ids, every blob exists with its size),
content on request (every blob re-hashed). A scan reports every problem, not only the first."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .._backend.protocols import Blobs
from .._format.manifest import Manifest
from .._repo.objects import rehash
from ..errors import CkptError, CorruptObject

if TYPE_CHECKING:
    from .._repo.repository import Repository


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
    blobs: Blobs,
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
                    # A blob stored at its raw size is raw (an encoded one is always shorter): one stat says so, with
                    # no header read for its raw size and no chain to follow.
                    stored = getattr(blobs, "stored_size", blobs.size)(blob.digest)
                    raw = stored == blob.size
                    size = stored if raw or stored is None else blobs.size(blob.digest)
                    if size is None:
                        result = ("missing blob", "")
                    elif size != blob.size:
                        result = ("wrong size", f"{size} bytes, expected {blob.size}")
                    elif not raw and (broken := _broken_chain(blobs, blob)) is not None:
                        result = ("broken delta chain", broken)
                    elif deep:
                        bytes_checked += size
                        try:
                            if rehash(blobs, blob.digest, blob.size) != blob.digest:
                                result = ("corrupt blob", "content does not match its hash")
                        except CorruptObject as exc:  # a packed blob that does not decode, or whose base is damaged
                            result = ("corrupt blob", exc.message)
                    status[blob.digest] = result
                    if on_blob is not None:
                        on_blob(blob.size)
                result = status[blob.digest]
                if result is not None:
                    problems.append(Problem(result[0], manifest.name, cid, entry.path, blob.digest, result[1]))
    return VerifyReport(count, len(status), bytes_checked, deep, tuple(problems))


def _broken_chain(blobs: Blobs, blob) -> str | None:
    """Why a packed blob's delta chain does not resolve (a base missing, a loop), or None. Raw blobs (stored at
    their raw size) have no chain and cost nothing more here."""
    chain = getattr(blobs, "chain", None)
    stored_size = getattr(blobs, "stored_size", None)
    if chain is None or stored_size is None or stored_size(blob.digest) == blob.size:
        return None
    try:
        chain(blob.digest)
    except CorruptObject as exc:
        return exc.message
    return None


def verify(repo: "Repository", ref: str | None = None, *, deep: bool = True, on_blob=None) -> VerifyReport:
    """Check checkpoints (all, or the one `ref` names): every manifest matches its id and every blob exists with
    its size; with `deep` every blob is re-hashed. Reports every problem, not only the first."""
    names = repo.catalog.names_by_id()
    if ref is not None:
        ids = [repo.resolve(ref)]
    else:
        # Every manifest the store holds: a claimed one is a checkpoint; an unclaimed one that reads is a save that
        # died before its commit (gc's business), but one that does not read is damage either way.
        claimed = set(repo.claims().values())
        ids = sorted(repo.manifest_ids())

    def loader(cid: str) -> Callable[[], Manifest]:
        def load() -> Manifest:
            manifest = repo.read_manifest(cid)
            name = names.get(cid)
            return manifest if name is None or name == manifest.name else dataclasses.replace(manifest, name=name)
        return load

    if ref is None:
        readable_unclaimed = set()
        for cid in ids:
            if cid not in claimed:
                try:
                    repo.read_manifest(cid)
                    readable_unclaimed.add(cid)
                except CkptError:
                    pass
        ids = [cid for cid in ids if cid not in readable_unclaimed]
    report = verify_manifests(repo.blobs, ((cid, loader(cid)) for cid in ids), deep=deep, on_blob=on_blob)
    # A manifest that cannot be read has no name in it; the index remembers the name it had.
    problems = [
        dataclasses.replace(p, detail=f"checkpoint {names[p.checkpoint_id]!r}: {p.detail}")
        if p.kind == "corrupt manifest" and p.checkpoint_id in names else p
        for p in report.problems
    ]
    if ref is None:
        visible = set(names)
        problems += [
            Problem("missing manifest", name, cid, detail=f"checkpoints/{cid}.json is gone but no delete removed"
                    " it; restore it from a backup, or run 'ckpt fsck --reindex' to accept the loss")
            for cid, name in repo.catalog.lost().items()
        ]
        problems += [
            Problem("dangling tag", f"{r}:{t}", cid, detail=f"points at missing checkpoint {cid[:12]}")
            for (r, t), cid in sorted(repo.refs.all().items())
            if cid not in visible
        ]
    return VerifyReport(report.checkpoints, report.blobs, report.bytes_checked, report.deep, tuple(problems))
