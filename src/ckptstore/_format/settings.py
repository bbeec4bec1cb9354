"""A run's settings document, ``policies/<run>.json``: its retention policy and the metric ``RUN:best`` follows::

    {"format": 1, "policy": {"keep_last": 3, ...} or null, "best": {"metric": "eval_loss", "mode": "min"} or null}
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

from ..errors import PolicyError
from ..policies import RetentionPolicy, StoragePolicy

SETTINGS_FORMAT = 1
DEFAULT_BEST_METRIC = "eval_loss"


@dataclass(frozen=True)
class RunSettings:
    """What the store remembers about a run: its retention policy and the metric ``RUN:best`` follows."""

    policy: RetentionPolicy | None = None
    best_metric: str | None = None
    best_mode: Literal["min", "max"] = "min"
    storage: StoragePolicy | None = None  # packing and slimming (written only when set: older readers ignore it)

    @property
    def best(self) -> tuple[str, str]:
        """(metric, mode) for ``RUN:best``: the one set for the run, else the policy's, else eval_loss (lower)."""
        if self.best_metric:
            return self.best_metric, self.best_mode
        if self.policy is not None and self.policy.metric:
            return self.policy.metric, self.policy.mode
        return DEFAULT_BEST_METRIC, "min"

    def to_json(self) -> dict[str, Any]:
        return {
            "format": SETTINGS_FORMAT,
            "policy": self.policy.to_json() if self.policy is not None else None,
            "best": {"metric": self.best_metric, "mode": self.best_mode} if self.best_metric else None,
            **({"storage": self.storage.to_json()} if self.storage is not None else {}),
        }

    @classmethod
    def from_json(cls, data: Any, *, path: str) -> "RunSettings":
        if not isinstance(data, dict) or data.get("format") != SETTINGS_FORMAT:
            raise PolicyError(
                f"Run settings {path} are not format {SETTINGS_FORMAT} settings.",
                hint="A newer ckptstore may have written them: upgrade, or set the policy again with 'ckpt policy'.",
            )
        policy = RetentionPolicy.from_json(data["policy"]) if data.get("policy") is not None else None
        best = data.get("best") or {}
        storage = StoragePolicy.from_json(data["storage"]) if data.get("storage") is not None else None
        return cls(policy, best.get("metric"), best.get("mode", "min"), storage)

    def to_bytes(self) -> bytes:
        return (json.dumps(self.to_json(), indent=2) + "\n").encode()

    @classmethod
    def from_bytes(cls, raw: bytes, *, path: str, run: str) -> "RunSettings":
        try:
            data = json.loads(raw)
        except ValueError:
            raise PolicyError(
                f"Run settings {path} are not valid JSON.",
                hint=f"Set the policy again: 'ckpt policy {run} --keep-last N'.",
            ) from None
        return cls.from_json(data, path=path)
