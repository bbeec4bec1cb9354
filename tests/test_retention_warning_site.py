"""A policy that cannot be applied after a save is a RetentionWarning, not a failed save, for a plain save and a
staged one alike; and the warning names the line of the caller's code that saved (where a user looks), not a line
inside ckptstore."""

from __future__ import annotations

import json

import pytest
import torch

from ckptstore.errors import RetentionWarning

HERE = __file__


def _damage_policy(store, run: str) -> None:
    (store.root / "policies" / f"{run}.json").write_text(
        json.dumps({"format": 1, "policy": {"keep_last": 2, "keep_oldest": 1}, "best": None}))


@pytest.mark.parametrize("how", ["save", "commit_staged"])
def test_the_retention_warning_points_at_the_callers_save(store, how):
    store.save(torch.nn.Linear(4, 4), "r/step-1")
    _damage_policy(store, "r")
    with pytest.warns(Warning) as caught:
        if how == "save":
            report = store.save(torch.nn.Linear(4, 4), "r/step-2")
        else:
            with store.staging():
                entries, written = store.stage_files({"w.safetensors": {"w": torch.ones(4)}})
                report = store.commit_staged("r/step-2", entries, staged_bytes=written)
    warned = [w for w in caught if issubclass(w.category, RetentionWarning)
              and "applying the run's retention policy failed" in str(w.message)]
    assert len(warned) == 1 and "keep_oldest" in str(warned[0].message)
    assert "'ckpt prune r'" in str(warned[0].message)
    assert warned[0].filename == HERE
    assert report.name == "r/step-2" and store.has("r/step-2")
