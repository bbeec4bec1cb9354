"""Checkout for resuming: a stored training checkpoint written back as the folder a trainer resumes from.

Unlike a plain export, a checkout checks first that the checkpoint holds training state: resuming from weights
alone would silently restart the optimizer and the LR schedule, which is a different run, not a resume.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import _leases
from .errors import IncompleteCheckpoint

if TYPE_CHECKING:
    from ._manifest import Manifest
    from .store import Store

# Trainer writes trainer_state.json; CheckpointManager writes training_state.json.
STATE_FILES = ("trainer_state.json", "training_state.json")


def check_training_state(manifest: "Manifest") -> None:
    paths = [f.path for f in manifest.files]
    missing = []
    if not any(p in STATE_FILES for p in paths):
        missing.append("training state (trainer_state.json)")
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
    store: "Store", ref: str, dest: str | os.PathLike[str], *, check: bool = True, verify: bool = False,
    on_progress: Any = None,
) -> Path:
    """Write checkpoint `ref` to `dest` (new or empty) for ``trainer.train(resume_from_checkpoint=dest)``.

    The checkpoint is leased while it is copied, so a prune running meanwhile keeps it.
    """
    with _leases.hold(store, ref) as cid:
        manifest = store.manifest(cid)
        if check:
            check_training_state(manifest)
        return store.export(cid, dest, verify=verify, on_progress=on_progress)
