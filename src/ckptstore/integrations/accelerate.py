"""``Accelerator.save_state`` output stored as checkpoints, and ``load_state`` from a store reference.

>>> checkpoints = AcceleratorCheckpoints(accelerator, store, "my-run", RetentionPolicy(keep_last=2, keep_best=1))
... # doctest: +SKIP
>>> info = checkpoints.load_state()               # the run's latest, or None for a fresh run   # doctest: +SKIP
>>> checkpoints.save_state(step, metrics={"eval_loss": 0.3})                                 # doctest: +SKIP

Every process calls both, as it calls accelerate's own. ``save_state`` has accelerate write its folder (models as
safetensors, optimizers, schedulers, samplers, RNG states, registered objects) into a staging folder, stores it as
``RUN/step-N`` from the main process (safetensors split per tensor, so unchanged tensors are stored once; every
other file verbatim), removes the folder and applies the run's retention policy. ``load_state`` writes a verified
copy of the checkpoint (every blob re-hashed) into the staging folder and calls ``accelerator.load_state`` on it.

accelerate's own files (``optimizer.bin``, ``scheduler.bin``, ``random_states_*.pkl``, ``custom_checkpoint_*.pkl``)
are pickles. The store keeps them byte for byte and never opens them; ``accelerator.load_state`` unpickles them,
at the user's request, exactly as it does from its own folders. Restore only checkpoints your own runs saved.

Retention is the run's policy in the store, over every checkpoint of the run, whichever process saved it:
accelerate's ``total_limit`` sorts its folders by a counter that a resume resets (it deleted the wrong folder in
accelerate#1163) and does nothing without ``automatic_checkpoint_naming`` (diffusers#3802); leave it unset.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .._core.info import CheckpointInfo
from .._core.names import check_run
from .._training.manager import housekeeping_gc, name_after_rollback, save_after, split_metrics
from ..errors import IncompleteCheckpoint, InvalidArgument
from ..policies import RetentionPolicy, default_mode
from ..store import Store

__all__ = ["AcceleratorCheckpoints", "load_state", "save_state"]

log = logging.getLogger(__name__)

_RNG_FILE_PREFIX = "random_states_"


class AcceleratorCheckpoints:
    """The checkpoints of one run of an ``accelerate.Accelerator`` loop, kept in a store under ``RUN/step-N``.

    `policy` becomes the run's retention policy; `metric` and `mode` what ``RUN:best`` follows. `staging_dir` is
    where accelerate writes and reads its folders: every process of the job must see the same folder (the default,
    the system's temporary folder, is right for one machine; give a shared path for several). `gc` frees the blobs
    of checkpoints the policy removed.
    """

    def __init__(
        self,
        accelerator: Any,
        store: Store | str | os.PathLike[str],
        run: str,
        policy: RetentionPolicy | None = None,
        *,
        metric: str | None = None,
        mode: str | None = None,
        staging_dir: str | os.PathLike[str] | None = None,
        gc: bool = True,
    ) -> None:
        self.accelerator = accelerator
        self.store = store if isinstance(store, Store) else Store.open(store, create=True)
        self.run = check_run(run)
        self.gc = gc
        self.staging_dir = Path(staging_dir) if staging_dir is not None else Path(tempfile.gettempdir())
        if accelerator.is_main_process:
            if policy is not None:
                self.store.set_policy(self.run, policy)
            if metric is not None:
                self.store.register_run(self.run, metric=metric, mode=mode or default_mode(metric))
        self.last_saved: CheckpointInfo | None = None
        self.resumed_from: CheckpointInfo | None = None
        self._restored_step: int | None = None

    def __repr__(self) -> str:
        return f"AcceleratorCheckpoints({self.store!r}, {self.run!r})"

    # -- save ----------------------------------------------------------------------------------------------------
    def save_state(self, step: int, metrics: Mapping[str, Any] | None = None, **save_state_kwargs: Any
                   ) -> CheckpointInfo | None:
        """``accelerator.save_state`` into the store as ``RUN/step-<step>``. Call it on every process; returns
        the stored record on the main process, None on the others."""
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise InvalidArgument(f"step must be a whole number >= 0, got {step!r}.",
                                  hint="Pass the training step the state is at, e.g. save_state(500).")
        acc = self.accelerator
        stage = self._stage(f"save-{step}")
        if acc.is_main_process:
            shutil.rmtree(stage, ignore_errors=True)  # a folder a killed job left
        acc.wait_for_everyone()
        where = Path(acc.save_state(str(stage), **save_state_kwargs))
        acc.wait_for_everyone()  # every process has written its RNG state
        info = None
        try:
            if acc.is_main_process:
                info = self._store(where, step, metrics)
        finally:
            acc.wait_for_everyone()
            if acc.is_main_process:
                shutil.rmtree(stage, ignore_errors=True)
        return info

    def _store(self, folder: Path, step: int, metrics: Mapping[str, Any] | None) -> CheckpointInfo:
        from safetensors import safe_open

        files: dict[str, Any] = {}
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            rel = path.relative_to(folder).as_posix()
            if path.suffix == ".safetensors":
                # Per tensor, so a tensor that did not change since the last save is stored once.
                with safe_open(str(path), framework="pt") as f:
                    files[rel] = {key: f.get_tensor(key) for key in f.keys()}
            else:
                files[rel] = path.read_bytes()  # accelerate's pickles: kept as they are, never opened here
        self.store.refresh()
        name = name_after_rollback(self.store, self.run, step)
        finite, other = split_metrics(metrics)
        metadata: dict[str, Any] = {"saved_by": "ckptstore.AcceleratorCheckpoints",
                                    "num_processes": self.accelerator.num_processes}
        if other:
            metadata["nonfinite_metrics"] = other
        parent = self.last_saved.id if self.last_saved is not None else (
            self.resumed_from.id if self.resumed_from is not None else None)
        info = save_after(self.store, None, name, self.run, parent, step=step, metrics=finite, metadata=metadata,
                          extra_files=files)
        self.last_saved = info
        if self.gc and self.store.get_policy(self.run) is not None:
            housekeeping_gc(self.store, info)
        return info

    # -- load ----------------------------------------------------------------------------------------------------
    def load_state(self, ref: str | None = None, **load_state_kwargs: Any) -> CheckpointInfo | None:
        """``accelerator.load_state`` from the checkpoint `ref` names ("latest", "best", "step-N", a name, a
        ``RUN:TAG`` or an id; default the run's latest), from a copy whose every blob was re-hashed first. Call it
        on every process. Returns the checkpoint's record (its ``step`` is where to go on from), or None when
        `ref` is None and the run has no checkpoint yet (a fresh run)."""
        acc = self.accelerator
        self.store.refresh()
        if ref is None and f"{self.run}:latest" not in self.store.tags(self.run):
            return None
        target = self._ref(ref or "latest")
        info = self.store.info(target)  # an unknown reference fails here, on every process alike
        if not any(f.path.startswith(_RNG_FILE_PREFIX) for f in self.store.manifest(info.id).files):
            raise IncompleteCheckpoint(
                f"Checkpoint {info.name!r} was not saved by Accelerator.save_state (no {_RNG_FILE_PREFIX}*.pkl).",
                hint=f"Pick one of the run's checkpoints: 'ckpt ls {self.run}'.",
            )
        stage = self._stage(f"load-{info.id[:12]}")
        with self.store.hold(info.id):
            if acc.is_main_process:
                shutil.rmtree(stage, ignore_errors=True)
                self.store.export(info.id, stage, verify=True)
            acc.wait_for_everyone()
            try:
                acc.load_state(str(stage), **load_state_kwargs)
            finally:
                acc.wait_for_everyone()
                if acc.is_main_process:
                    shutil.rmtree(stage, ignore_errors=True)
        self.resumed_from = info
        self.last_saved = None
        return info

    def _ref(self, ref: str) -> str:
        if ref in ("latest", "best"):
            return f"{self.run}:{ref}"
        if "/" not in ref and ":" not in ref and self.store.has(f"{self.run}/{ref}"):
            return f"{self.run}/{ref}"
        return ref

    def _stage(self, what: str) -> Path:
        return self.staging_dir / f".ckptstore-accelerate-{self.run}-{what}"


def save_state(accelerator: Any, store: Store | str | os.PathLike[str], run: str, *, step: int,
               metrics: Mapping[str, Any] | None = None, policy: RetentionPolicy | None = None,
               **save_state_kwargs: Any) -> CheckpointInfo | None:
    """``AcceleratorCheckpoints(accelerator, store, run, policy).save_state(step, metrics)`` in one call."""
    return AcceleratorCheckpoints(accelerator, store, run, policy).save_state(step, metrics, **save_state_kwargs)


def load_state(accelerator: Any, store: Store | str | os.PathLike[str], ref: str, **load_state_kwargs: Any
               ) -> CheckpointInfo:
    """``accelerator.load_state`` from the stored checkpoint `ref` names (``RUN:latest``, ``RUN:best``, a name or
    an id), from a verified copy. Returns its record."""
    store = store if isinstance(store, Store) else Store.open(store)
    info = AcceleratorCheckpoints(accelerator, store, store.info(ref).run).load_state(ref, **load_state_kwargs)
    assert info is not None  # a reference was given
    return info
