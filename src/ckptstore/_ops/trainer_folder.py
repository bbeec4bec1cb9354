"""What a Trainer checkpoint folder says about itself, taken the same way by `save` and `import`.

trainer_state.json gives the step, the eval metrics logged at that step and a few hyperparameters; JSON argument
files beside it give the others. `training_args.bin` holds the same arguments but is a pickle, so it is never
opened: only JSON is read here.
"""

from __future__ import annotations

import json
import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._core.names import run_of
from ..errors import StepMismatchWarning

if TYPE_CHECKING:
    from .._repo.repository import Repository

# The TrainerState fields that are settings of the run rather than its progress.
STATE_HYPERPARAMETERS = ("train_batch_size", "num_train_epochs", "max_steps", "logging_steps", "eval_steps",
                         "save_steps")
# JSON files scripts write beside a checkpoint with the arguments they trained with (TrainingArguments.to_json_string,
# argparse dumps, hparams files). Read only when small: an args file is a page of settings, not data.
_ARGS_FILE = re.compile(r"(?:.*[_-])?(?:args|arguments|hparams|hyperparameters)\.json")
_MAX_ARGS_BYTES = 1 << 20
# Credentials a script may have dumped with its arguments: never copied into metadata that `ckpt show` prints.
_SECRET_KEY = re.compile(r"token|secret|password|api_key|credential", re.IGNORECASE)


def _read_json(path: Path, limit: int | None = None) -> dict[str, Any] | None:
    try:
        if limit is not None and path.stat().st_size > limit:
            return None
        raw = json.loads(path.read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    return raw if isinstance(raw, dict) else None


def _plain(value: Any) -> bool:
    """A value worth searching for: a JSON scalar or a list of them (nested configs stay in their files)."""
    if isinstance(value, (str, int, float, bool)) or value is None:
        return True
    return isinstance(value, list) and all(isinstance(v, (str, int, float, bool)) or v is None for v in value)


def hyperparameters(folder: Path) -> dict[str, Any]:
    """The run's settings recorded in `folder`: the keys of JSON args files (sorted by file name), then
    trainer_state.json's batch size, epochs and logging/eval/save steps and a search trial's parameters, which win
    (they are what Trainer actually ran with). Secrets and nested values are left out."""
    out: dict[str, Any] = {}
    try:
        args_files = sorted(p for p in folder.iterdir() if p.is_file() and _ARGS_FILE.fullmatch(p.name))
    except OSError:
        args_files = []
    for path in args_files:
        out.update(_read_json(path, _MAX_ARGS_BYTES) or {})
    state = _read_json(folder / "trainer_state.json")
    if state is not None:
        trial = state.get("trial_params")
        if isinstance(trial, dict):
            out.update(trial)
        out.update({k: state[k] for k in STATE_HYPERPARAMETERS if k in state})
    return {k: v for k, v in out.items() if isinstance(k, str) and not _SECRET_KEY.search(k) and _plain(v)}


def with_hyperparameters(folder: Path, metadata: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """`metadata` plus the folder's hyperparameters under "hyperparameters" (a key the caller set is kept)."""
    found = hyperparameters(folder)
    if not found or (metadata and "hyperparameters" in metadata):
        return dict(metadata) if metadata is not None else None
    return {**(metadata or {}), "hyperparameters": found}


def previous_checkpoint(repo: "Repository", run: str, step: int | None) -> str | None:
    """The id of the run's checkpoint with the highest step below `step` (the newest of equal steps): the one
    training went on from, as an import of a whole Trainer output folder links them."""
    if step is None:
        return None
    earlier = [c for c in repo.catalog.infos(run=run) if c.step is not None and c.step < step]
    if not earlier:
        return None
    return max(earlier, key=lambda c: (c.step, c.created_at)).id


def folder_defaults(
    repo: "Repository",
    folder: Path,
    name: str,
    *,
    step: int | None,
    name_step: int | None,
    metrics: Mapping[str, float] | None,
    metadata: Mapping[str, Any] | None,
    parent_id: str | None,
) -> tuple[int | None, Mapping[str, float] | None, Mapping[str, Any] | None, str | None]:
    """What `save` of a Trainer checkpoint folder takes from it when not told: (step, metrics, metadata, parent).

    The step is the one given, else the name's, else trainer_state's global_step; a name whose step disagrees with
    global_step is saved as asked but warned about. The eval metrics logged at global_step describe the folder's
    weights, whatever it is named, and the ones given override or extend them. The parent is the run's previous
    checkpoint by step. A folder without trainer_state.json is not a Trainer checkpoint: nothing is added."""
    from .importing import trainer_state_facts

    state_step, state_metrics = trainer_state_facts(folder)
    if state_step is None:
        return step, metrics, metadata, parent_id
    if name_step is not None and name_step != state_step:
        warnings.warn(
            f"{name!r} is named for step {name_step}, but {folder.name}/trainer_state.json says global_step"
            f" {state_step}; stored with step {step} and the metrics logged at"
            f" step {state_step}.",
            StepMismatchWarning,
            stacklevel=3,
        )
    if step is None:
        step = state_step
    merged = {**state_metrics, **(metrics or {})}
    if parent_id is None:
        parent_id = previous_checkpoint(repo, run_of(name), step)
    return step, merged, with_hyperparameters(folder, metadata), parent_id
