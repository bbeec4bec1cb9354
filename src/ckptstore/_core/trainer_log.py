"""What Trainer records about a run, read without I/O: its checkpoint folder names and the metrics it logged."""

from __future__ import annotations

import math
import re
from typing import Any

CHECKPOINT_DIR = re.compile(r"checkpoint-(\d+)")
TRAINER_STATE = "trainer_state.json"  # what Trainer writes into checkpoint-N
MANAGER_STATE = "training_state.json"  # what CheckpointManager stores
_TIMING_SUFFIXES = ("_runtime", "_per_second", "_flos")


def metrics_at_step(log_history: list[dict[str, Any]] | None, step: int) -> dict[str, Any]:
    """The eval metrics (and training loss) Trainer logged at `step`, as logged. Metrics from an earlier
    evaluation are not this checkpoint's: attaching them could make a worse checkpoint look best. Speed figures
    (runtime, samples per second, flos) are not model quality and are left out."""
    out: dict[str, Any] = {}
    for entry in log_history or ():
        if not isinstance(entry, dict) or entry.get("step") != step:
            continue
        for key, value in entry.items():
            if (key.startswith("eval_") and not key.endswith(_TIMING_SUFFIXES)) or key == "loss":
                out[key] = value
    return out


def eval_metrics(state: dict[str, Any] | None, step: int) -> dict[str, float]:
    """The finite eval metrics of trainer_state.json's log_history at `step`, as import records them."""
    return {
        key: float(value)
        for key, value in metrics_at_step((state or {}).get("log_history"), step).items()
        if key != "loss" and isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    }
