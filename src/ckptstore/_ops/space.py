"""Room on the store's disk: refuse a save that cannot fit before anything is written, and report a disk that fills
up during a save as :class:`StoreFull` (an OSError with errno ENOSPC, with a hint) rather than a bare errno or a
SQLite "database or disk is full".

The rule, checked before a save hashes anything: the files to store add up to N bytes (an upper bound of what the
save writes; a live model's files are sized before they are written). Deduplication can only spare bytes the store
already holds, S (the blobs of its checkpoints, then every blob on disk when that bound is not enough). So the
save is refused when N - S exceeds the free space F: it cannot fit whatever it shares with stored checkpoints.
Nothing is refused for which dedup could make room, at the price of a late failure when it cannot; that failure
(ENOSPC, or SQLite full, at any step of the save) is the same StoreFull, and the save leaves nothing behind. The
one thing the bound does not count is repetition inside the save itself (identical tensors within one
checkpoint), which in real checkpoints is a few small tensors (LayerNorm weights at initialisation).
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from typing import TYPE_CHECKING

from .._core.info import human_bytes
from .._repo.catalog import disk_full
from ..errors import StoreFull

if TYPE_CHECKING:
    from .._repo.repository import Repository


def check_room(repo: "Repository", upper_bytes: int, run: str) -> None:
    """Raise StoreFull when a save of files totalling `upper_bytes` cannot fit (the rule in the module docstring).
    Cheap unless the disk is nearly full: one statvfs; the index's byte count, then a walk of the objects, only
    when the free space alone does not settle it. A backend without such a limit (object storage) is not checked."""
    free = repo.backend.free_bytes()
    if free is None or upper_bytes <= free:
        return
    stored = repo.catalog.stored_bytes()[0]
    if upper_bytes - stored > free:
        stored = max(stored, sum(size for _, size, _ in repo.blobs.iter()))
    if upper_bytes - stored > free:
        raise StoreFull(
            repo.url,
            f"this save: {human_bytes(upper_bytes)} of files, of which at most {human_bytes(stored)} can be"
            f" already stored, and {human_bytes(free)} free",
            run=run,
        )


@contextlib.contextmanager
def store_full_on_enospc(where: str, run: str) -> Iterator[None]:
    """Turn a full disk met by the writes inside the block into StoreFull (errno ENOSPC kept)."""
    try:
        yield
    except StoreFull:
        raise
    except (OSError, sqlite3.OperationalError) as exc:
        if not disk_full(exc):
            raise
        raise StoreFull(where, "this save", run=run) from exc
