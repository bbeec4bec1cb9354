"""Durable writes on a local filesystem: temporary file, fsync, rename, fsync of the directory."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import secrets
import sys
from pathlib import Path

from .._failpoints import failpoint

_libc = None


def _syncfs_fn():
    global _libc
    if sys.platform != "linux":
        return None
    if _libc is None:
        try:
            _libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        except OSError:
            _libc = False
    return getattr(_libc, "syncfs", None) if _libc else None


def make_tmp_path(tmp_dir: Path, suffix: str = "") -> Path:
    return tmp_dir / f"{os.getpid()}-{secrets.token_hex(8)}{suffix}"


def fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    # A rename is durable only once the directory holding the new entry is synced.
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sync_filesystem(path: Path, files: list[Path]) -> None:
    """Make `files` durable. On Linux one syncfs() flushes them all in one journal commit, which is several
    times faster than an fsync per blob when a save writes hundreds of blobs; elsewhere, fsync each."""
    fn = _syncfs_fn()
    if fn is not None and files:
        fd = os.open(path, os.O_RDONLY)
        try:
            if fn(fd) == 0:
                return
        finally:
            os.close(fd)
    for f in files:
        fsync_path(f)


def atomic_write_bytes(path: Path, data: bytes, tmp_dir: Path, *, failpoint_name: str = "write") -> None:
    """Write `data` to `path` so that a reader sees either the old file or the whole new one, even after a crash."""
    tmp = make_tmp_path(tmp_dir)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        view = memoryview(data)
        while view:
            failpoint(f"{failpoint_name}.write")
            n = os.write(fd, view)
            view = view[n:]
        failpoint(f"{failpoint_name}.fsync")
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    try:
        failpoint(f"{failpoint_name}.rename")
        path.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def copy_into(dst_fd: int, src_path: Path, length: int) -> None:
    """Append `length` bytes of `src_path` to `dst_fd` without a round trip through Python (copy_file_range)."""
    with open(src_path, "rb") as src:
        src_fd = src.fileno()
        remaining = length
        offset = 0
        use_cfr = hasattr(os, "copy_file_range")
        while remaining > 0:
            n = 0
            if use_cfr:
                try:
                    n = os.copy_file_range(src_fd, dst_fd, remaining, offset)
                except OSError:
                    use_cfr = False
                    continue
            else:
                buf = os.pread(src_fd, min(remaining, 8 << 20), offset)
                n = os.write(dst_fd, buf)
            if n == 0:
                raise OSError(f"{src_path} is shorter than expected ({offset} of {length} bytes)")
            offset += n
            remaining -= n
