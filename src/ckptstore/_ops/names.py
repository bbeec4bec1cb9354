"""Tags and names: set, move and remove a run's tags; rename a checkpoint."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._core.names import check_name, check_tag, run_of, split_tag_ref
from ..errors import CheckpointNotFound, InvalidArgument, NameExists
from . import retention
from .save import check_name_free, check_user_tag

if TYPE_CHECKING:
    from .._repo.repository import Repository


def tag(repo: "Repository", ref: str, tag: str) -> str:
    """Point `RUN:tag` at the checkpoint (moving it if it pointed elsewhere); the run is the checkpoint's."""
    check_tag(tag)
    cid = repo.resolve(ref)
    run = repo.info(cid).run
    check_user_tag(tag, ref, run)
    with repo.commit_lock():
        repo.refs.set(run, tag, cid)
        repo.sync()
    return cid


def untag(repo: "Repository", ref: str, tag: str | None = None) -> str:
    """Remove a tag, given as ``RUN:TAG`` (or run and tag). Returns the id it pointed at."""
    if tag is None:
        parts = split_tag_ref(ref)
        if parts is None:
            raise InvalidArgument(f"{ref!r} is not RUN:TAG.", hint="Write the tag as RUN:TAG, e.g. bert:v1.")
        run, tag = parts
    else:
        run = ref
    check_user_tag(tag, f"{run}:{tag}", run, verb="removed")
    cid = repo.refs.get(run, tag)
    if cid is None:
        run_tags = sorted(f"{r}:{t}" for (r, t) in repo.catalog.tags() if r == run)
        raise CheckpointNotFound(f"{run}:{tag}", tuple(run_tags[:3]), run=run)
    with repo.commit_lock():
        repo.refs.remove(run, tag)
        repo.sync()
    return cid


def rename(repo: "Repository", ref: str, new_name: str) -> str:
    """Give the checkpoint `ref` names the name `new_name`. Its id, files, lineage and annotations stay (the
    manifest is not rewritten: the name claim is what names a checkpoint); its tags go with it when the run stays
    the same, and a move to another run leaves them behind (tags belong to a run). Returns the id."""
    check_name(new_name)
    cid = repo.resolve(ref)
    old = repo.info(cid)
    if old.name == new_name:
        return cid
    check_name_free(repo, new_name)
    same_run = run_of(new_name) == old.run
    with repo.writing(), repo.commit_lock():
        repo.sync()
        if repo.info(cid).name != old.name:
            raise CheckpointNotFound(ref)  # renamed or deleted meanwhile
        # The new claim first, then the old one goes: a crash between leaves two names for one checkpoint,
        # never none. The catalog follows the claims at its next sync.
        if not repo.claim(new_name, cid):
            raise NameExists(new_name)
        repo.release(old.name)
        if not same_run:
            for (run, t), target in repo.refs.all().items():
                if target == cid and run == old.run:
                    repo.refs.remove(run, t)
        repo.sync()
        retention.update_tags_locked(repo, {old.run, run_of(new_name)})
    return cid
