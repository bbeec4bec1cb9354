"""The deletion log, ``checkpoints/deleted.log``: one line ``<id> <name>`` per checkpoint the store deleted.

Why it exists: a manifest that vanishes without a delete (a stray ``rm``, a failing disk, a restore that missed a
file) is a lost checkpoint, and ``verify`` must say so; a manifest the store deleted is not. The index remembers
every checkpoint it has seen, but it is a cache that can be stale (restored from an older copy, an old WAL
replayed), so "in the index, not on disk" alone cannot tell the two apart. This log can: it is appended, and
fsynced, under the commit lock before a delete removes anything, so a checkpoint the store deleted is always in it.

It only grows, by about 70 bytes per deleted checkpoint, and is read only when the index knows a checkpoint whose
manifest is gone, which after the store's own deletes never happens (they drop the index row first).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from ._failpoints import failpoint

LOG_NAME = "deleted.log"


def record(checkpoints_dir: Path, entries: Iterable[tuple[str, str]]) -> None:
    """Append (id, name) pairs and make them durable before the caller deletes anything."""
    text = "".join(f"{cid} {name}\n" for cid, name in entries)
    if not text:
        return
    failpoint("delete.log")
    fd = os.open(checkpoints_dir / LOG_NAME, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        # One write: O_APPEND makes it atomic with respect to other appenders, and a torn tail after a crash is
        # a partial line that `recorded` skips.
        os.write(fd, text.encode())
        os.fsync(fd)
    finally:
        os.close(fd)


def recorded(checkpoints_dir: Path) -> set[str]:
    """Ids of every checkpoint the store has deleted."""
    try:
        data = (checkpoints_dir / LOG_NAME).read_bytes()
    except FileNotFoundError:
        return set()
    return {line.split(b" ", 1)[0].decode("ascii", "replace") for line in data.splitlines() if len(line) > 65}
