"""Time-based saving for plain loops: SaveSchedule's decisions under a fake clock (exact), and CheckpointManager's
should_save / maybe_save on a real store with a real tiny model, the clock injected."""

from __future__ import annotations

import pytest
import torch

from ckptstore import CheckpointManager
from ckptstore._training.schedule import SaveSchedule
from ckptstore.errors import InvalidArgument


class FakeClock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


def test_schedule_by_time_counts_from_the_start_and_then_from_each_save() -> None:
    clock = FakeClock()
    s = SaveSchedule(every_seconds=900, clock=clock)
    clock.advance(899)
    assert s.due(1) is None
    clock.advance(1)
    assert s.due(2) == "15 minutes since the last save (every 15 minutes)"
    s.saved()
    clock.advance(600)
    assert s.due(3) is None
    s.saved()  # a save made for another reason restarts the interval too
    clock.advance(899)
    assert s.due(4) is None
    clock.advance(2)
    assert s.due(5) is not None


def test_schedule_by_steps_and_time_whichever_comes_first() -> None:
    clock = FakeClock()
    s = SaveSchedule(every_steps=100, every_seconds=60, clock=clock)
    decisions = []
    for step in range(1, 301):
        clock.advance(0.5 if step <= 200 else 1.0)  # steps slow down after step 200
        if s.due(step):
            decisions.append(step)
            s.saved()
    # 0.5 s a step: 60 s are 120 steps, so step 100 comes first; from step 200 on, 60 s pass every 60 steps.
    assert decisions == [100, 200, 260, 300]


def test_schedule_steps_alone_never_looks_at_the_clock() -> None:
    clock = FakeClock()
    s = SaveSchedule(every_steps=10, clock=clock)
    clock.advance(10**9)
    assert [step for step in range(31) if s.due(step)] == [10, 20, 30]
    assert not SaveSchedule(clock=clock).enabled


@pytest.mark.parametrize(("steps", "seconds", "match"), [
    (0, None, "save_every_steps must be more than 0"),
    (1.5, None, "save_every_steps must be a whole number"),
    (True, None, "save_every_steps must be a whole number"),
    (None, -1, "save_every_seconds must be more than 0"),
    (None, float("nan"), "save_every_seconds must be more than 0"),
    (None, "15m", "save_every_seconds must be a number"),
])
def test_schedule_refuses_bad_intervals(steps, seconds, match) -> None:
    with pytest.raises(InvalidArgument, match=match):
        SaveSchedule(steps, seconds)


def _training():
    from conftest import make_tiny_bert

    model = make_tiny_bert(0, "BertForMaskedLM").train()
    return model, torch.optim.AdamW(model.parameters(), lr=1e-3)


def _step(model, optimizer) -> None:
    ids = torch.randint(1, 99, (2, 8))
    model(input_ids=ids, labels=ids).loss.backward()
    optimizer.step()
    optimizer.zero_grad()


def test_manager_maybe_save_saves_by_steps_and_by_time(store) -> None:
    clock = FakeClock()
    manager = CheckpointManager(store, "r", save_every_steps=4, save_every_seconds=30, clock=clock)
    model, optimizer = _training()
    evaluated = []
    for step in range(1, 11):
        _step(model, optimizer)
        clock.advance(30 if step == 6 else 2)  # step 6 is slow: 32 s since the save at step 4
        manager.maybe_save(step, model, optimizer, metrics=lambda s=step: evaluated.append(s) or {"eval_loss": 1.0})
    assert sorted(c.step for c in store.list("r")) == [4, 6, 8]
    assert evaluated == [4, 6, 8]  # the metrics function only runs for a save
    assert store.info("r/step-6").metrics == {"eval_loss": 1.0}


def test_manager_should_save_restarts_after_an_explicit_save_and_a_restore(store) -> None:
    clock = FakeClock()
    manager = CheckpointManager(store, "r", save_every_seconds=60, clock=clock)
    model, optimizer = _training()
    clock.advance(59)
    assert not manager.should_save(1)
    manager.save(1, model, optimizer)  # the user's own save, outside the schedule
    clock.advance(59)
    assert not manager.should_save(2)
    clock.advance(1)
    assert manager.should_save(2)
    clock.advance(1000)
    manager.restore(model, optimizer)  # nothing trained since a restore is at risk
    assert not manager.should_save(2)
    assert manager.maybe_save(2, model, optimizer) is None
    assert [c.step for c in store.list("r")] == [1]


def test_manager_maybe_save_with_async_save_commits_in_the_background(store) -> None:
    clock = FakeClock()
    with CheckpointManager(store, "r", async_save=True, save_every_seconds=10, clock=clock) as manager:
        model, optimizer = _training()
        for step in range(1, 5):
            _step(model, optimizer)
            clock.advance(6)
            assert manager.maybe_save(step, model, optimizer) is None
        manager.wait()
    assert sorted(c.step for c in store.list("r")) == [2, 4]


def test_manager_maybe_save_without_a_schedule_is_refused(store) -> None:
    manager = CheckpointManager(store, "r")
    model, optimizer = _training()
    with pytest.raises(InvalidArgument, match="maybe_save needs a schedule"):
        manager.maybe_save(1, model, optimizer)
    with pytest.raises(InvalidArgument, match="save_every_seconds must be more than 0"):
        CheckpointManager(store, "r", save_every_seconds=0)
