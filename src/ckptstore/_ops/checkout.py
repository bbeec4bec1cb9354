"""Checkout for resuming: a stored training checkpoint written back as the folder a trainer resumes from.

Unlike a plain export, a checkout checks first that the checkpoint holds training state: resuming from weights
alone would silently restart the optimizer and the LR schedule, which is a different run, not a resume.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._core.info import ResumePoint
from .._core.names import split_tag_ref
from .._core.trainer_log import MANAGER_STATE, TRAINER_STATE
from .._repo import leases
from ..errors import CheckpointNotFound, CkptError, CorruptObject, IncompleteCheckpoint, InvalidArgument
from .load import export
from .slim import refuse_slimmed
from .verify import verify

if TYPE_CHECKING:
    from .._format.manifest import Manifest
    from .._repo.repository import Repository


KINDS = ("trainer", "manager")


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


def resumable(manifest: "Manifest", kind: str | None = None) -> bool:
    """Whether a training can resume from the checkpoint: CheckpointManager state, or a Trainer folder with its
    optimizer state; of that `kind` ("trainer", "manager") when given."""
    paths = [f.path for f in manifest.files]
    manager = MANAGER_STATE in paths
    trainer = TRAINER_STATE in paths and any(p.rsplit("/", 1)[-1].startswith("optimizer") for p in paths)
    return {"manager": manager, "trainer": trainer and not manager}.get(kind, manager or trainer)  # type: ignore[arg-type]


def checkout(
    repo: "Repository", ref: str, dest: str | os.PathLike[str], *, check: bool = True, verify: bool = False,
    fallback: bool = False, on_progress: Any = None,
) -> ResumePoint:
    """Write checkpoint `ref` to `dest` (new or empty) for ``trainer.train(resume_from_checkpoint=dest)``.

    The checkpoint is leased while it is copied, so a prune running meanwhile keeps it. With `fallback` and a
    ``RUN:latest`` reference, a damaged newest checkpoint gives way to the newest older one that verifies (see
    `resume_point`); a checkpoint named explicitly fails as it is.
    """
    tag_ref = split_tag_ref(ref) if fallback else None
    if tag_ref is not None and tag_ref[1] == "latest":
        with leases.hold(repo, ref) as cid:
            try:
                manifest = repo.manifest(cid)
            except CorruptObject:
                kind = None  # its manifest is the damage: any resumable checkpoint older than it will do
            else:
                if check:
                    refuse_slimmed(repo, manifest)
                    check_training_state(manifest)
                kind = "manager" if MANAGER_STATE in [f.path for f in manifest.files] else "trainer"
        point = resume_point(repo, tag_ref[0], dest, verify=True, kind=kind, newest=cid, on_progress=on_progress)
        if point is None:
            raise CheckpointNotFound(ref)
        return point
    with leases.hold(repo, ref) as cid:
        manifest = repo.manifest(cid)
        if check:
            refuse_slimmed(repo, manifest)
            check_training_state(manifest)
        export(repo.blobs, manifest, Path(dest), verify=verify, on_progress=on_progress)
        return ResumePoint(repo.info(cid), Path(dest))


def candidates(repo: "Repository", run: str) -> list[str]:
    """Ids of the run's checkpoints, newest first: highest step, then latest saved (the order `latest` follows)."""
    infos = repo.catalog.infos(run=run)
    infos.sort(key=lambda c: (c.step if c.step is not None else -1, c.created_at), reverse=True)
    return [c.id for c in infos]


def resume_point(
    repo: "Repository", run: str, dest: str | os.PathLike[str] | None = None, *, verify: bool = True,
    kind: str | None = None, newest: str | None = None, on_progress: Any = None,
) -> ResumePoint | None:
    """The newest checkpoint of `run` a training can resume from (of `kind`, when given) whose every blob verifies,
    checked out to `dest` when given (re-hashed as it is written), else re-hashed in place. Newer damaged ones are
    passed over and named in `skipped`. None when the run has nothing to resume from (a fresh run); every
    candidate damaged: CorruptObject naming them. `newest`: start at this checkpoint (what RUN:latest names)."""
    if kind is not None and kind not in KINDS:
        raise InvalidArgument(f"kind must be one of {', '.join(KINDS)} or None, got {kind!r}.",
                              hint="kind='trainer' for Trainer folders, 'manager' for CheckpointManager checkpoints.")
    with repo.commit_lock():
        repo.sync()  # what other processes saved since: a restarted job looks with fresh eyes
    ids = candidates(repo, run)
    if newest is not None and newest in ids:
        ids = ids[ids.index(newest):]
    skipped: list[tuple[str, str]] = []
    for cid in ids:
        name = cid[:12]
        try:
            with leases.hold(repo, cid):
                info = repo.info(cid)
                name = info.name
                try:
                    manifest = repo.manifest(cid)
                except CorruptObject as exc:
                    skipped.append((name, f"manifest: {exc.message}"))
                    continue
                if not resumable(manifest, kind):
                    continue
                if dest is not None:
                    export(repo.blobs, manifest, Path(dest), verify=verify, on_progress=on_progress)
                elif verify:
                    report = verify_one(repo, cid)
                    if report:
                        skipped.append((name, report))
                        continue
                return ResumePoint(info, Path(dest) if dest is not None else None, tuple(skipped))
        except CheckpointNotFound:
            continue  # pruned by another process since the list was read
        except CorruptObject as exc:
            skipped.append((name, _short(exc)))
    if not skipped:
        return None
    names = ", ".join(repr(name) for name, _ in skipped)
    raise CorruptObject(
        f"No checkpoint of run {run!r} can be resumed from: every one is damaged ({names}).",
        hint=f"Run 'ckpt verify' to see the damage; restore the store from a backup, or start {run!r} afresh.",
    )


def verify_one(repo: "Repository", cid: str) -> str:
    """'' when every blob of the checkpoint re-hashes to its name; else the first problem, in a few words."""
    report = verify(repo, cid, deep=True)
    if report.ok:
        return ""
    first = report.problems[0]
    others = len({(p.digest, p.kind) for p in report.problems}) - 1
    more = f", and {others} more damaged blob{'s' if others > 1 else ''}" if others else ""
    blob = f"blob {first.digest[:12]} of {first.file}: " if first.digest else ""
    return f"{blob}{first.kind}{more}"


def _short(exc: CkptError) -> str:
    """The reason out of export's 'Checkpoint X is damaged: blob Y of FILE is missing.'"""
    return exc.message.split(" is damaged: ", 1)[-1].rstrip(".")
