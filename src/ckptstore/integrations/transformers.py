"""``CheckpointCallback``: every checkpoint a ``transformers.Trainer`` saves goes into a store, deduplicated.

>>> trainer = Trainer(..., callbacks=[CheckpointCallback(store, "bert-sst2", RetentionPolicy(keep_last=2, keep_best=1))])
... # doctest: +SKIP

At each Trainer save the ``checkpoint-N`` folder (model, config, tokenizer, optimizer, scheduler, RNG state,
trainer_state.json) is stored verbatim as ``RUN/step-N`` with the step, the epoch and the eval metrics logged at
that step; the run's ``latest`` and ``best`` tags move (``best`` honours ``metric_for_best_model`` and
``greater_is_better``); the run's policy is applied; and local ``checkpoint-*`` folders beyond the newest
`keep_local` are removed once stored, so the disk holds one working copy instead of ``save_total_limit`` copies.

With ``save_every_minutes``, Trainer also saves whenever that much training time has passed since the last save,
beside its own ``save_steps``, so a preempted run never loses more than that.

To resume with no path: ``trainer.train(resume_from_checkpoint=callback.resume_dir())`` checks out the newest
Trainer checkpoint of the run that verifies (None for a fresh run). Or ``ckpt checkout RUN:latest DIR --verify``
(or :func:`checkout`), then ``trainer.train(resume_from_checkpoint=DIR)``.

With `save_on_signal` (the default), SIGTERM or SIGUSR1 during training makes Trainer save at the end of the step,
stop, and the process exit with 128 + the signal number once the checkpoint is committed (see _training/preemption).
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from .._core.info import CheckpointInfo, ResumePoint
from .._core.names import check_run
from .._core.trainer_log import CHECKPOINT_DIR, metrics_at_step
from .._training.manager import housekeeping_gc, name_after_rollback, save_after, split_metrics
from .._training.preemption import SignalWatch
from .._training.replication import Replicator
from .._training.saver import AsyncSaver
from .._training.schedule import Clock, SaveSchedule
from ..errors import InvalidArgument, SourceNotFound
from ..policies import RetentionPolicy
from ..store import Store

__all__ = ["CheckpointCallback", "checkout"]

log = logging.getLogger(__name__)

# Files up to this size are copied into the async staging folder, larger ones hard-linked (see _stage).
_COPY_BELOW = 1 << 20


class CheckpointCallback(TrainerCallback):
    """Store each Trainer checkpoint in `store` under ``RUN/step-N``; see the module docstring.

    `policy` becomes the run's retention policy in the store (shared with the CLI and other processes).
    `keep_local` local ``checkpoint-*`` folders are kept (None: leave them all to Trainer). With `async_save`,
    the folder is hard-linked into a staging folder and stored by a background thread while training goes on.
    `gc` frees the blobs of checkpoints the policy removed. `save_every_minutes` makes Trainer save whenever that
    much time has passed since its last save (or the start of training), whatever ``save_steps`` says; `clock`
    (default ``time.monotonic``, in seconds) is what the time is read from. With `replicate_to` (a Store, a path or
    a URL), each stored checkpoint is copied to that store in a background thread (a failure is a
    ReplicationWarning, retried after the next save; the end of training waits for the copy), and that store
    applies the run's policy too.
    """

    def __init__(
        self,
        store: Store | str | os.PathLike[str],
        run: str,
        policy: RetentionPolicy | None = None,
        keep_local: int | None = 1,
        async_save: bool = False,
        *,
        gc: bool = True,
        save_every_minutes: float | None = None,
        clock: Clock | None = None,
        save_on_signal: bool = True,
        replicate_to: Store | str | os.PathLike[str] | None = None,
    ) -> None:
        self._schedule = SaveSchedule(
            None, save_every_minutes * 60 if _is_number(save_every_minutes) else save_every_minutes, clock,
            names=("save_every_steps", "save_every_minutes"),
        )
        if keep_local is not None and (isinstance(keep_local, bool) or not isinstance(keep_local, int) or keep_local < 0):
            raise InvalidArgument(
                f"keep_local must be a whole number >= 0 or None, got {keep_local!r}.",
                hint="keep_local=1 keeps the newest Trainer folder on disk; None leaves the folders to Trainer.",
            )
        self.store = store if isinstance(store, Store) else Store.open(store, create=True)
        self.run = check_run(run)
        self.keep_local = keep_local
        self.gc = gc
        if policy is not None:
            self.store.set_policy(self.run, policy)
        self.store.register_run(self.run)
        self._saver = AsyncSaver(self.store, f"ckptstore-save {self.run}") if async_save else None
        # Each stored checkpoint is copied to `replicate_to` in the background (see _training/replication.py).
        self.replicator = Replicator(self.store, replicate_to, self.run, gc=gc) if replicate_to is not None else None
        self._stored: dict[Path, str] = {}  # local folder -> id, for folders this callback has stored
        self._pending: Path | None = None  # the folder an async save is storing
        self.last_saved: CheckpointInfo | None = None
        self._resumed_from: str | None = None  # the stored checkpoint Trainer resumed from, if it did
        self._signals = SignalWatch() if save_on_signal else None
        self._output_dir: str | None = None  # Trainer's, known once the Trainer is built (on_init_end)
        self.resumed_from: ResumePoint | None = None  # what resume_dir() picked, and the damaged ones it passed over

    # -- resuming ---------------------------------------------------------------------------------------------------
    def resume_dir(self, output_dir: str | os.PathLike[str] | None = None) -> str | None:
        """Check out the newest Trainer checkpoint of the run whose blobs all verify into ``OUTPUT_DIR/checkpoint-N``
        and return that folder, for ``trainer.train(resume_from_checkpoint=callback.resume_dir())``; None when the
        run has no checkpoint yet (a fresh run). Newer damaged checkpoints are passed over with a warning; every
        one damaged: CorruptObject. `output_dir` defaults to that of the Trainer this callback was given to."""
        output_dir = output_dir if output_dir is not None else self._output_dir
        if output_dir is None:
            raise InvalidArgument(
                "resume_dir() does not know the output folder yet.",
                hint="Call it after building the Trainer with this callback, or pass output_dir.",
            )
        stage = Path(output_dir) / ".ckptstore-resume"
        shutil.rmtree(stage, ignore_errors=True)
        point = self.store.resume_point(self.run, stage, kind="trainer")
        if point is None:
            return None
        self.resumed_from = point
        if point.fell_back:
            log.warning("%s", point.describe())
        # A local folder of that step may be the half-written one a crash left; the verified copy replaces it.
        folder = Path(output_dir) / f"checkpoint-{point.info.step}"
        shutil.rmtree(folder, ignore_errors=True)
        stage.rename(folder)
        return str(folder)

    # -- Trainer events ----------------------------------------------------------------------------------------
    def on_init_end(self, args, state, control, **kwargs):
        self._output_dir = args.output_dir

    def on_train_begin(self, args, state, control, **kwargs):
        self._schedule.saved()  # the interval counts training time, not model loading before train()
        self._output_dir = args.output_dir
        if self._signals is not None:
            self._signals.install()
        if state.global_step and self.last_saved is None:
            # Resumed: lineage goes on from the stored checkpoint of that step (the newest, if tried more than once).
            here = [c for c in self.store.list(self.run) if c.step == state.global_step]
            self._resumed_from = here[0].id if here else None
            self._bring_back_best(args, state)
        metric = args.metric_for_best_model
        if metric:
            metric = metric if metric.startswith("eval_") else f"eval_{metric}"
            self.store.register_run(self.run, metric=metric, mode="max" if args.greater_is_better else "min")

    def on_step_end(self, args, state, control, **kwargs):
        if self._signals is not None and self._signals.signum is not None:
            control.should_save = True  # Trainer saves this step, on_save stores it, then the loop stops
            control.should_training_stop = True
            return
        if self._schedule.every_seconds is None or control.should_save:
            return
        why = self._schedule.due(state.global_step)
        if _agreed(why is not None, args):
            log.info("Saving at step %d: %s", state.global_step, why or "the main process's interval passed")
            control.should_save = True

    def on_save(self, args, state, control, **kwargs):
        self._schedule.saved()  # every save restarts the interval, one made for save_steps included
        if not args.should_save:
            return
        self.wait()
        step = state.global_step
        folder = Path(args.output_dir) / f"checkpoint-{step}"
        if not folder.is_dir():
            raise SourceNotFound(str(folder))
        self.store.refresh()
        metrics, other = split_metrics(metrics_at_step(state.log_history, step))
        metadata: dict[str, Any] = {"saved_by": "ckptstore.CheckpointCallback", "epoch": state.epoch,
                                    "trainer_folder": folder.name}
        if other:
            metadata["nonfinite_metrics"] = other
        kwargs_ = dict(step=step, metrics=metrics, metadata=metadata)
        # Resumed from an earlier checkpoint, Trainer passes stored steps again and overwrites its own folders; the
        # store keeps the earlier attempt and stores this one as RUN/step-N.1.
        name = name_after_rollback(self.store, self.run, step)
        if self._saver is None:
            self._stored_ok(folder, self._save(self.store, folder, name, kwargs_))
            self._cleanup_local(args, state)
            return
        stage = _stage(folder, Path(args.output_dir) / f".ckptstore-staging-{step}")
        self._pending = folder

        def job(store: Store) -> CheckpointInfo:
            try:
                info = self._save(store, stage, name, kwargs_)
            finally:
                shutil.rmtree(stage, ignore_errors=True)
            self._stored_ok(folder, info)
            return info

        self._saver.submit(job)
        self._cleanup_local(args, state)

    def on_train_end(self, args, state, control, **kwargs):
        try:
            if self._saver is not None:
                self._saver.close()  # waits for the save in flight
            if args.should_save:
                self._cleanup_local(args, state)
            if self.replicator is not None:
                self.replicator.flush()  # every checkpoint of this training copied (failures were warned about)
        finally:
            if self._signals is not None and self._signals.signum is None:
                self._signals.uninstall()
        if self._signals is not None and self._signals.signum is not None:
            log.warning("Checkpoint of step %d committed after signal %d; exiting", state.global_step,
                        self._signals.signum)
            self._signals.exit()

    # -- helpers ---------------------------------------------------------------------------------------------------
    def _bring_back_best(self, args, state) -> None:
        """Resumed where the best checkpoint's folder is gone (another machine, a cleaned disk, keep_local), Trainer
        forgets its best and load_best_model_at_end would end on a worse model than the uninterrupted run. Write
        the best back from the store, where Trainer's state says it was, and point the state at it again."""
        if not (args.load_best_model_at_end and args.metric_for_best_model and state.best_metric is not None):
            return
        if state.best_model_checkpoint is not None and Path(state.best_model_checkpoint).is_dir():
            return
        metric = args.metric_for_best_model
        metric = metric if metric.startswith("eval_") else f"eval_{metric}"
        reached = [c for c in self.store.list(self.run)
                   if c.step is not None and c.step <= state.global_step and c.metrics.get(metric) == state.best_metric]
        if not reached:
            return
        best = min(reached, key=lambda c: (c.step, c.created_at))  # the first to reach it, as Trainer decides
        folder = Path(args.output_dir) / f"checkpoint-{best.step}"
        if not folder.exists():
            self.store.export(best.id, folder)
        state.best_model_checkpoint = str(folder)
        self._stored[folder] = best.id
        log.info("Wrote the best checkpoint %s back to %s for load_best_model_at_end", best.name, folder)

    def _save(self, store: Store, folder: Path, name: str, kwargs: dict[str, Any]) -> CheckpointInfo:
        parent = self.last_saved.id if self.last_saved is not None else self._resumed_from
        info = save_after(store, folder, name, self.run, parent, **kwargs)
        if self.gc and store.get_policy(self.run) is not None:
            housekeeping_gc(store, info)
        if self.replicator is not None:
            self.replicator.request()  # returns at once: the copy runs in the background
        return info

    def _stored_ok(self, folder: Path, info: CheckpointInfo) -> None:
        self._stored[folder] = info.id
        self.last_saved = info
        if self._pending == folder:
            self._pending = None

    def wait(self) -> CheckpointInfo | None:
        """Block until the async save in flight is stored; raise its error if it failed."""
        if self._saver is None:
            return None
        return self._saver.wait()

    def _cleanup_local(self, args, state) -> None:
        """Remove stored local checkpoint folders beyond the newest `keep_local` (counting one being stored)."""
        if self.keep_local is None:
            return
        folders = sorted({*self._stored, *([self._pending] if self._pending else [])}, key=_step_of)
        keep = set(folders[len(folders) - self.keep_local:]) if self.keep_local else set()
        if args.load_best_model_at_end and state.best_model_checkpoint:
            keep.add(Path(state.best_model_checkpoint))  # Trainer reloads it at the end of training
        for folder in folders:
            if folder not in keep and folder in self._stored:
                shutil.rmtree(folder, ignore_errors=True)
                del self._stored[folder]


def checkout(store: Store | str | os.PathLike[str], ref: str, dest: str | os.PathLike[str], **kwargs: Any) -> Path:
    """``ckpt checkout``: write the checkpoint `ref` names as a folder ``trainer.train(resume_from_checkpoint=)``
    accepts (see Store.checkout)."""
    store = store if isinstance(store, Store) else Store.open(store)
    return store.checkout(ref, dest, **kwargs)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _agreed(due: bool, args: Any) -> bool:
    """`due` as the main process decided it. Every process must take part in a Trainer save (FSDP and DeepSpeed
    gather the state), and their clocks differ by a little: deciding apart, one could save while another trains
    on, and both would wait forever. Lightning broadcasts its train_time_interval decision the same way."""
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return due
    flag = torch.tensor([1 if due else 0], device=args.device)
    dist.broadcast(flag, src=0)
    return bool(flag.item())


def _step_of(folder: Path) -> int:
    m = CHECKPOINT_DIR.fullmatch(folder.name)
    return int(m.group(1)) if m else -1


def _stage(folder: Path, stage: Path) -> Path:
    """A snapshot of `folder` that Trainer's own rotation cannot delete under a background save: large files
    hard-linked (Trainer never rewrites them), small ones copied (JSON state that could be rewritten in place)."""
    shutil.rmtree(stage, ignore_errors=True)
    for src in sorted(folder.rglob("*")):
        dst = stage / src.relative_to(folder)
        if src.is_dir():
            dst.mkdir(parents=True, exist_ok=True)
            continue
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.stat().st_size >= _COPY_BELOW:
            try:
                os.link(src, dst)
                continue
            except OSError:
                pass  # another filesystem, or no hard links: copy
        shutil.copy2(src, dst)
    return stage
