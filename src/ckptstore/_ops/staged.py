"""A staged save: several processes write the blobs of one checkpoint, then one process commits it.

Each process writes its files' blobs (`stage`: hashed, deduplicated, durable and visible, as a save writes them) and
hands the file entries it got to the committing process, which writes one manifest listing them all and claims the
name (`commit_staged`). Nothing is visible before the claim, so a process that dies or fails part way leaves only
unreferenced blobs for gc. gc removes blobs no claimed manifest references, so the committing process holds the
objects lock shared (`Repository.writing`) from before any process stages until its commit: see Store.staging.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from .._core.info import SaveReport
from .._core.names import check_name, step_from_name
from .._format.manifest import FileEntry
from .._repo.objects import BlobWriter
from ..errors import CorruptObject, InvalidArgument
from .ingest import ingest
from .save import (after_commit, check_metadata, check_metrics, check_name_free, check_step, check_user_tag, collect,
                   save_sources)
from .space import store_full_on_enospc

if TYPE_CHECKING:
    from .._repo.repository import Repository


def stage(repo: "Repository", files: Mapping[str, Any]) -> tuple[list[dict[str, Any]], int]:
    """Write the blobs of `files` (as `extra_files` takes them: bytes, a path, or a dict of tensors for a
    safetensors file) without committing anything. Returns their manifest entries as JSON and the bytes written."""
    if repo.read_only:
        from ..errors import StoreReadOnly

        raise StoreReadOnly(repo.url)
    with contextlib.ExitStack() as stack, store_full_on_enospc(repo.url, None):
        sources = collect(None, None, files, "50GB", stack)
        writer = BlobWriter(repo.blobs)
        try:
            entries = ingest(sources, writer, repo.config.chunk_bytes)
            writer.commit()
        except BaseException:
            writer.abort()
            raise
        return [e.to_json() for e in entries], writer.bytes_written


def _entries(staged: Iterable[Mapping[str, Any]]) -> list[FileEntry]:
    out: dict[str, FileEntry] = {}
    for raw in staged:
        try:
            entry = FileEntry.from_json(dict(raw))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise InvalidArgument(f"A staged file entry is malformed ({type(exc).__name__}: {exc}).",
                                  hint="Pass the entries Store.stage_files returned, unchanged.") from None
        if entry.path in out and out[entry.path] != entry:
            raise InvalidArgument(f"Two staged files have the path {entry.path!r}.",
                                  hint="Give each process's files paths of their own (e.g. rank-00001/...).")
        out[entry.path] = entry
    return list(out.values())


def commit_staged(
    repo: "Repository",
    name: str,
    staged: Iterable[Mapping[str, Any]],
    *,
    extra_files: Mapping[str, Any] | None = None,
    tags: Iterable[str] | str = (),
    metrics: Mapping[str, float] | None = None,
    metadata: Mapping[str, Any] | None = None,
    parent: str | None = None,
    message: str | None = None,
    step: int | None = None,
    staged_bytes: int = 0,
) -> SaveReport:
    """Commit the checkpoint `name` made of the staged file entries plus `extra_files` (written now). The staged
    blobs must be stored (checked); the save's report counts `staged_bytes` as written by it."""
    check_name(name)
    tags = (tags,) if isinstance(tags, str) else tuple(tags)
    for tag in tags:
        check_user_tag(tag, name)
    check_step(step)
    if step is None:
        step = step_from_name(name)
    clean_metrics, clean_metadata = check_metrics(metrics), check_metadata(metadata)
    parent_id = repo.resolve(parent) if parent else None
    entries = _entries(staged)
    check_name_free(repo, name)
    with contextlib.ExitStack() as stack:
        sources = collect(None, None, extra_files, "50GB", stack) if extra_files else []
        clash = {s.path for s in sources} & {e.path for e in entries}
        if clash:
            raise InvalidArgument(f"extra_files repeats {sorted(clash)[0]!r}, which a process staged.")
        if not sources and not entries:
            raise InvalidArgument("Nothing to save: no staged files and no extra files.")
        try:
            cid, written = save_sources(repo, sources, name, tags=tags, metrics=clean_metrics,
                                        metadata=clean_metadata, parent_id=parent_id, message=message, step=step,
                                        keep=entries)
        except CorruptObject as exc:
            if "to carry over is missing" in exc.message:
                raise CorruptObject(
                    f"A blob staged for {name!r} is missing from the store: {exc.message}",
                    digest=exc.digest,
                    hint="Hold Store.staging() in the committing process from before the first stage_files until"
                    " the commit, so that gc cannot remove staged blobs; then save again.",
                ) from None
            raise
    return after_commit(repo, cid, written + staged_bytes)


__all__ = ["commit_staged", "stage"]
