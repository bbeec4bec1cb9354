"""Garbage collection as a plan: which blobs no manifest references, how many bytes they free."""

from __future__ import annotations

import os
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
    saves_in_progress: bool = False  # a dry run that found saves running: their uncommitted blobs are counted

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
            "saves_in_progress": self.saves_in_progress,
        }


def _writer_alive(name: str) -> bool:
    """Temporary names start with the writer's pid (see make_tmp_path). A reused pid only makes gc keep a file."""
    pid = name.split("-", 1)[0]
    if not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stale_tmp_files(tmp_dir: Path, *, grace: float) -> list[Path]:
    """What gc may delete in tmp/. Blob files (`*.blob`) are written only under the objects lock, which gc holds
    exclusively, so all of them are leftovers of interrupted saves. Anything else (a tag or policy being written,
    a folder materialized for a load) may belong to a command running now: it goes when the process that wrote
    it is gone, or after `grace` seconds."""
    if not tmp_dir.is_dir():
        return []
    now = time.time()
    out = []
    for p in tmp_dir.iterdir():
        try:
            if p.name.endswith(".blob") and p.is_file():
                out.append(p)
            elif not _writer_alive(p.name) or now - p.lstat().st_mtime >= grace:
                out.append(p)
        except FileNotFoundError:
            pass
    return sorted(out)
