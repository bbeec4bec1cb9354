"""Where bytes live. Only the local filesystem today; the functions are the seam a remote backend would fill."""

from .local import (
    atomic_write_bytes,
    copy_into,
    fsync_dir,
    fsync_path,
    make_tmp_path,
    map_concat,
    start_writeback,
    sync_filesystem,
    write_at,
)

__all__ = [
    "atomic_write_bytes",
    "copy_into",
    "fsync_dir",
    "fsync_path",
    "make_tmp_path",
    "map_concat",
    "start_writeback",
    "sync_filesystem",
    "write_at",
]
