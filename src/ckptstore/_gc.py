"""Garbage collection as a plan: which blobs no manifest references, how many bytes they free."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from ._info import human_bytes


@dataclass(frozen=True)
class GcPlan:
    """What `gc` removes. Nothing happens until the store executes it (`Store.gc(dry_run=False)`)."""

    blobs: tuple[tuple[str, int], ...]  # (digest, size) of unreferenced blobs
    tmp_files: tuple[Path, ...]  # leftovers of interrupted writes
    referenced_blobs: int
    executed: bool = False

    @property
    def bytes_freed(self) -> int:
        return sum(size for _, size in self.blobs)

    @property
    def bytes_freed_str(self) -> str:
        return human_bytes(self.bytes_freed)

    def to_json(self) -> dict:
        return {
            "executed": self.executed,
            "blobs_removed": len(self.blobs),
            "bytes_freed": self.bytes_freed,
            "tmp_files_removed": len(self.tmp_files),
            "referenced_blobs": self.referenced_blobs,
        }


def stale_tmp_files(tmp_dir: Path, *, older_than: float) -> list[Path]:
    if not tmp_dir.is_dir():
        return []
    now = time.time()
    out = []
    for p in tmp_dir.iterdir():
        try:
            if p.is_file() and now - p.stat().st_mtime >= older_than:
                out.append(p)
        except FileNotFoundError:
            pass
    return sorted(out)
