"""Annotating a checkpoint after its save: metrics, metadata or a message merged over what the manifest saved
(the document format is in _repo/annotations.py)."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from .._repo import annotations
from ..errors import CheckpointNotFound, InvalidArgument
from . import retention
from .save import check_metadata, check_metrics

if TYPE_CHECKING:
    from .._repo.repository import Repository


def annotate(repo: "Repository", ref: str, *, metrics: Mapping[str, float] | None,
             metadata: Mapping[str, Any] | None, message: str | None) -> str:
    """Merge `metrics`, `metadata` and `message` into the annotation of the checkpoint `ref` names, then move the
    run's ``latest``/``best`` tags as after a save (a new metric can make another checkpoint the best)."""
    clean_metrics, clean_metadata = check_metrics(metrics), check_metadata(metadata)
    if not clean_metrics and not clean_metadata and message is None:
        raise InvalidArgument("Nothing to annotate.", hint="Give --metric K=V, --meta K=V or -m MESSAGE.")
    cid = repo.resolve(ref)
    # objects (shared) then commit, the order a save takes them in: gc, which removes annotations of deleted
    # checkpoints, cannot run meanwhile, and the tags move under the same locks as after a save.
    with repo.writing(), repo.commit_lock():
        repo.sync()
        if not repo.catalog.has(cid):  # deleted since the reference was resolved
            raise CheckpointNotFound(cid)
        old = annotations.read(repo.docs, cid) or {"metrics": {}, "metadata": {}, "message": None}
        annotations.write(repo.docs, cid, {
            "metrics": {**old["metrics"], **clean_metrics},
            "metadata": {**old["metadata"], **clean_metadata},
            "message": message if message is not None else old["message"],
            "updated_at": time.time(),
        })
        repo.sync()
        retention.update_tags_locked(repo, [repo.info(cid).run])
    return cid
