"""``StoreCheckpointIO``: PyTorch Lightning checkpoints saved into a store and resumed from store references.

>>> store_io = StoreCheckpointIO(store, "bert-sst2")                                      # doctest: +SKIP
>>> trainer = Trainer(plugins=[store_io], callbacks=[store_io, ModelCheckpoint(monitor="val_loss", save_top_k=2)])
... # doctest: +SKIP
>>> trainer.fit(module, ckpt_path="bert-sst2:latest")   # a fresh run too: see resume_ref()  # doctest: +SKIP

It is Lightning's checkpoint plugin (``plugins=``): every checkpoint ModelCheckpoint saves goes into the store as
``RUN/step-N`` (N = the global step), with the metrics logged at that moment; ``ckpt_path=`` takes a store
reference (``RUN:latest``, ``RUN:best``, a name or an id) as well as the paths Lightning made; Lightning's requests
to remove a checkpoint go to the store. Given as a callback too (``callbacks=``), it also

- sets the run's retention policy from ModelCheckpoint (``save_top_k`` best by ``monitor`` and ``mode``, or the
  last ``save_top_k`` without a monitor), so the store, which sees every checkpoint of the run, prunes: Lightning's
  own top-k forgets the checkpoints made before a resume into a new folder (Lightning#5173, #19844);
- stores the random number generator states and puts them back when training starts, so a resume draws the
  same dropout masks and shuffles as a run never interrupted;
- finds the transformers model the LightningModule wraps (``self.model = AutoModelFor...``) and stores it as
  ``save_pretrained`` writes it, so ``ckpt export RUN:best DIR`` is a folder ``from_pretrained`` loads.

A checkpoint is stored without pickle where it can be: the module's weights as safetensors (``model.safetensors``,
and ``lightning/state_dict.safetensors`` for weights outside the transformers model), the optimizer moments as
``optimizer.safetensors``, other tensors as ``lightning/tensors.safetensors``, and the rest of the checkpoint
dict (loop progress, scheduler and callback state, hyper-parameters) as JSON in ``lightning/checkpoint.json``.
Values JSON cannot hold (a config object among the hyper-parameters) go to ``lightning/objects.pt``, which is
read only with ``torch.load(weights_only=True)``, as Lightning reads its own files by default.
"""

from __future__ import annotations

import ast
import logging
import os
from collections.abc import Mapping
from typing import Any

import torch

from .._core.info import CheckpointInfo
from .._core.names import check_run
from .._training import rng as _rng
from .._training.manager import housekeeping_gc, name_after_rollback, save_after, split_metrics
from ..errors import CheckpointNotFound, CkptError, InvalidArgument
from ..policies import RetentionPolicy
from ..store import Store
from ._lightning_files import OBJECTS_FILE, STATE_FILE, checkpoint_files, read_checkpoint

__all__ = ["OBJECTS_FILE", "STATE_FILE", "StoreCheckpointIO"]

log = logging.getLogger(__name__)

FROM_MODEL_CHECKPOINT = "model_checkpoint"


def _lightning_classes() -> tuple[tuple[type, ...], tuple[type, ...]]:
    """(CheckpointIO classes, Callback classes) of every Lightning package installed: ``lightning`` (imported as
    ``lightning.pytorch``) and ``pytorch_lightning`` check plugins against their own classes, so the plugin
    derives from each one there is and works with whichever the user's Trainer comes from."""
    ios: list[type] = []
    callbacks: list[type] = []
    try:
        from lightning.fabric.plugins import CheckpointIO as LCheckpointIO
        from lightning.pytorch import Callback as LCallback

        ios.append(LCheckpointIO)
        callbacks.append(LCallback)
    except ImportError:
        pass
    try:
        from lightning_fabric.plugins import CheckpointIO as PLCheckpointIO
        from pytorch_lightning import Callback as PLCallback

        ios.append(PLCheckpointIO)
        callbacks.append(PLCallback)
    except ImportError:
        pass
    if not ios:
        raise ImportError("ckptstore.integrations.lightning needs PyTorch Lightning: pip install lightning")
    return tuple(ios), tuple(callbacks)


_IOS, _CALLBACKS = _lightning_classes()


def _torch_io() -> Any:
    """Lightning's own file plugin, for real ``.ckpt`` files (a resume from a checkpoint made before the store)."""
    for module in ("lightning.fabric.plugins", "lightning_fabric.plugins"):
        try:
            return __import__(module, fromlist=["TorchCheckpointIO"]).TorchCheckpointIO()
        except ImportError:
            continue
    raise ImportError("no Lightning TorchCheckpointIO")  # unreachable: _lightning_classes found one


def _norm(path: str | os.PathLike[str]) -> str:
    return os.path.abspath(os.fspath(path))


class StoreCheckpointIO(*_IOS, *_CALLBACKS):  # type: ignore[misc]
    """Lightning's checkpoint plugin backed by a store; see the module docstring.

    `policy`: the run's retention policy. ``"model_checkpoint"`` (the default) sets it from the Trainer's
    ModelCheckpoint callbacks when this object is among the callbacks; a RetentionPolicy sets that one; None
    leaves the run's stored policy as it is. `hf_model`: the attribute path of the transformers model to store as
    ``save_pretrained`` would (default: the only one the LightningModule holds; False: none). `tokenizer` is
    stored beside it. `gc` frees the blobs of pruned checkpoints after each save.
    """

    def __init__(
        self,
        store: Store | str | os.PathLike[str],
        run: str,
        policy: RetentionPolicy | str | None = FROM_MODEL_CHECKPOINT,
        *,
        hf_model: str | bool | None = None,
        tokenizer: Any = None,
        gc: bool = True,
        restore_rng: bool = True,
    ) -> None:
        if not (policy is None or isinstance(policy, RetentionPolicy) or policy == FROM_MODEL_CHECKPOINT):
            raise InvalidArgument(
                f"policy must be a RetentionPolicy, {FROM_MODEL_CHECKPOINT!r} or None, got {policy!r}.",
                hint="e.g. policy=RetentionPolicy(keep_best=3, metric='val_loss', mode='min').",
            )
        self.store = store if isinstance(store, Store) else Store.open(store, create=True)
        self.run = check_run(run)
        self.policy = policy
        if isinstance(policy, RetentionPolicy):
            self.store.set_policy(self.run, policy)
        self.hf_model = hf_model
        self.tokenizer = tokenizer
        self.gc = gc
        self.restore_rng = restore_rng
        self.last_saved: CheckpointInfo | None = None
        self._paths: dict[str, str] = {}  # a path Lightning saved to -> the checkpoint id it became
        self._steps: dict[int, str] = {}  # global step -> id, of saves since the last load
        self._parent: str | None = None  # what training went on from: the checkpoint last loaded or saved
        self._trainer: Any = None
        self._module: Any = None
        self._pending_rng: Any = None
        self._registered = False

    def __repr__(self) -> str:
        return f"StoreCheckpointIO({self.store!r}, {self.run!r})"

    # -- resuming ------------------------------------------------------------------------------------------------
    def resume_ref(self) -> str | None:
        """``RUN:latest`` when the run has a checkpoint to resume from, else None: ``trainer.fit(module,
        ckpt_path=store_io.resume_ref())`` is the same line for the first start and every restart."""
        self.store.refresh()
        return f"{self.run}:latest" if f"{self.run}:latest" in self.store.tags(self.run) else None

    # -- Callback hooks --------------------------------------------------------------------------------------------
    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        self._trainer, self._module = trainer, pl_module
        if stage == "fit" and self.policy == FROM_MODEL_CHECKPOINT and trainer.is_global_zero:
            self._follow_model_checkpoints(trainer)  # one process writes the run's settings

    def state_dict(self) -> dict[str, Any]:
        if not self.restore_rng:
            return {}
        info, tensors = _rng.capture()
        return {"rng": {"info": info, "tensors": tensors}}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # Now, before the fit loop builds the train iterator (its sampler draws from the generators at once), and
        # again after a sanity check, whose validation iterator draws too; a run never interrupted did neither.
        self._pending_rng = state_dict.get("rng") if self.restore_rng else None
        self._restore_rng()

    def on_sanity_check_end(self, trainer: Any, pl_module: Any) -> None:
        self._restore_rng()

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        self._pending_rng = None

    def _restore_rng(self) -> None:
        if self._pending_rng is not None:
            _rng.restore(self._pending_rng["info"], self._pending_rng["tensors"])

    # -- CheckpointIO ----------------------------------------------------------------------------------------------
    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        if "pytorch-lightning_version" not in checkpoint or "global_step" not in checkpoint:
            # Not a training checkpoint (the weights ddp_spawn hands back to the main process): a plain file.
            _torch_io().save_checkpoint(checkpoint, path, storage_options=storage_options)
            return
        key = _norm(path)
        step = int(checkpoint["global_step"])
        if step in self._steps and self._stored(self._steps[step]):
            # A second file of the same step (last.ckpt beside the top-k file, a second ModelCheckpoint): the same
            # weights and optimizer state, so the same stored checkpoint.
            self._paths[key] = self._steps[step]
            return
        self.store.refresh()
        if not self._registered:
            self._register_from(checkpoint)
        name = name_after_rollback(self.store, self.run, step)
        finite, other = split_metrics(self._metrics(checkpoint, key))
        metadata: dict[str, Any] = {"saved_by": "ckptstore.StoreCheckpointIO", "epoch": checkpoint.get("epoch"),
                                    "lightning_path": key,
                                    "lightning_version": checkpoint.get("pytorch-lightning_version")}
        if other:
            metadata["nonfinite_metrics"] = other
        info = save_after(self.store, None, name, self.run, self._parent, step=step, metrics=finite,
                          metadata=metadata, extra_files=checkpoint_files(checkpoint, self._hf_model(), self.tokenizer))
        self._paths[key] = info.id
        self._steps[step] = info.id
        self._parent = info.id
        self.last_saved = info
        if self.gc and self.store.get_policy(self.run) is not None:
            housekeeping_gc(self.store, info)

    def load_checkpoint(self, path: Any, map_location: Any = None, weights_only: bool | None = None) -> dict[str, Any]:
        self._steps.clear()  # training goes on from here: a save of a step stored before is a new attempt
        if isinstance(path, (str, os.PathLike)) and os.path.isfile(path):
            # A Lightning file from before the store: read as Lightning reads it, but never as a full pickle.
            self._parent = None
            return _torch_io().load_checkpoint(path, map_location=map_location, weights_only=True)
        cid = self._resolve(path)
        with self.store.hold(cid):
            checkpoint = read_checkpoint(self.store, cid, map_location, run=self.run)
        self._parent = cid
        return checkpoint

    def remove_checkpoint(self, path: Any) -> None:
        if isinstance(path, (str, os.PathLike)) and os.path.isfile(path):
            _torch_io().remove_checkpoint(path)
            return
        key = _norm(path)
        self.store.refresh()
        cid = self._paths.pop(key, None) or self._by_path(key)
        if cid is None or not self._stored(cid):
            return
        if self.store.get_policy(self.run) is not None:
            # The run's policy decided after the save, over every checkpoint of the run; Lightning's list may
            # have forgotten those made before a resume, so its request is not a reason to delete.
            log.debug("Keeping %s: the run's retention policy decides what is removed", cid)
            return
        if cid in self._paths.values():
            return  # another file Lightning still keeps (last.ckpt) is this checkpoint too
        info = self.store.info(cid)
        if info.tags:  # the run's latest or best, or tagged by someone on purpose
            log.debug("Keeping %s: it is tagged %s", info.name, ", ".join(info.tags))
            return
        self.store.delete(cid)
        if self.gc:
            housekeeping_gc(self.store, info)

    def teardown(self, *args: Any, **kwargs: Any) -> None:
        """Both roles' teardown: the plugin's (no arguments) and the callback's (trainer, module, stage). The
        Trainer and module stay known: a ``trainer.save_checkpoint("final.ckpt")`` after ``fit`` is stored as
        fully as the saves during it."""

    # -- saving ------------------------------------------------------------------------------------------------
    def _hf_model(self) -> Any:
        """The transformers model inside the LightningModule, to store as save_pretrained writes it, or None."""
        if self.hf_model is False or self._module is None:
            return None
        try:
            from transformers import PreTrainedModel
        except ImportError:
            return None
        if isinstance(self.hf_model, str):
            found = self._module.get_submodule(self.hf_model)
            if not isinstance(found, PreTrainedModel):
                raise InvalidArgument(f"hf_model={self.hf_model!r} is a {type(found).__name__}, not a transformers"
                                      " model.", hint="Name the attribute that holds the PreTrainedModel.")
            return found
        outer = [(n, m) for n, m in self._module.named_modules() if isinstance(m, PreTrainedModel)]
        outer = [(n, m) for n, m in outer if not any(n.startswith(f"{o}.") for o, _ in outer if o != n)]
        if len(outer) == 1:
            return outer[0][1]
        if len(outer) > 1:
            log.info("The LightningModule holds %d transformers models (%s); storing its state_dict alone. Pass "
                     "hf_model= to store one as save_pretrained writes it.", len(outer), ", ".join(n for n, _ in outer))
        return None

    def _metrics(self, checkpoint: dict[str, Any], key: str) -> dict[str, Any]:
        """What the Trainer logged when it saved (validation and training metrics); without the Trainer (a
        plugin only), the monitored value ModelCheckpoint ranked this file by."""
        if self._trainer is not None:
            return {k: v for k, v in self._trainer.callback_metrics.items()
                    if isinstance(v, (int, float)) or (isinstance(v, torch.Tensor) and v.numel() == 1)}
        out: dict[str, Any] = {}
        for state in (checkpoint.get("callbacks") or {}).values():
            if isinstance(state, Mapping) and state.get("monitor"):
                score = {_norm(p): v for p, v in (state.get("best_k_models") or {}).items()}.get(key)
                if score is not None:
                    out[state["monitor"]] = score
        return out

    # -- retention -----------------------------------------------------------------------------------------------
    def _follow_model_checkpoints(self, trainer: Any) -> None:
        """Make the run's policy what the Trainer's ModelCheckpoint callbacks ask for."""
        keep_last = 0
        best: tuple[str, str, int] | None = None
        keep_all = False
        for cb in getattr(trainer, "checkpoint_callbacks", []):
            k, monitor = getattr(cb, "save_top_k", None), getattr(cb, "monitor", None)
            if k is None or k == 0:
                continue
            if k < 0:
                keep_all = True
            elif monitor is None:
                keep_last = max(keep_last, k)
            elif best is None:
                best = (monitor, cb.mode, k)
            elif best[0] != monitor:
                log.warning("The store ranks a run by one metric: keeping the best %d by %r, not by %r",
                            best[2], best[0], monitor)
        if best is not None:
            self.store.register_run(self.run, metric=best[0], mode=best[1])
            self._registered = True
        if keep_all or not (keep_last or best):
            self.store.set_policy(self.run, None)
            return
        self.store.set_policy(self.run, RetentionPolicy(
            keep_last=keep_last or None, keep_best=best[2] if best else None,
            metric=best[0] if best else None, mode=best[1] if best else "min",
        ))

    def _register_from(self, checkpoint: dict[str, Any]) -> None:
        """Without the Trainer, ``RUN:best`` follows the first monitored ModelCheckpoint in the checkpoint itself
        (its state key spells out monitor and mode)."""
        self._registered = True
        for state_key, state in (checkpoint.get("callbacks") or {}).items():
            if not (isinstance(state_key, str) and state_key.startswith("ModelCheckpoint{")):
                continue
            try:
                config = ast.literal_eval(state_key[len("ModelCheckpoint"):])
            except (ValueError, SyntaxError):
                continue
            if isinstance(config, dict) and config.get("monitor"):
                self.store.register_run(self.run, metric=config["monitor"], mode=config.get("mode", "min"))
                return

    # -- loading -------------------------------------------------------------------------------------------------
    def _stored(self, cid: str) -> bool:
        try:
            self.store.info(cid)
        except CkptError:
            return False
        return True

    def _by_path(self, key: str) -> str | None:
        """The newest checkpoint of the run saved from Lightning path `key` (another process saved it)."""
        found = [c for c in self.store.list(self.run) if c.metadata.get("lightning_path") == key]
        return max(found, key=lambda c: c.created_at).id if found else None

    def _resolve(self, path: Any) -> str:
        text = os.fspath(path) if isinstance(path, (str, os.PathLike)) else str(path)
        self.store.refresh()
        key = _norm(text)
        cid = self._paths.get(key) or self._by_path(key)
        if cid is not None and self._stored(cid):
            return cid
        try:
            return self.store.resolve(text)
        except CheckpointNotFound:
            if os.sep in text or text.endswith(".ckpt"):
                raise CheckpointNotFound(text, (f"{self.run}:latest", f"{self.run}:best"), run=self.run,
                                         kind="checkpoint (not a file, nor one this run saved)") from None
            raise
