"""Frozen records the public API returns: what a checkpoint is, how much disk a store uses."""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass, field, fields
from typing import Any


def human_bytes(n: int | float) -> str:
    """1536 -> '1.5 KiB'. Binary units, as du and the Hub cache scanner print them."""
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


@dataclass(frozen=True, eq=False)
class CheckpointInfo:
    """One stored checkpoint, as `Store.list` and `Store.show` return it.

    `tags` are the tags that point at it now (they can move); `logical_bytes` is the size of its files as exported.
    Records of one checkpoint compare equal whatever their kind (a SaveReport is one too).
    """

    id: str
    name: str
    run: str
    step: int | None
    created_at: float
    tags: tuple[str, ...] = ()
    metrics: dict[str, float] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
    parent: str | None = None
    message: str | None = None
    logical_bytes: int = 0
    file_count: int = 0

    def _key(self) -> tuple:
        return tuple(getattr(self, f.name) for f in fields(CheckpointInfo))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CheckpointInfo) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self.id)

    @property
    def short_id(self) -> str:
        return self.id[:12]

    @property
    def logical_bytes_str(self) -> str:
        return human_bytes(self.logical_bytes)

    @property
    def created_at_str(self) -> str:
        return _dt.datetime.fromtimestamp(self.created_at).strftime("%Y-%m-%d %H:%M")

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "run": self.run,
            "step": self.step,
            "created_at": self.created_at,
            "tags": list(self.tags),
            "metrics": dict(self.metrics),
            "metadata": dict(self.metadata),
            "parent": self.parent,
            "message": self.message,
            "logical_bytes": self.logical_bytes,
            "file_count": self.file_count,
        }


@dataclass(frozen=True, eq=False)
class SaveReport(CheckpointInfo):
    """What `Store.save` returns: the stored checkpoint's record, and what the save did besides storing it."""

    new_bytes: int = 0  # bytes of the blobs this save wrote; what was already stored costs nothing
    pruned: tuple[str, ...] = ()  # names the run's retention policy removed right after the save

    @classmethod
    def of(cls, info: CheckpointInfo, new_bytes: int, pruned: tuple[str, ...] = ()) -> "SaveReport":
        return cls(**{f.name: getattr(info, f.name) for f in fields(CheckpointInfo)}, new_bytes=new_bytes,
                   pruned=pruned)

    @property
    def checkpoint(self) -> CheckpointInfo:
        """The record alone (what `Store.last_save.checkpoint` gave before save returned the report)."""
        return CheckpointInfo(**{f.name: getattr(self, f.name) for f in fields(CheckpointInfo)})

    @property
    def new_bytes_str(self) -> str:
        return human_bytes(self.new_bytes)

    def to_json(self) -> dict[str, Any]:
        return {**super().to_json(), "new_bytes": self.new_bytes, "pruned": list(self.pruned)}


@dataclass(frozen=True)
class RunUsage:
    run: str
    checkpoints: int
    logical_bytes: int
    unique_bytes: int  # bytes of blobs referenced by this run and by no other run

    @property
    def logical_bytes_str(self) -> str:
        return human_bytes(self.logical_bytes)


@dataclass(frozen=True)
class DiskUsage:
    """`Store.du()`: what the checkpoints would take as plain folders vs what the store holds."""

    logical_bytes: int
    stored_bytes: int
    checkpoints: int
    blobs: int
    runs: tuple[RunUsage, ...] = ()

    @property
    def saved_bytes(self) -> int:
        return self.logical_bytes - self.stored_bytes

    @property
    def ratio(self) -> float:
        """Logical over stored: 3.0 means the store holds the checkpoints in a third of the space."""
        return self.logical_bytes / self.stored_bytes if self.stored_bytes else 1.0

    @property
    def logical_bytes_str(self) -> str:
        return human_bytes(self.logical_bytes)

    @property
    def stored_bytes_str(self) -> str:
        return human_bytes(self.stored_bytes)

    def to_json(self) -> dict[str, Any]:
        return {
            "logical_bytes": self.logical_bytes,
            "stored_bytes": self.stored_bytes,
            "saved_bytes": self.saved_bytes,
            "ratio": round(self.ratio, 3),
            "checkpoints": self.checkpoints,
            "blobs": self.blobs,
            "runs": [
                {
                    "run": r.run,
                    "checkpoints": r.checkpoints,
                    "logical_bytes": r.logical_bytes,
                    "unique_bytes": r.unique_bytes,
                }
                for r in self.runs
            ],
        }


@dataclass(frozen=True)
class ResumePoint:
    """`Store.resume_point`: the newest checkpoint of a run that a training can resume from and that verified,
    where it was checked out (if it was), and the newer ones passed over because they are damaged, with why."""

    info: CheckpointInfo
    path: Any = None  # the folder it was checked out to, or None
    skipped: tuple[tuple[str, str], ...] = ()  # (name, what is wrong), newest first

    @property
    def fell_back(self) -> bool:
        return bool(self.skipped)

    def describe(self) -> str:
        """One line for a log: which checkpoint, and which damaged ones it replaces."""
        if not self.skipped:
            return f"Resuming from {self.info.name!r}."
        passed = "; ".join(f"{name!r} is damaged ({why})" for name, why in self.skipped)
        return f"{passed}: resuming from {self.info.name!r}, the newest checkpoint that verifies."
