"""`CheckpointManager`: checkpoints for a plain PyTorch training loop, saved into a store and restored exactly.

A checkpoint of the manager is a model checkpoint (``model.safetensors``, and ``config.json`` for a transformers
model, so ``Store.load`` and ``from_pretrained`` open it) plus the training state, never as one pickle:

- ``optimizer.safetensors``               every tensor of ``optimizer.state_dict()`` (moments, step counts)
- ``training_state/tensors.safetensors``  tensors of the scheduler state, of `extra`, and the RNG states
- ``training_state.json``                 the rest as JSON: step, param groups, scheduler counters, extra, RNG info

So optimizer moments deduplicate like weights, load by mapping, and opening a checkpoint can never run code.
"""

from __future__ import annotations

import inspect
import json
import logging
import math
import os
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import torch

from . import rng as _rng
from . import statetree as _statetree
from .preemption import SignalWatch
from .replication import Replicator
from .saver import AsyncSaver, Staging
from .schedule import Clock, SaveSchedule
from .._core.info import CheckpointInfo, ResumePoint
from .._core.names import check_run
from .._core.trainer_log import MANAGER_STATE
from ..errors import (CheckpointNotFound, CkptError, IncompleteCheckpoint, InvalidArgument, NameExists,
                     RetentionWarning, StoreLocked)
from ..policies import LatestN, RetentionPolicy, default_mode
from ..store import Store

log = logging.getLogger(__name__)

STATE_FILE = MANAGER_STATE  # the name checkout recognizes too
OPTIMIZER_FILE = "optimizer.safetensors"
TENSORS_FILE = "training_state/tensors.safetensors"
STATE_FORMAT = 1


def split_metrics(metrics: Mapping[str, Any] | None) -> tuple[dict[str, float], dict[str, str]]:
    """(finite metrics, the others as text). A diverged run logs loss=nan; its checkpoint must still be saved,
    and the store only ranks finite numbers, so NaN and inf go to metadata instead of failing the save."""
    finite: dict[str, float] = {}
    other: dict[str, str] = {}
    for key, value in (metrics or {}).items():
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            value = value.item()
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise InvalidArgument(f"Metric {key}={value!r} is not a number.", hint="Pass numbers, e.g. {'eval_loss': 0.3}.")
        if math.isfinite(value):
            finite[key] = float(value)
        else:
            other[key] = repr(float(value))
    return finite, other


def model_files(model: Any, staging: Staging) -> dict[str, Any]:
    """A host-memory snapshot of the files a save of `model` writes: exactly what ``Store.save(model)`` would store
    (same tensors, tied weights removed, same config), taken now, while training waits."""
    return {
        path: value if isinstance(value, bytes)
        else {name: staging.tensor(f"{path}/{name}", t) for name, t in value.items()}
        for path, value in Store.capture(model).items()
    }


def training_files(
    step: int, optimizer: Any, scheduler: Any, extra: Any, *, staging: Staging | None = None
) -> dict[str, Any]:
    """The training state as extra files of a checkpoint (see the module docstring); tensors are copied into
    `staging` when given (async save), referenced otherwise."""
    copy = staging.tensor if staging is not None else None
    state: dict[str, Any] = {"format": STATE_FORMAT, "step": step}
    tensors: dict[str, torch.Tensor] = {}
    files: dict[str, Any] = {}
    if optimizer is not None:
        state["optimizer"], opt_tensors = _statetree.flatten(optimizer.state_dict(), "optimizer", copy=copy,
                                                             what="optimizer state")
        state["optimizer_class"] = type(optimizer).__name__
        if opt_tensors:
            files[OPTIMIZER_FILE] = opt_tensors
    if scheduler is not None:
        state["scheduler"], more = _statetree.flatten(scheduler.state_dict(), "scheduler", copy=copy,
                                                      what="scheduler state")
        state["scheduler_class"] = type(scheduler).__name__
        tensors.update(more)
    if extra is not None:
        state["extra"], more = _statetree.flatten(extra, "extra", copy=copy, what="extra")
        tensors.update(more)
    state["rng"], rng_tensors = _rng.capture()  # fresh tensors already: nothing to stage
    tensors.update(rng_tensors)
    files[TENSORS_FILE] = tensors
    files[STATE_FILE] = _statetree.dumps(state)
    return files


def save_after(store: Store, src: Any, name: str, run: str, parent: str | None = None, **kwargs: Any) -> CheckpointInfo:
    """``store.save`` with `parent` (the checkpoint training went on from; default the run's latest) as parent,
    for lineage. Another process's prune may remove that parent in the moment before the save resolves it;
    lineage is not worth failing a training save for, so the save then goes ahead without one."""
    parent = parent or store.tags(run).get(f"{run}:latest")
    try:
        return store.save(src, name, parent=parent, **kwargs)
    except CheckpointNotFound as exc:
        if parent is None or exc.ref != parent:
            raise
        return store.save(src, name, **kwargs)


def housekeeping_gc(store: Store, info: CheckpointInfo) -> None:
    """gc after a training save, to free what the run's policy pruned. Housekeeping: `info` is stored whatever
    happens here, so a failure (a full disk, say, in the index update gc starts with) is a RetentionWarning and
    training goes on; the next gc frees the blobs."""
    try:
        # Never wait on another process's save for this: its blobs are freed by the next gc instead.
        store.gc(timeout=0)
    except StoreLocked:
        log.debug("gc skipped: the store is busy")
    except Exception as exc:  # noqa: BLE001 - see the docstring
        warnings.warn(
            f"Saved {info.name!r}, but the gc after it failed ({exc}); run 'ckpt gc' to free the pruned blobs.",
            RetentionWarning,
            stacklevel=2,
        )


def name_after_rollback(store: Store, run: str, step: int) -> str:
    """``RUN/step-N``, or, when that name is taken because training went back to an earlier checkpoint and is
    passing step N again, the first free ``RUN/step-N.K`` (K = 1, 2, ...). Checkpoints are never overwritten: the
    abandoned attempt stays stored (and is pruned like any other) beside the new one."""
    name = f"{run}/step-{step}"
    if not store.has(name):
        return name
    k = 1
    while store.has(f"{name}.{k}"):
        k += 1
    log.warning("%s is already stored (training went back to an earlier step since); storing step %d as %s.%d",
                name, step, name, k)
    return f"{name}.{k}"


def load_weights(model: torch.nn.Module, state: Mapping[str, torch.Tensor], *, name: str) -> None:
    """Copy `state` into `model`, accepting only keys missing because they are tied to a loaded tensor
    (save_pretrained stores a tied weight once; loading its twin fills both)."""
    result = model.load_state_dict(dict(state), strict=False)
    own = model.state_dict()
    loaded = {own[k].data_ptr() for k in state if k in own and own[k].numel()}
    missing = [k for k in result.missing_keys if not (own[k].numel() and own[k].data_ptr() in loaded)]
    if missing or result.unexpected_keys:
        parts = []
        if missing:
            parts.append(f"missing {', '.join(missing[:3])}" + (" ..." if len(missing) > 3 else ""))
        if result.unexpected_keys:
            extra = list(result.unexpected_keys)
            parts.append(f"unexpected {', '.join(extra[:3])}" + (" ..." if len(extra) > 3 else ""))
        raise IncompleteCheckpoint(
            f"The weights of {name!r} do not fit this model: {'; '.join(parts)}.",
            hint="Restore into the same model class and config the run was saved with.",
        )


class CheckpointManager:
    """Checkpoints of a training loop, kept in a store under ``RUN/step-N``.

    >>> manager = CheckpointManager(Store.open("ckpts", create=True), "my-run",
    ...                             policy=RetentionPolicy(keep_last=2, keep_best=1))          # doctest: +SKIP
    >>> step, extra = manager.restore(model, optimizer, scheduler)  # when manager.latest()     # doctest: +SKIP
    >>> manager.save(step, model, optimizer, scheduler, metrics={"eval_loss": 0.3})          # doctest: +SKIP

    With `async_save`, `save` only copies the state to host memory; hashing and writing run in a background
    thread (one save in flight at a time; a failure is raised by the next `save` or `wait`). `policy` becomes the
    run's policy in the store; `gc` frees the blobs of pruned checkpoints after each save.

    `save_every_steps` and `save_every_seconds` set a schedule for `maybe_save` (call it every step; it saves when
    either is due, the time counted from the last save, restore or the manager's creation); `clock` (default
    ``time.monotonic``) is what the time is read from.

    With `replicate_to` (a Store, a path or a URL), every committed save is also copied to that store in a background
    thread (training never waits; a failure is a ReplicationWarning, retried after the next save; `close` waits for
    it), and that store applies the run's policy too.

    With `save_on_signal` (the default), the first `step_boundary` call installs handlers for SIGTERM and SIGUSR1;
    after one arrives, the next `step_boundary` saves the step, waits for the commit and exits (see preemption.py).
    """

    def __init__(
        self,
        store: Store | str | os.PathLike[str],
        run: str,
        policy: RetentionPolicy | None = None,
        async_save: bool = False,
        *,
        metric: str | None = None,
        mode: str | None = None,
        gc: bool = True,
        save_every_steps: int | None = None,
        save_every_seconds: float | None = None,
        clock: Clock | None = None,
        save_on_signal: bool = True,
        replicate_to: Store | str | os.PathLike[str] | None = None,
    ) -> None:
        self.schedule = SaveSchedule(save_every_steps, save_every_seconds, clock)
        self.store = store if isinstance(store, Store) else Store.open(store, create=True)
        self.run = check_run(run)
        if policy is not None:
            self.store.set_policy(self.run, policy)
        self.store.register_run(self.run, metric=metric, mode=mode or default_mode(metric))
        self._signals = SignalWatch() if save_on_signal else None
        self._saved_step: int | None = None  # the step of the last save asked of this manager
        self.resumed_from: ResumePoint | None = None  # what restore() picked, and the damaged ones it passed over
        self.gc = gc
        self._saver = AsyncSaver(self.store, f"ckptstore-save {self.run}") if async_save else None
        self._staging = Staging() if async_save else None
        self._restored_step: int | None = None  # the step `restore` went back to, if it did
        self._parent: str | None = None  # what training went on from: the last checkpoint restored or saved here
        # Each committed save is copied to `replicate_to` in the background (see replication.py); None: no copy.
        self.replicator = Replicator(self.store, replicate_to, self.run, gc=gc) if replicate_to is not None else None

    def __repr__(self) -> str:
        return f"CheckpointManager({self.store!r}, {self.run!r}, async_save={self._saver is not None})"

    # -- save ----------------------------------------------------------------------------------------------------
    def name_for(self, step: int) -> str:
        return f"{self.run}/step-{step}"

    def save(
        self,
        step: int,
        model: torch.nn.Module,
        optimizer: Any = None,
        scheduler: Any = None,
        metrics: Mapping[str, Any] | None = None,
        extra: Any = None,
    ) -> CheckpointInfo | None:
        """Save the state at `step`: weights, optimizer, scheduler, RNG states, and `extra` (tensors and plain data).

        Returns the stored record; with async_save, None (the save finishes in the background: see `wait`).
        """
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise InvalidArgument(f"step must be a whole number >= 0, got {step!r}.",
                                  hint="Pass the training step the state is at, e.g. manager.save(500, model, ...).")
        if self._saver is not None:
            self._saver.wait()  # the previous save's error surfaces here, before anything new is attempted
        name = self.name_for(step)
        self.store.refresh()  # another process may have saved this step since
        if self.store.has(name):
            if self._restored_step is None or step <= self._restored_step:
                raise NameExists(name)
            name = name_after_rollback(self.store, self.run, step)  # restored an earlier checkpoint: a new attempt
        finite, other = split_metrics(metrics)
        metadata = {"saved_by": "ckptstore.CheckpointManager", **({"nonfinite_metrics": other} if other else {})}
        files = training_files(step, optimizer, scheduler, extra, staging=self._staging)
        self.schedule.saved()  # the state is captured: from here on, work is at risk again
        self._saved_step = step

        def commit(store: Store, src: Any, files: dict[str, Any]) -> CheckpointInfo:
            info = save_after(store, src, name, self.run, self._parent, step=step, metrics=finite,
                              metadata=metadata, extra_files=files)
            self._parent = info.id
            self._after_save(store, info)
            return info

        if self._saver is None or self._staging is None:
            return commit(self.store, model, files)
        staged = {**model_files(model, self._staging), **files}  # the weights too: training goes on changing them
        self._saver.submit(lambda store: commit(store, None, staged))
        return None

    def should_save(self, step: int) -> bool:
        """Whether the schedule (`save_every_steps`, `save_every_seconds`) has a save due at `step`."""
        return self.schedule.due(step) is not None

    def maybe_save(
        self,
        step: int,
        model: torch.nn.Module,
        optimizer: Any = None,
        scheduler: Any = None,
        metrics: Mapping[str, Any] | Callable[[], Mapping[str, Any]] | None = None,
        extra: Any = None,
    ) -> CheckpointInfo | None:
        """`save` when the schedule has a save due at `step`; call it after every step. Returns the stored record
        (None when nothing was due, or with async_save). `metrics` may be a function: it is only called (an eval
        pass, say) when a save is made."""
        if not self.schedule.enabled:
            raise InvalidArgument(
                "maybe_save needs a schedule, and this manager has none.",
                hint="Create the manager with save_every_steps=500 and/or save_every_seconds=900.",
            )
        why = self.schedule.due(step)
        if why is None:
            return None
        log.info("Saving %s: %s", self.name_for(step), why)
        return self.save(step, model, optimizer, scheduler, metrics() if callable(metrics) else metrics, extra)

    def _after_save(self, store: Store, info: CheckpointInfo) -> None:
        if self.gc and store.get_policy(self.run) is not None:
            housekeeping_gc(store, info)
        if self.replicator is not None:
            self.replicator.request()

    def wait(self) -> CheckpointInfo | None:
        """Block until the save in flight (if any) is committed; return its record, or raise its error."""
        if self._saver is None:
            return None
        return self._saver.wait()

    def close(self) -> None:
        """Wait for the save in flight and put back the signal handlers; the manager can still be used afterwards."""
        try:
            if self._saver is not None:
                self._saver.close()
        finally:
            try:
                if self.replicator is not None:
                    self.replicator.flush()  # every save so far copied (failures were warned about)
            finally:
                if self._signals is not None:
                    self._signals.uninstall()

    # -- preemption ------------------------------------------------------------------------------------------------
    @property
    def preempted(self) -> int | None:
        """The signal (SIGTERM, SIGUSR1) received since the first `step_boundary`, or None."""
        return self._signals.signum if self._signals is not None else None

    def step_boundary(self, step: int, model: torch.nn.Module, *state: Any, **named: Any) -> None:
        """Call at the end of every step with the state as it is now, given as to `save` (model, optimizer,
        scheduler, metrics, extra). Does nothing, unless SIGTERM or SIGUSR1 came: then saves `step` (unless this
        manager just saved it), waits until it is committed, and exits with 128 + the signal number (after calling
        the handler the process had before)."""
        if self._signals is None:
            return
        if not self._signals.installed:
            # The arguments are used only once a signal comes: one `save` would not take fails now, not then.
            inspect.signature(self.save).bind(step, model, *state, **named)
            self._signals.install()
        if self._signals.signum is None:
            return
        if self._saved_step != step:
            self.save(step, model, *state, **named)
        self.close()  # waits for the commit (an async save too); its error, if any, propagates instead of exiting
        log.warning("Checkpoint of step %d committed after signal %d; exiting", step, self._signals.signum)
        self._signals.exit()

    def __enter__(self) -> "CheckpointManager":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- find ------------------------------------------------------------------------------------------------------
    def latest(self) -> CheckpointInfo | None:
        """The run's checkpoint with the highest step, or None before the first save."""
        self.store.refresh()
        infos = self.store.list(self.run)
        cid = next(iter(LatestN(1).reasons(infos)), None)
        return next((c for c in infos if c.id == cid), None)

    def best(self) -> CheckpointInfo | None:
        """The checkpoint ``RUN:best`` points at (best value of the run's metric), or None."""
        self.store.refresh()
        try:
            return self.store.info(f"{self.run}:best")
        except CheckpointNotFound:
            return None

    def _resolve(self, ref: str) -> str:
        if ref in ("latest", "best"):
            return f"{self.run}:{ref}"
        if "/" not in ref and ":" not in ref and self.store.has(f"{self.run}/{ref}"):
            return f"{self.run}/{ref}"  # "step-500"
        return ref

    # -- restore ---------------------------------------------------------------------------------------------------
    def restore(
        self,
        model: torch.nn.Module,
        optimizer: Any = None,
        scheduler: Any = None,
        ref: str | None = None,
        *,
        restore_rng: bool = True,
    ) -> tuple[int | None, Any]:
        """Load the checkpoint `ref` ("latest", "best", "step-N", a name or an id) into `model`, `optimizer` and
        `scheduler`, restore the RNG states, and return (step, extra). The checkpoint cannot be pruned meanwhile.

        Without `ref`: the newest checkpoint of the run whose blobs all verify (re-hashed first); newer damaged
        ones are passed over with a warning (`resumed_from` names them). A run with no checkpoint: (None, None),
        so a restarted job needs no path; every checkpoint damaged: CorruptObject."""
        self.wait()
        if ref is None:
            point = self.store.resume_point(self.run, kind="manager")
            if point is None:
                if self.latest() is None:
                    return None, None
                ref = "latest"  # checkpoints not saved by a manager: restore says what they lack
            else:
                self.resumed_from = point
                if point.fell_back:
                    log.warning("%s", point.describe())
                ref = point.info.id
        with self.store.hold(self._resolve(ref)) as cid:
            manifest = self.store.manifest(cid)
            state = self._training_state(manifest, wants_optimizer=optimizer is not None,
                                         wants_scheduler=scheduler is not None)
            tensors: dict[str, torch.Tensor] = {}
            if manifest.file(TENSORS_FILE) is not None:
                tensors = {k: v.clone() for k, v in self.store.load_tensors(cid, TENSORS_FILE).items()}
            load_weights(model, self.store.load_state_dict(cid), name=manifest.name)
            if optimizer is not None:
                opt_tensors: dict[str, torch.Tensor] = {}
                if manifest.file(OPTIMIZER_FILE) is not None:
                    # Cloned: the optimizer updates its state in place, and must not hold maps of store files.
                    opt_tensors = {k: v.clone() for k, v in self.store.load_tensors(cid, OPTIMIZER_FILE).items()}
                optimizer.load_state_dict(_statetree.unflatten(state["optimizer"], opt_tensors,
                                                               what="optimizer state"))
            if scheduler is not None:
                scheduler.load_state_dict(_statetree.unflatten(state["scheduler"], tensors, what="scheduler state"))
            extra = _statetree.unflatten(state.get("extra"), tensors, what="extra") if state else None
            if restore_rng and state:
                _rng.restore(state["rng"], tensors)
        step = manifest.step if not state else state["step"]
        self._restored_step, self._parent = step, cid
        self.schedule.saved()  # nothing trained since is at risk yet
        return step, extra

    def _training_state(self, manifest: Any, *, wants_optimizer: bool, wants_scheduler: bool) -> dict[str, Any]:
        entry = manifest.file(STATE_FILE)
        if entry is None:
            if wants_optimizer or wants_scheduler:
                raise IncompleteCheckpoint(
                    f"Checkpoint {manifest.name!r} has no training state ({STATE_FILE}), so there is no optimizer or"
                    " scheduler state to resume from.",
                    hint="Restore the weights alone (optimizer=None, scheduler=None), or pick a checkpoint saved by"
                    " CheckpointManager.",
                )
            return {}
        try:
            state = json.loads(self.store.read_file(manifest.name, STATE_FILE))
        except (ValueError, CkptError) as exc:
            raise IncompleteCheckpoint(f"{STATE_FILE} of {manifest.name!r} cannot be read: {exc}") from None
        if state.get("format") != STATE_FORMAT:
            raise IncompleteCheckpoint(
                f"{STATE_FILE} of {manifest.name!r} has format {state.get('format')!r}; this ckptstore reads"
                f" {STATE_FORMAT}.",
                hint="Upgrade ckptstore.",
            )
        for key, wanted in (("optimizer", wants_optimizer), ("scheduler", wants_scheduler)):
            if wanted and state.get(key) is None:
                raise IncompleteCheckpoint(
                    f"Checkpoint {manifest.name!r} has no {key} state: it was saved without a {key}.",
                    hint=f"Pass {key}=None to restore without it, or pick a checkpoint saved with one.",
                )
        return state
