"""Where a killed child was: whether its operation had started or ended, and the last failpoint it passed.

A kill at a random moment of a child's life is not a kill during a save: the child may still be importing or
opening the store, or already writing its result. So a crash-test child maps a small file (MAP_SHARED) and writes
into it, as it runs, when its operation starts and ends and the name of each failpoint it reaches (through
ckptstore._core.failpoints' own count of the failpoints seen, so only while a spec such as ``*:trace`` is set). The page
is shared with the kernel's page cache, so it outlives SIGKILL: the parent reads where the child died after
waitpid. Writing it costs a memory store per failpoint, no system call.

Monotonic clock times are system-wide on Linux, so the parent can aim a kill at "start + d" from the child's start.

No import from the package here: the fork servers import this file as a top-level module.
"""

from __future__ import annotations

import mmap
import os
import struct
import time

SIZE = 128
_HEAD = struct.Struct("<B7xddI4x")  # state, start, end (time.monotonic()), failpoint hits; then the last name
_NAME = slice(_HEAD.size, SIZE)

BEFORE, RUNNING, AFTER = 0, 1, 2

# The phases a kill is counted in: blob steps one by one, the other failpoints by family (see _core/failpoints.py).
_OWN = ("blob.write", "blob.sync", "blob.rename")
NO_FAILPOINT_YET = "started, no failpoint yet"
OUTSIDE = ("before start", "after end")


class PhaseFile:
    def __init__(self, path: str, *, create: bool = False) -> None:
        self.path = path
        fd = os.open(path, os.O_RDWR | (os.O_CREAT | os.O_TRUNC if create else 0), 0o644)
        try:
            if create:
                os.ftruncate(fd, SIZE)
            self.mm = mmap.mmap(fd, SIZE)
        finally:
            os.close(fd)
        self._hits = 0

    # -- the child's side ----------------------------------------------------------------------------------------

    def install(self) -> None:
        """Record each failpoint this process reaches (call after fork, in the child)."""
        from ckptstore._core import failpoints as _failpoints

        trace = self

        class Seen(dict):
            def __setitem__(self, name: str, count: int) -> None:
                super().__setitem__(name, count)
                trace._passed(name)

        _failpoints._seen = Seen(_failpoints._seen)

    def _passed(self, name: str) -> None:
        self._hits += 1
        self.mm[_NAME] = name.encode()[: SIZE - _HEAD.size].ljust(SIZE - _HEAD.size, b"\0")
        struct.pack_into("<I", self.mm, 24, self._hits)

    def started(self) -> None:
        struct.pack_into("<d", self.mm, 8, time.monotonic())
        self.mm[0] = RUNNING

    def ended(self) -> None:
        struct.pack_into("<d", self.mm, 16, time.monotonic())
        self.mm[0] = AFTER

    # -- the parent's side ---------------------------------------------------------------------------------------

    def state(self) -> int:
        return self.mm[0]

    def read(self) -> dict:
        state, start, end, hits = _HEAD.unpack_from(self.mm, 0)
        last = bytes(self.mm[_NAME]).rstrip(b"\0").decode(errors="replace") or None
        return {"state": state, "start": start, "end": end, "hits": hits, "last": last}

    def close(self) -> None:
        self.mm.close()


def phase(info: dict | None) -> str:
    """The phase a kill landed in, from PhaseFile.read() after the kill: one of OUTSIDE, or a failpoint family."""
    if not info or info["state"] == BEFORE:
        return OUTSIDE[0]
    if info["state"] == AFTER:
        return OUTSIDE[1]
    last = info["last"]
    if last is None:
        return NO_FAILPOINT_YET
    return last if last in _OWN else last.split(".", 1)[0] + ".*"


def describe(counts: dict[str, int]) -> str:
    """'blob.write 12, blob.sync 3, ...' in the order a save reaches them, outside kills last."""
    order = [NO_FAILPOINT_YET, *_OWN, "manifest.*", "name.*", "ref.*", "index.*", "delete.*", "gc.*"]
    keys = sorted((k for k in counts if k not in OUTSIDE), key=lambda k: (order.index(k) if k in order else 99, k))
    return ", ".join(f"{k} {counts[k]}" for k in keys) or "none"
