"""Tags: small files ``refs/tags/<run>/<tag>`` holding a checkpoint id, replaced atomically when a tag moves."""

from __future__ import annotations

import os
from pathlib import Path

from ._backend import atomic_write_bytes, fsync_dir
from ._failpoints import failpoint
from ._names import check_run, check_tag
from ._objects import is_digest, refuse_link
from .errors import InvalidName


def _names_problem(run: str, tag: str) -> bool:
    """True for a file the store cannot have written (a stray file whose name is not a run and a tag)."""
    try:
        check_run(run)
        check_tag(tag)
    except InvalidName:
        return True
    return False


class Refs:
    def __init__(self, root: Path) -> None:
        self.dir = root / "refs" / "tags"
        self.tmp = root / "tmp"

    def _path(self, run: str, tag: str) -> Path:
        # The names become path segments: '../x:t' must not reach a file outside the store.
        return self.dir / check_run(run) / check_tag(tag)

    def get(self, run: str, tag: str) -> str | None:
        try:
            text = self._path(run, tag).read_text().strip()
        except (FileNotFoundError, NotADirectoryError):
            return None
        return text if is_digest(text) else None

    def set(self, run: str, tag: str, checkpoint_id: str) -> None:
        failpoint("ref.write")
        path = self._path(run, tag)
        refuse_link(path.parent)
        atomic_write_bytes(path, (checkpoint_id + "\n").encode(), self.tmp, failpoint_name="ref")

    def remove(self, run: str, tag: str) -> bool:
        path = self._path(run, tag)
        failpoint("ref.remove")
        try:
            path.unlink()
        except FileNotFoundError:
            return False
        fsync_dir(path.parent)
        try:
            path.parent.rmdir()  # an empty run folder goes too
        except OSError:
            pass
        return True

    def all(self) -> dict[tuple[str, str], str]:
        out: dict[tuple[str, str], str] = {}
        if not self.dir.is_dir():
            return out
        for run_entry in os.scandir(self.dir):
            if not run_entry.is_dir(follow_symlinks=False):
                continue
            for tag_entry in os.scandir(run_entry.path):
                if tag_entry.is_file() and not _names_problem(run_entry.name, tag_entry.name):
                    cid = self.get(run_entry.name, tag_entry.name)
                    if cid:
                        out[(run_entry.name, tag_entry.name)] = cid
        return out
