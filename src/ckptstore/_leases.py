"""Leases: a checkpoint that a process is reading (a resume, a checkout) is in use, and no policy removes it.

A lease is a file ``locks/inuse/<id>.<pid>.<token>`` that its holder keeps locked (flock, shared). The kernel drops
the lock when the holder exits or crashes, so a lease can never outlive its process: prune treats an unlocked
lease file as stale and removes it. Leases are taken and checked under the store's commit lock, so a prune either
sees the lease or has already removed the checkpoint (and the reader then gets a clean "not found").
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .store import Store


def sync_locked(store: "Store") -> None:
    """Bring this Store's index in line with the disk (other processes save and prune meanwhile). The caller
    holds the commit lock: a sync must not interleave with another process's delete."""
    store.catalog  # opened (and synced) on first use
    store._sync_index()


def refresh(store: "Store") -> None:
    """:func:`sync_locked`, taking the commit lock for it."""
    with store._commit_lock():
        sync_locked(store)


def _dir(store: "Store") -> Path:
    return store.root / "locks" / "inuse"


@contextlib.contextmanager
def hold(store: "Store", ref: str) -> Iterator[str]:
    """Resolve `ref` and keep its checkpoint from being pruned until the block ends. Yields the checkpoint id."""
    if store.read_only:
        # No lease can be written, and no prune can run through this process: resolve and read as is.
        yield store.resolve(ref)
        return
    folder = _dir(store)
    folder.mkdir(parents=True, exist_ok=True)
    with store._commit_lock():
        sync_locked(store)  # another process may have removed it since this Store last looked
        cid = store.resolve(ref)
        path = folder / f"{cid}.{os.getpid()}.{secrets.token_hex(4)}"
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(fd, fcntl.LOCK_SH)
    try:
        yield cid
    finally:
        os.close(fd)
        path.unlink(missing_ok=True)


def in_use(store: "Store") -> frozenset[str]:
    """Ids with a live lease. Call with the commit lock held; stale lease files are removed on the way."""
    folder = _dir(store)
    if not folder.is_dir():
        return frozenset()
    live = set()
    for entry in os.scandir(folder):
        cid = entry.name.split(".", 1)[0]
        try:
            fd = os.open(entry.path, os.O_RDWR)
        except FileNotFoundError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            live.add(cid)
        else:
            Path(entry.path).unlink(missing_ok=True)  # its holder is gone
        finally:
            os.close(fd)
    return frozenset(live)
