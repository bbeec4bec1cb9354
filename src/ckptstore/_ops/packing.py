"""Which checkpoints to pack, and when: `ckpt pack [RUN|REF...]`, and the run's storage policy after a save
(``pack_after=N``: every checkpoint no longer among the run's newest N, packed by a background process so the save
never waits for zstd). The packing itself is _ops/pack.py."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from collections.abc import Iterable
from typing import TYPE_CHECKING

from .._core.names import check_run
from .._repo.documents import settings_key, upsert
from ..errors import InvalidArgument
from ..policies import StoragePolicy
from . import retention as _retention
from .pack import DEFAULT_LEVEL, PackReport, pack

if TYPE_CHECKING:
    from .._core.info import CheckpointInfo
    from .._repo.repository import Repository


def get_storage(repo: "Repository", run: str) -> StoragePolicy | None:
    settings = _retention.read_settings(repo, run)
    return settings.storage if settings is not None else None


def set_storage(repo: "Repository", run: str, storage: StoragePolicy | None) -> None:
    if storage is not None and not isinstance(storage, StoragePolicy):
        raise InvalidArgument(f"A run's storage policy must be a StoragePolicy, got {type(storage).__name__}.",
                              hint="Use StoragePolicy(pack_after=1, keep_training_state=1).")
    check_run(run)  # a run may be set up before its first save, as with set_policy
    with repo.writing(), repo.commit_lock():
        old = _retention.read_settings(repo, run) or _retention.RunSettings()
        upsert(repo.docs, settings_key(run), dataclasses.replace(old, storage=storage).to_bytes())


def _newest_first(infos: list["CheckpointInfo"]) -> list["CheckpointInfo"]:
    return sorted(infos, key=lambda c: (c.step if c.step is not None else -1, c.created_at), reverse=True)


def _kept_raw(repo: "Repository", infos: list["CheckpointInfo"], keep_raw: bool | None) -> set[str]:
    """Checkpoints whose blobs stay raw: those with a tag (latest, best, user tags), unless the run says not."""
    out = set()
    for c in infos:
        if not c.tags:
            continue
        wanted = keep_raw
        if wanted is None:
            storage = get_storage(repo, c.run)
            wanted = storage.keep_raw if storage is not None else True
        if wanted:
            out.add(c.id)
    return out


def pack_refs(repo: "Repository", refs: str | Iterable[str] | None, *, dry_run: bool = False,
              level: int | None = None, keep_raw: bool | None = None) -> PackReport:
    """`refs`: runs (all their checkpoints) or references (packed even when tagged); None: every checkpoint."""
    repo.sync()
    infos = repo.catalog.infos()
    runs = set(repo.catalog.runs())
    refs = [refs] if isinstance(refs, str) else list(refs) if refs is not None else None
    explicit: set[str] = set()
    ids: list[str] = []
    if refs is None:
        ids = [c.id for c in infos]
    else:
        for ref in refs:
            if ref in runs:
                ids += [c.id for c in infos if c.run == ref]
            else:
                cid = repo.resolve(ref)
                ids.append(cid)
                explicit.add(cid)
    protected = _kept_raw(repo, infos, keep_raw) - explicit
    return pack(repo, ids, dry_run=dry_run, level=level or DEFAULT_LEVEL, keep_raw=protected)


def due(repo: "Repository", run: str) -> list[str]:
    """The checkpoints of `run` its storage policy wants packed now: those beyond the newest `pack_after`."""
    storage = get_storage(repo, run)
    if storage is None or storage.pack_after is None or not repo.blobs.encodings:
        return []
    infos = _newest_first(repo.catalog.infos(run=run))
    return [c.id for c in infos[storage.pack_after:]]


def pack_due(repo: "Repository", run: str) -> PackReport:
    """Pack what the run's policy says is due (what the background process runs)."""
    repo.sync()
    infos = repo.catalog.infos()
    return pack(repo, due(repo, run), keep_raw=_kept_raw(repo, infos, None))


def start_background_pack(repo: "Repository", run: str) -> subprocess.Popen | None:
    """After a save: when the run's policy has packing due, start `ckpt pack --due RUN` as a process of its own
    (its own interpreter, so zstd never competes with the training loop for the GIL; it takes the store's pack
    lock, so packs of successive saves run one after another). None when nothing is due."""
    if not due(repo, run):
        return None
    root = getattr(repo.backend, "root", None)
    if root is None:
        pack_due(repo, run)  # a backend another process cannot open from a path: packed here, after the save
        return None
    env = {**os.environ, "CKPT_FAILPOINT": os.environ.get("CKPT_PACK_FAILPOINT", "")}
    return subprocess.Popen(
        [sys.executable, "-m", "ckptstore", "pack", "--due", run, "--store", os.fspath(root), "--quiet"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
        start_new_session=True,
    )
