"""Inter-process locks on a store, with flock(2): released by the kernel when a process dies.

- ``commit`` (exclusive, held for milliseconds): makes name checks, manifest writes, ref and index updates atomic
  with respect to each other.
- ``objects`` (shared by every save for its whole length, exclusive for gc's deletion phase): gc never deletes a
  blob that a save in flight has written or decided to reuse. A save paused before its commit (SIGSTOP) keeps
  its shared lock, so gc waits for it and then fails with StoreLocked rather than collecting its blobs.
- ``gate``: taken exclusively by gc before it asks for ``objects``, and briefly (shared) by a save before it
  does, so that a stream of saves cannot starve gc (flock grants new shared locks while an exclusive waits).

The lock files live in ``STORE/locks/``; a process that cannot create or open them for writing gets StoreReadOnly.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import time
from collections.abc import Iterator
from pathlib import Path

from .errors import StoreLocked, StoreReadOnly


@contextlib.contextmanager
def file_lock(path: Path, *, shared: bool = False, timeout: float = 60.0, what: str = "") -> Iterator[None]:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        # Every write to a store takes one of its locks first, so a store this process cannot write is refused
        # here, before anything is written, with one clear error.
        if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
            raise StoreReadOnly(str(path.parent.parent), exc.errno) from None
        raise
    try:
        mode = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
        deadline = time.monotonic() + timeout
        delay = 0.002
        while True:
            try:
                fcntl.flock(fd, mode | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise StoreLocked(
                        f"Timed out after {timeout:.0f}s waiting for the {what or path.name} lock of the store"
                        f" ({path})."
                    ) from None
                time.sleep(delay)
                delay = min(delay * 2, 0.1)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock
