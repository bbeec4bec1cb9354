"""Durable writes on a local filesystem: temporary file, fsync, rename, fsync of the directory."""

from __future__ import annotations

import ctypes
import ctypes.util
import mmap
import os
import secrets
import sys
import threading
from pathlib import Path


_libc = None


def _libc_fn(name: str, *, linux_only: bool = True):
    global _libc
    if sys.platform == "win32" or (linux_only and sys.platform != "linux"):
        return None
    if _libc is None:
        try:
            _libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        except OSError:
            _libc = False
    return getattr(_libc, name, None) if _libc else None


def _syncfs_fn():
    return _libc_fn("syncfs")


def _sync_file_range_fn():
    fn = _libc_fn("sync_file_range")
    if fn is not None and fn.argtypes is None:
        fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    return fn


def _mmap_fn():
    fn = _libc_fn("mmap", linux_only=False)
    if fn is not None and fn.argtypes is None:
        fn.restype = ctypes.c_void_p
        fn.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int64]
    return fn


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


def start_writeback(fd: int) -> None:
    """Start writing the file's dirty pages to disk now, without waiting (Linux `sync_file_range`).

    This promises nothing about durability (no wait, no metadata); `sync_filesystem` still does that. It lets the
    disk work while the save goes on hashing and writing the next blobs, instead of all at once in the final sync:
    measured on BERT-base, the final sync then has a fraction of the bytes left to wait for. A no-op elsewhere.
    """
    fn = _sync_file_range_fn()
    if fn is not None:
        fn(fd, 0, 0, 2)  # SYNC_FILE_RANGE_WRITE; a failure only means the final sync does all the work


def map_concat(files: list[tuple[int, int]]) -> mmap.mmap | None:
    """One private (copy-on-write) mapping of several open files laid end to end, without copying a byte.

    `files` gives (descriptor, size) in order; the caller has checked each size (mapping past the end of a file
    would crash the process on access) and closes the descriptors afterwards: the mapping needs none of them. The
    files are mapped at consecutive addresses of a reserved region that the returned mmap owns: closing or
    collecting it unmaps them all. Writes go to private pages and never reach the files. None when the platform
    or the layout does not allow it (every file but the last must fill whole pages); the caller then reads.
    """
    fn = _mmap_fn()
    whole_pages = all(size > 0 and size % mmap.PAGESIZE == 0 for _, size in files[:-1])
    if fn is None or not files or not whole_pages or files[-1][1] <= 0:
        return None
    region = mmap.mmap(-1, sum(size for _, size in files), flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    try:
        anchor = ctypes.c_char.from_buffer(region)
        base = ctypes.addressof(anchor)
        del anchor  # a live export would keep the region from being closed
        offset = 0
        for fd, size in files:
            got = fn(base + offset, size, mmap.PROT_READ | mmap.PROT_WRITE, mmap.MAP_PRIVATE | _MAP_FIXED, fd, 0)
            if got != base + offset:
                err = ctypes.get_errno()
                raise OSError(err, f"cannot map a blob: {os.strerror(err)}")
            offset += size
    except BaseException:
        region.close()
        raise
    return region


_MAP_FIXED = 0x10  # the same value on Linux and macOS; Python's mmap module does not export it


_COPY_BLOCK = 1 << 20
_copy_buffers = threading.local()


def write_at(dst_fd: int, data, offset: int) -> None:
    """Write all of `data` at `offset` of `dst_fd` (pwrite: several threads can fill one file side by side)."""
    view = memoryview(data)
    while view:  # one write moves at most 2 GiB - 4 KiB on Linux
        n = os.pwrite(dst_fd, view, offset)
        view, offset = view[n:], offset + n


def copy_into(dst_fd: int, src_path: Path, length: int, offset: int) -> None:
    """Copy the first `length` bytes of `src_path` to `offset` of `dst_fd`.

    Through a reused 1 MiB buffer, not copy_file_range: in a safetensors file the tensors sit at offsets that are
    not page-aligned (the header has any length), and the kernel's in-file copy then writes every page as two
    partial pages. On BERT-base that made an export 1.45x slower than `cp -r`; read/write pairs through a buffer
    that stays in the CPU cache match `cp -r`, and two threads filling one file side by side beat it.
    """
    buf = getattr(_copy_buffers, "buf", None)
    if buf is None:
        buf = _copy_buffers.buf = memoryview(bytearray(_COPY_BLOCK))
    with open(src_path, "rb", buffering=0) as src:
        done = 0
        while done < length:
            n = src.readinto(buf[: min(length - done, _COPY_BLOCK)])
            if not n:
                raise OSError(f"{src_path} is shorter than expected ({done} of {length} bytes)")
            write_at(dst_fd, buf[:n], offset + done)
            done += n
