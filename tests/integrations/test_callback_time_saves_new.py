"""CheckpointCallback(save_every_minutes=): the decision under a fake clock with Trainer's own state objects (exact),
and real Trainer runs that save by time where save_steps would not."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import transformers
from test_transformers_callback import make_trainer
from transformers import TrainerControl, TrainerState, TrainingArguments

from ckptstore.errors import InvalidArgument
from ckptstore.integrations.transformers import CheckpointCallback


class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_callback_sets_should_save_when_the_interval_has_passed(store, tmp_path) -> None:
    clock = FakeClock()
    callback = CheckpointCallback(store, "r", save_every_minutes=15, clock=clock)
    args = TrainingArguments(str(tmp_path / "out"), use_cpu=True, report_to="none")
    state, control = TrainerState(), TrainerControl()
    clock.t = 500.0  # loading the model before train() does not count
    callback.on_train_begin(args, state, control)

    def step_end(step: int, at_minute: float) -> bool:
        clock.t = 500.0 + 60 * at_minute
        state.global_step = step
        control.should_save = False  # Trainer resets it at each step begin
        callback.on_step_end(args, state, control)
        return control.should_save

    assert [step_end(1, 5), step_end(2, 14.9), step_end(3, 15)] == [False, False, True]

    # Trainer saves and calls on_save: the interval starts again from there.
    folder = tmp_path / "out" / "checkpoint-3"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    callback.on_save(args, state, control)
    assert [c.step for c in store.list("r")] == [3]
    assert [step_end(4, 29.9), step_end(5, 30)] == [False, True]


def test_callback_without_minutes_leaves_should_save_alone(store, tmp_path) -> None:
    clock = FakeClock()
    callback = CheckpointCallback(store, "r", clock=clock)
    args = TrainingArguments(str(tmp_path / "out"), use_cpu=True, report_to="none")
    state, control = TrainerState(), TrainerControl()
    callback.on_train_begin(args, state, control)
    clock.t = 10**9
    callback.on_step_end(args, state, control)
    assert control.should_save is False


@pytest.mark.parametrize("bad", [0, -5, "15", True, float("inf")])
def test_callback_refuses_a_bad_interval(store, bad) -> None:
    with pytest.raises(InvalidArgument, match="save_every_minutes"):
        CheckpointCallback(store, "r", save_every_minutes=bad)


class SlowStep(transformers.TrainerCallback):
    """Makes one step take `seconds` longer, as a slow batch or a stall would."""

    def __init__(self, step: int, seconds: float) -> None:
        self.step, self.seconds = step, seconds

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            time.sleep(self.seconds)


def test_real_trainer_saves_by_time_when_save_steps_would_not(store, tmp_path: Path) -> None:
    # save_strategy="no": every checkpoint in the store was made because the interval passed. The slow step comes
    # before the callback in the list, so its time is in the interval the callback checks at that step's end.
    # Margins of seconds: a tiny BERT step takes well under one even on a loaded machine.
    callback = CheckpointCallback(store, "r", save_every_minutes=5.0 / 60)
    trainer = make_trainer(tmp_path / "out", [SlowStep(3, 5.5), callback], max_steps=4, save_strategy="no",
                           eval_strategy="no")
    trainer.train()
    saved = store.list("r")
    assert [c.step for c in saved] == [3], [(e.get("step"), e.get("train_runtime")) for e in trainer.state.log_history]
    assert saved[0].metadata["trainer_folder"] == "checkpoint-3"
    names = {f.path for f in store.manifest("r/step-3").files}
    assert {"model.safetensors", "optimizer.pt", "trainer_state.json"} <= names


def test_real_trainer_with_a_tiny_interval_saves_every_step(store, tmp_path: Path) -> None:
    callback = CheckpointCallback(store, "r", save_every_minutes=1e-9, keep_local=1)
    trainer = make_trainer(tmp_path / "out", [callback], max_steps=3, save_strategy="no", eval_strategy="no")
    trainer.train()
    assert sorted(c.step for c in store.list("r")) == [1, 2, 3]
    assert sorted(p.name for p in (tmp_path / "out").glob("checkpoint-*")) == ["checkpoint-3"]
