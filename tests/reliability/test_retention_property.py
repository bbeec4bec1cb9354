"""Retention on a real store against a simple oracle (hypothesis): whatever the steps, metrics, save order and
tags, `prune` never removes the latest checkpoint, the best K by the metric or a tagged one, and "the last N"
means the N highest steps as numbers (step-1000 after step-200), never as names."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ckptstore import Store
from ckptstore.policies import RetentionPolicy


@st.composite
def runs(draw):
    # Steps that sort differently as text and as numbers (9 < 10 < 100 < 1000), saved in a random order.
    steps = draw(st.lists(st.sampled_from([1, 2, 9, 10, 11, 99, 100, 101, 200, 999, 1000, 1001, 5000, 10000]),
                          min_size=1, max_size=9, unique=True))
    order = draw(st.permutations(steps))
    losses = draw(st.lists(st.floats(0.0, 10.0, allow_nan=False), min_size=len(steps), max_size=len(steps),
                           unique=True))
    tagged = draw(st.sets(st.sampled_from(steps), max_size=2))
    keep_last = draw(st.integers(1, 4))
    keep_best = draw(st.integers(0, 2))
    mode = draw(st.sampled_from(["min", "max"]))
    return order, dict(zip(steps, losses)), tagged, keep_last, keep_best, mode


def oracle(loss: dict[int, float], tagged: set[int], keep_last: int, keep_best: int, mode: str) -> set[int]:
    by_step = sorted(loss)
    ranked = sorted(loss, key=lambda s: loss[s], reverse=(mode == "max"))
    run_best = min(loss, key=lambda s: loss[s])  # what r:best follows (eval_loss, lower is better): never removed
    return {by_step[-1], run_best} | set(by_step[-keep_last:]) | set(ranked[:keep_best]) | tagged


def test_prune_keeps_what_the_oracle_keeps(scale, figure):
    examples = scale.pick(25, 300)

    @settings(max_examples=examples, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(runs())
    def check(case):
        _prune_and_compare(*case)

    check()
    figure("retention property", f"{examples} random runs (steps, save order, metrics, tags, policies) pruned on a"
           " real store: kept set equal to the oracle's every time")


def _prune_and_compare(order, loss, tagged, keep_last, keep_best, mode) -> None:
    root = Path(tempfile.mkdtemp(prefix="ckpt-retention-"))
    try:
        with Store.init(root / "store") as store:
            for step in order:
                store.save(None, f"r/step-{step}", step=step, metrics={"eval_loss": loss[step]},
                           extra_files={"config.json": b'{"step": %d}' % step})
            for step in tagged:
                store.tag(f"r/step-{step}", f"keep-{step}")
            policy = RetentionPolicy(keep_last=keep_last, keep_best=keep_best or None, metric="eval_loss", mode=mode)
            result = store.prune("r", policy)
            kept = {c.step for c in store.list("r")}
            want = oracle(loss, tagged, keep_last, keep_best, mode)
            assert kept == want, (sorted(kept), sorted(want))
            assert {d.checkpoint.step for d in result.plan.remove} == set(loss) - want
            assert store.resolve("r:latest") == store.resolve(f"r/step-{max(loss)}")
            store.gc()
            assert store.verify().ok
    finally:
        shutil.rmtree(root, ignore_errors=True)


# -- keep-within (restic's rule) against its own oracle ------------------------------------------------------------

_T0 = 1_772_409_600.0  # 2026-03-02 00:00 UTC
_WITHIN = {"30m": 1800, "2h": 7200, "1d": 86400}


@st.composite
def timed_runs(draw):
    steps = draw(st.lists(st.sampled_from([1, 2, 9, 10, 11, 99, 100, 1000, 5000]), min_size=1, max_size=8, unique=True))
    # Minutes after _T0, unrelated to the step order: a resumed run saves low steps late.
    minutes = draw(st.lists(st.integers(0, 3 * 24 * 60), min_size=len(steps), max_size=len(steps), unique=True))
    within = draw(st.sampled_from([None, *_WITHIN]))
    hourly = draw(st.sampled_from([None, "3h", "1d"]))
    keep_last = draw(st.integers(1, 3))
    return dict(zip(steps, (_T0 + 60 * m for m in minutes))), within, hourly, keep_last


def within_oracle(made: dict[int, float], within: str | None, hourly: str | None, keep_last: int) -> set[int]:
    newest = max(made.values())
    keep = set(sorted(made)[-keep_last:])  # the last N by step, which includes the latest
    if within:
        keep |= {s for s, t in made.items() if t > newest - _WITHIN[within]}
    if hourly:
        window = {"3h": 3 * 3600, "1d": 86400}[hourly]
        newest_of_hour: dict[int, int] = {}
        for s, t in sorted(made.items(), key=lambda st_: st_[1]):
            if t > newest - window:
                newest_of_hour[int(t // 3600)] = s
        keep |= set(newest_of_hour.values())
    return keep


def test_prune_keep_within_keeps_what_the_oracle_keeps(scale, figure):
    examples = scale.pick(25, 300)

    @settings(max_examples=examples, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(timed_runs())
    def check(case):
        _prune_timed_and_compare(*case)

    check()
    figure("keep-within property", f"{examples} random runs (save times, keep-within and hourly thinning) pruned on"
           " a real store: kept set equal to the oracle's every time")


def _prune_timed_and_compare(made, within, hourly, keep_last) -> None:
    import types

    import ckptstore._ops.save as save_mod

    root = Path(tempfile.mkdtemp(prefix="ckpt-within-"))
    real_time = save_mod.time
    try:
        with Store.init(root / "store") as store:
            for step, when in made.items():
                # created_at comes from save.py's time.time(): the save is stamped with the drawn time.
                save_mod.time = types.SimpleNamespace(time=lambda when=when: when)
                try:
                    store.save(None, f"r/step-{step}", step=step, extra_files={"config.json": b'{"step": %d}' % step})
                finally:
                    save_mod.time = real_time
            policy = RetentionPolicy(keep_last=keep_last, keep_within=within, keep_within_hourly=hourly)
            store.prune("r", policy)
            kept = {c.step for c in store.list("r")}
            want = within_oracle(made, within, hourly, keep_last)
            assert kept == want, (sorted(kept), sorted(want), made, within, hourly)
    finally:
        save_mod.time = real_time
        shutil.rmtree(root, ignore_errors=True)
