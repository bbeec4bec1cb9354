"""Leases: a checkpoint that a process is reading (a resume, a checkout) is in use, and no policy removes it.

A lease is the backend's (locally a file its holder keeps flocked, so it never outlives the process). Leases are
taken and checked under the commit lock, so a prune either sees the lease or has already removed the checkpoint
(and the reader then gets a clean "not found").
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .repository import Repository

_PREFIX = "inuse/"


@contextlib.contextmanager
def hold(repo: "Repository", ref: str) -> Iterator[str]:
    """Resolve `ref` and keep its checkpoint from being pruned until the block ends. Yields the checkpoint id. A
    process that cannot write the store takes no lease (it could not prune either)."""
    if repo.read_only:
        yield repo.resolve(ref)
        return
    with contextlib.ExitStack() as stack:
        with repo.commit_lock():
            repo.sync()  # another process may have removed it since this repository last looked
            cid = repo.resolve(ref)
            stack.enter_context(repo.coord.lease(_PREFIX + cid))
        yield cid


def in_use(repo: "Repository") -> frozenset[str]:
    """Ids with a live lease. Call with the commit lock held."""
    return frozenset(key[len(_PREFIX):] for key in repo.coord.live_leases(_PREFIX))
