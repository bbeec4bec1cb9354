"""Checkout for resuming: a stored training checkpoint written back as the folder a trainer resumes from.

Unlike a plain export, a checkout checks first that the checkpoint holds training state: resuming from weights
alone would silently restart the optimizer and the LR schedule, which is a different run, not a resume.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._core.trainer_log import MANAGER_STATE, TRAINER_STATE
from .._repo import leases
from ..errors import IncompleteCheckpoint
from .load import export

if TYPE_CHECKING:
    from .._format.manifest import Manifest
    from .._repo.repository import Repository



def saved_by_trainer(manifest: "Manifest") -> bool:
    """Whether the checkpoint is a Trainer folder (trainer_state.json) rather than a CheckpointManager one."""
    return manifest.file(TRAINER_STATE) is not None


def check_training_state(manifest: "Manifest") -> None:
    paths = [f.path for f in manifest.files]
    if MANAGER_STATE in paths:
        return  # CheckpointManager's state: its restore() says itself what a resume lacks
    missing = []
    if TRAINER_STATE not in paths:
        missing.append(f"training state ({TRAINER_STATE})")
    if not any(p.rsplit("/", 1)[-1].startswith("optimizer") for p in paths):
        missing.append("optimizer state (optimizer.pt)")
    if missing:
        raise IncompleteCheckpoint(
            f"Checkpoint {manifest.name!r} has no {' and no '.join(missing)}: a resume from it would restart the"
            " optimizer and schedule.",
            hint="Resume from a checkpoint Trainer saved with save_only_model=False, or use 'ckpt export' to get"
            " the weights alone.",
        )


def checkout(
    repo: "Repository", ref: str, dest: str | os.PathLike[str], *, check: bool = True, verify: bool = False,
    on_progress: Any = None,
) -> Path:
    """Write checkpoint `ref` to `dest` (new or empty) for ``trainer.train(resume_from_checkpoint=dest)``.

    The checkpoint is leased while it is copied, so a prune running meanwhile keeps it.
    """
    with leases.hold(repo, ref) as cid:
        manifest = repo.manifest(cid)
        if check:
            check_training_state(manifest)
        export(repo.blobs, manifest, Path(dest), verify=verify, on_progress=on_progress)
        return Path(dest)
