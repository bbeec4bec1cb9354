"""Retention policies, tested the way they are meant to be used: on hand-made lists, with no store and no disk.

The property test at the end checks the plan against an oracle written here from the issue's wording, not from
the implementation: what must never be removed, and what ``keep_last=N`` alone keeps.
"""

from __future__ import annotations

import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ckptstore._core.info import CheckpointInfo
from ckptstore.errors import CkptError, PolicyError
from ckptstore.policies import (
    DEFAULT_PROTECTED_TAGS,
    AnyOf,
    BestN,
    Decision,
    EveryNSteps,
    LatestN,
    OnPurpose,
    Policy,
    RetentionPlan,
    RetentionPolicy,
    Tagged,
)

_NO_LOSS = object()


def ck(
    step: int | None,
    *,
    t: float | None = None,
    loss: Any = _NO_LOSS,
    tags: tuple[str, ...] = (),
    size: int = 100,
    name: str | None = None,
    run: str = "bert",
    **metrics: float,
) -> CheckpointInfo:
    """A checkpoint of `run`; created_at defaults to the step so that both orders agree unless a test says not."""
    if loss is not _NO_LOSS:
        metrics["eval_loss"] = loss
    label = name or (f"{run}/step-{step}" if step is not None else f"{run}/t-{t}")
    return CheckpointInfo(
        id=f"id-{label}",
        name=label,
        run=run,
        step=step,
        created_at=float(t if t is not None else (step or 0)),
        tags=tags,
        metrics=metrics,
        logical_bytes=size,
    )


def names(decisions: tuple[Decision, ...]) -> list[str]:
    return [d.checkpoint.name for d in decisions]


def kept_names(policy: Policy, checkpoints: list[CheckpointInfo]) -> set[str]:
    by_id = {c.id: c.name for c in checkpoints}
    return {by_id[i] for i in policy.reasons(checkpoints)}


# ---------------------------------------------------------------------------------------------------------------
# LatestN


def test_latest_n_orders_steps_numerically_not_lexically() -> None:
    # Given in name order, which is the trap: "step-1000" < "step-200" < "step-30" as strings.
    cps = sorted([ck(30), ck(200), ck(1000), ck(150)], key=lambda c: c.name)
    assert kept_names(LatestN(2), cps) == {"bert/step-1000", "bert/step-200"}
    assert LatestN(2).reasons(cps)["id-bert/step-1000"] == ["among the last 2"]


def test_latest_n_breaks_step_ties_by_created_at() -> None:
    cps = [ck(500, t=10, name="a"), ck(500, t=20, name="b"), ck(400, t=30, name="c")]
    assert kept_names(LatestN(1), cps) == {"b"}


def test_latest_n_puts_checkpoints_without_step_first_ordered_by_created_at() -> None:
    cps = [ck(None, t=900, name="manual-late"), ck(None, t=5, name="manual-early"), ck(100, t=1)]
    assert kept_names(LatestN(1), cps) == {"bert/step-100"}
    assert kept_names(LatestN(2), cps) == {"bert/step-100", "manual-late"}
    only_unnumbered = [ck(None, t=3, name="x"), ck(None, t=7, name="y")]
    assert kept_names(LatestN(1), only_unnumbered) == {"y"}


def test_latest_n_edge_sizes_and_words() -> None:
    cps = [ck(1), ck(2)]
    assert LatestN(0).reasons(cps) == {}
    assert kept_names(LatestN(10), cps) == {"bert/step-1", "bert/step-2"}
    assert str(LatestN(3)) == "the last 3"
    assert str(LatestN(1)) == "the latest"
    assert LatestN(3).why_not(ck(1)) == "not among the last 3"
    assert LatestN(1).why_not(ck(1)) == "not the latest"


# ---------------------------------------------------------------------------------------------------------------
# BestN


def test_best_n_min_and_max() -> None:
    cps = [ck(1, loss=0.5, acc=0.7), ck(2, loss=0.2, acc=0.9), ck(3, loss=0.3, acc=0.8), ck(4, loss=0.9, acc=0.1)]
    assert kept_names(BestN(2, "eval_loss", "min"), cps) == {"bert/step-2", "bert/step-3"}
    assert kept_names(BestN(2, "acc", "max"), cps) == {"bert/step-2", "bert/step-3"}
    assert kept_names(BestN(1, "acc", "min"), cps) == {"bert/step-4"}
    assert BestN(2).reasons(cps)["id-bert/step-2"] == ["among the best 2 by eval_loss (eval_loss=0.2)"]


def test_best_n_never_takes_a_checkpoint_without_the_metric() -> None:
    cps = [ck(1), ck(2, loss=0.4), ck(3, loss=float("nan")), ck(4, loss="n/a")]
    assert kept_names(BestN(3), cps) == {"bert/step-2"}
    assert BestN(3).why_not(ck(1)) == "not among the best 3 by eval_loss (it has no eval_loss)"
    assert BestN(3).why_not(ck(5, loss=9.0)) == "not among the best 3 by eval_loss"
    assert BestN(1).why_not(ck(5, loss=9.0)) == "not the best by eval_loss"


def test_best_n_ties_go_to_the_checkpoint_that_reached_the_value_first() -> None:
    # As Trainer's best_model_checkpoint: only a strict improvement moves it.
    cps = [ck(100, loss=0.3), ck(300, loss=0.3), ck(200, loss=0.3)]
    assert kept_names(BestN(1), cps) == {"bert/step-100"}
    assert kept_names(BestN(2), cps) == {"bert/step-100", "bert/step-200"}


def test_mode_defaults_as_trainers_greater_is_better() -> None:
    """min for a metric ending in 'loss', max for any other (accuracy, f1): keeping the 'best' by lowest accuracy
    would delete the checkpoints a user most wants."""
    assert RetentionPolicy(keep_best=1).mode == "min"
    assert RetentionPolicy(keep_best=1, metric="eval_accuracy").mode == "max"
    assert RetentionPolicy(keep_best=1, metric="eval_accuracy", mode="min").mode == "min"
    assert RetentionPolicy.from_json({"keep_best": 2, "metric": "f1"}).mode == "max"


def test_best_n_words() -> None:
    assert str(BestN(2, "eval_loss", "min")) == "the best 2 by eval_loss (lower is better)"
    assert str(BestN(1, "accuracy", "max")) == "the best by accuracy (higher is better)"


# ---------------------------------------------------------------------------------------------------------------
# EveryNSteps, Tagged, AnyOf


def test_every_n_steps_keeps_multiples_only() -> None:
    cps = [ck(0), ck(500), ck(1000), ck(1500), ck(2000), ck(None, t=3, name="manual")]
    assert kept_names(EveryNSteps(1000), cps) == {"bert/step-0", "bert/step-1000", "bert/step-2000"}
    assert EveryNSteps(1000).reasons(cps)["id-bert/step-2000"] == ["step 2000 is a multiple of 1000"]
    assert EveryNSteps(1000).why_not(ck(1500)) == "step 1500 is not a multiple of 1000"
    assert EveryNSteps(1000).why_not(cps[-1]) == "has no step, so it is not on the every-1000-steps schedule"
    assert str(EveryNSteps(1000)) == "every 1000 steps"
    assert str(EveryNSteps(1)) == "every step"


def test_tagged_keeps_user_tags_and_ignores_store_managed_ones() -> None:
    cps = [ck(1, tags=("latest",)), ck(2, tags=("best", "v1.0.0", "prod")), ck(3, tags=("best",)), ck(4)]
    assert Tagged().reasons(cps) == {"id-bert/step-2": ["tagged v1.0.0, prod"]}
    assert Tagged(frozenset()).reasons(cps).keys() == {"id-bert/step-1", "id-bert/step-2", "id-bert/step-3"}
    assert Tagged().ignore_tags == DEFAULT_PROTECTED_TAGS == frozenset({"latest", "best"})
    assert str(Tagged()) == "every checkpoint with a user tag"


def test_any_of_is_the_union_with_every_reason() -> None:
    cps = [ck(200, loss=0.1), ck(1000, loss=0.5), ck(1100, loss=0.6), ck(1200, loss=0.7)]
    policy = AnyOf(LatestN(1), BestN(1), EveryNSteps(1000))
    assert policy.reasons(cps) == {
        "id-bert/step-1200": ["among the latest"],
        "id-bert/step-200": ["among the best by eval_loss (eval_loss=0.1)"],
        "id-bert/step-1000": ["step 1000 is a multiple of 1000"],
    }
    assert policy.why_not(cps[2]) == "not the latest, not the best by eval_loss, step 1100 is not a multiple of 1000"
    assert str(policy) == "the latest, the best by eval_loss (lower is better), every 1000 steps"
    # Nesting and repeats do not duplicate reasons.
    assert AnyOf(policy, LatestN(1)).reasons(cps)["id-bert/step-1200"] == ["among the latest"]
    assert AnyOf().reasons(cps) == {}
    assert str(AnyOf()) == "nothing"


def test_any_of_refuses_what_is_not_a_policy() -> None:
    with pytest.raises(PolicyError, match="AnyOf takes policies"):
        AnyOf(LatestN(1), 3)  # type: ignore[arg-type]


def test_policies_are_frozen_and_hashable() -> None:
    p = AnyOf(LatestN(3), BestN(2), EveryNSteps(10), Tagged())
    assert hash(p) == hash(AnyOf(LatestN(3), BestN(2), EveryNSteps(10), Tagged()))
    with pytest.raises(AttributeError):
        LatestN(3).n = 4  # type: ignore[misc]


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: LatestN(-1), "n must be at least 0"),
        (lambda: LatestN(2.5), "n must be a whole number"),
        (lambda: LatestN(True), "n must be a whole number"),
        (lambda: BestN(-2), "n must be at least 0"),
        (lambda: BestN(2, "eval_loss", "lowest"), "mode must be 'min' or 'max'"),
        (lambda: BestN(2, ""), "needs a metric name"),
        (lambda: EveryNSteps(0), "n must be at least 1"),
        (lambda: Tagged("latest"), "must be a set of tags"),  # type: ignore[arg-type]
    ],
)
def test_policy_objects_refuse_bad_arguments(make: Any, match: str) -> None:
    with pytest.raises(PolicyError, match=match) as info:
        make()
    assert info.value.hint


# ---------------------------------------------------------------------------------------------------------------
# RetentionPolicy: words, JSON, refusals


def test_retention_policy_in_plain_words() -> None:
    p = RetentionPolicy(keep_last=3, keep_best=2, metric="eval_loss", mode="min", keep_every=1000)
    assert str(p) == "keep the last 3, the best 2 by eval_loss (lower is better), every 1000 steps"
    assert str(RetentionPolicy(keep_best=1, metric="accuracy", mode="max")) == (
        "keep the best by accuracy (higher is better)"
    )
    assert str(RetentionPolicy(keep_last=5, max_bytes=10 * 2**30)) == (
        "keep the last 5; at most 10.0 GiB in total, removing the oldest first"
    )
    assert str(RetentionPolicy(max_bytes=2**30)) == "keep everything up to 1.0 GiB in total, removing the oldest first"


def test_retention_policy_json_has_stable_keys_and_round_trips() -> None:
    p = RetentionPolicy(keep_last=3, keep_best=2, metric="eval_loss", mode="min", keep_every=1000)
    assert p.to_json() == {
        "keep_last": 3,
        "keep_best": 2,
        "metric": "eval_loss",
        "mode": "min",
        "keep_every": 1000,
        "max_bytes": None,
    }
    assert list(RetentionPolicy(max_bytes=5).to_json()) == [
        "keep_last", "keep_best", "metric", "mode", "keep_every", "max_bytes"
    ]
    assert RetentionPolicy.from_json(p.to_json()) == p
    assert RetentionPolicy.from_json({"keep_last": 2}) == RetentionPolicy(keep_last=2)


def test_from_json_refuses_unknown_keys_and_bad_values() -> None:
    with pytest.raises(PolicyError, match="Unknown key.*'keep_monthly'") as info:
        RetentionPolicy.from_json({"keep_last": 2, "keep_monthly": 6})
    assert "upgrade" in info.value.hint
    with pytest.raises(PolicyError, match="JSON object"):
        RetentionPolicy.from_json([["keep_last", 2]])  # type: ignore[arg-type]
    with pytest.raises(PolicyError, match="keep_last must be a whole number"):
        RetentionPolicy.from_json({"keep_last": "3"})
    with pytest.raises(PolicyError, match="would delete every checkpoint"):
        RetentionPolicy.from_json({})


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({}, "would delete every checkpoint except the latest and the tagged ones"),
        ({"keep_last": 0}, "would delete every checkpoint"),
        ({"keep_last": 0, "keep_best": 0}, "would delete every checkpoint"),
        ({"keep_last": None, "metric": "eval_loss"}, "would delete every checkpoint"),
        ({"keep_last": -1}, "keep_last must be at least 0, got -1"),
        ({"keep_best": -2}, "keep_best must be at least 0, got -2"),
        ({"keep_last": 3, "keep_every": -100}, "keep_every must be at least 1"),
        ({"keep_last": 3, "keep_every": 0}, "keep_every must be at least 1"),
        ({"keep_last": 3, "max_bytes": -1}, "max_bytes must be at least 1"),
        ({"max_bytes": 0}, "max_bytes must be at least 1"),
        ({"keep_last": 3, "mode": "lowest"}, "mode must be 'min' or 'max', got 'lowest'"),
        ({"keep_best": 2, "mode": "MAX"}, "mode must be 'min' or 'max'"),
        ({"keep_best": 2, "metric": None}, "keeping the best checkpoints needs a metric name"),
        ({"keep_best": 2, "metric": ""}, "needs a metric name"),
        ({"keep_last": 2.0}, "keep_last must be a whole number"),
    ],
)
def test_retention_policy_refusals(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(PolicyError, match=match) as info:
        RetentionPolicy(**kwargs)
    err = info.value
    assert isinstance(err, CkptError) and isinstance(err, ValueError)
    assert err.hint, "every refusal says what to do"


def test_keep_last_with_nothing_else_refusal_names_the_fix() -> None:
    with pytest.raises(PolicyError) as info:
        RetentionPolicy(keep_last=0)
    assert "keep_last" in info.value.hint and "max_bytes" in info.value.hint


def test_a_metric_without_keep_best_is_fine() -> None:
    assert RetentionPolicy(keep_last=1, metric=None).rules() == (LatestN(1),)


def test_retention_policy_is_built_from_policy_objects() -> None:
    p = RetentionPolicy(keep_last=3, keep_best=2, metric="acc", mode="max", keep_every=500)
    assert p.rules() == (LatestN(3), BestN(2, "acc", "max"), EveryNSteps(500))
    assert p.as_policy() == AnyOf(LatestN(3), BestN(2, "acc", "max"), EveryNSteps(500), Tagged(), OnPurpose())


# ---------------------------------------------------------------------------------------------------------------
# plans: golden


def bert_run() -> list[CheckpointInfo]:
    """Ten checkpoints of a run that overfits after step 700, in lexical name order (the order a bad sort gives)."""
    losses = {100: 0.9, 200: 0.7, 300: None, 400: 0.5, 500: 0.4, 600: 0.30, 700: 0.31, 800: 0.33, 900: 0.35, 1000: 0.36}
    tags = {200: ("v1.0.0",), 400: ("best",), 1000: ("latest",)}
    cps = [
        ck(step, loss=loss, tags=tags.get(step, ()), size=step) if loss is not None else ck(step, size=step)
        for step, loss in losses.items()
    ]
    return sorted(cps, key=lambda c: c.name)


def test_golden_plan_for_a_typical_run() -> None:
    policy = RetentionPolicy(keep_last=3, keep_best=2, metric="eval_loss", mode="min", keep_every=500)
    plan = policy.plan(bert_run())

    assert {d.checkpoint.name: d.reasons for d in plan.keep} == {
        "bert/step-200": ("tagged v1.0.0",),
        "bert/step-500": ("step 500 is a multiple of 500",),
        "bert/step-600": ("among the best 2 by eval_loss (eval_loss=0.3)",),
        "bert/step-700": ("among the best 2 by eval_loss (eval_loss=0.31)",),
        "bert/step-800": ("among the last 3",),
        "bert/step-900": ("among the last 3",),
        "bert/step-1000": ("the latest checkpoint of the run", "among the last 3", "step 1000 is a multiple of 500"),
    }
    assert {d.checkpoint.name: d.reason for d in plan.remove} == {
        "bert/step-100": "not among the last 3, not among the best 2 by eval_loss, step 100 is not a multiple of 500",
        "bert/step-300": (
            "not among the last 3, not among the best 2 by eval_loss (it has no eval_loss), "
            "step 300 is not a multiple of 500"
        ),
        "bert/step-400": "not among the last 3, not among the best 2 by eval_loss, step 400 is not a multiple of 500",
    }
    # Sorted by step as a number, not by name.
    assert names(plan.keep) == [f"bert/step-{s}" for s in (200, 500, 600, 700, 800, 900, 1000)]
    assert names(plan.remove) == ["bert/step-100", "bert/step-300", "bert/step-400"]
    assert plan.warnings == (
        "1 checkpoint has no 'eval_loss' value and can never be kept as best: bert/step-300.",
    )
    assert plan.bytes_freed_upper_bound == 100 + 300 + 400
    assert plan.bytes_freed_upper_bound_str == "800 B"
    assert plan.to_json()["remove"][0] == {
        "id": "id-bert/step-100",
        "name": "bert/step-100",
        "step": 100,
        "reasons": ["not among the last 3", "not among the best 2 by eval_loss", "step 100 is not a multiple of 500"],
    }


def test_plan_is_frozen() -> None:
    plan = RetentionPolicy(keep_last=1).plan([ck(1)])
    assert isinstance(plan, RetentionPlan)
    with pytest.raises(AttributeError):
        plan.keep = ()  # type: ignore[misc]


def test_latest_is_kept_even_when_no_rule_keeps_it() -> None:
    cps = [ck(100, loss=0.1), ck(200, loss=0.5), ck(300, loss=0.9)]
    plan = RetentionPolicy(keep_best=1).plan(cps)
    assert {d.checkpoint.name: d.reasons for d in plan.keep} == {
        "bert/step-100": ("among the best by eval_loss (eval_loss=0.1)",),
        "bert/step-300": ("the latest checkpoint of the run",),
    }
    assert names(plan.remove) == ["bert/step-200"]


def test_protected_ids_are_kept_as_in_use() -> None:
    cps = [ck(100), ck(200), ck(300)]
    plan = RetentionPolicy(keep_last=1).plan(cps, protected_ids=frozenset({"id-bert/step-100", "id-unknown"}))
    assert {d.checkpoint.name: d.reasons for d in plan.keep} == {
        "bert/step-100": ("in use (an unfinished save or a running resume)",),
        "bert/step-300": ("the latest checkpoint of the run", "among the latest"),
    }


def test_protected_tags_decide_what_counts_as_a_user_tag() -> None:
    cps = [ck(100, tags=("best",)), ck(200, tags=("candidate",)), ck(300)]
    policy = RetentionPolicy(keep_last=1)
    assert names(policy.plan(cps).keep) == ["bert/step-200", "bert/step-300"]
    assert names(policy.plan(cps, protected_tags=frozenset({"candidate"})).keep) == ["bert/step-100", "bert/step-300"]


def test_plan_refuses_a_lone_string_for_a_set() -> None:
    with pytest.raises(PolicyError, match="protected_ids must be a collection"):
        RetentionPolicy(keep_last=1).plan([ck(1)], protected_ids="id-bert/step-1")
    with pytest.raises(PolicyError, match="protected_tags must be a collection"):
        RetentionPolicy(keep_last=1).plan([ck(1)], protected_tags="latest")


def test_plan_refuses_mixed_runs_and_duplicate_ids() -> None:
    with pytest.raises(PolicyError, match="one run.*2: bert, gpt2") as info:
        RetentionPolicy(keep_last=1).plan([ck(1), ck(2, run="gpt2")])
    assert "once per run" in info.value.hint
    with pytest.raises(PolicyError, match="more than once: id-bert/step-1"):
        RetentionPolicy(keep_last=1).plan([ck(1), ck(1)])


def test_plan_of_nothing_is_empty() -> None:
    plan = RetentionPolicy(keep_last=2, keep_best=1).plan([])
    assert plan == RetentionPlan(keep=(), remove=(), warnings=())
    assert plan.bytes_freed_upper_bound == 0


def test_warning_when_no_checkpoint_has_the_metric() -> None:
    cps = [ck(1, eval_accuracy=0.5, train_loss=1.0), ck(2, train_loss=0.8), ck(3)]
    plan = RetentionPolicy(keep_last=1, keep_best=2, metric="eval_loss").plan(cps)
    assert plan.warnings == (
        "No checkpoint records the metric 'eval_loss', so none is kept as best; metrics recorded: eval_accuracy, "
        "train_loss. Set the policy's metric to one the checkpoints record.",
    )
    assert names(plan.keep) == ["bert/step-3"]
    bare = RetentionPolicy(keep_best=1).plan([ck(1), ck(2)])
    assert "metrics recorded: none" in bare.warnings[0]


def test_several_checkpoints_without_the_metric_are_all_named() -> None:
    plan = RetentionPolicy(keep_best=1).plan([ck(1), ck(2, loss=0.3), ck(30), ck(1000)])
    assert plan.warnings == (
        "3 checkpoints have no 'eval_loss' value and can never be kept as best: "
        "bert/step-1, bert/step-30, bert/step-1000.",
    )


def test_no_metric_warning_without_keep_best() -> None:
    assert RetentionPolicy(keep_last=1).plan([ck(1), ck(2)]).warnings == ()


# ---------------------------------------------------------------------------------------------------------------
# plans: max_bytes


def test_max_bytes_removes_the_oldest_unprotected_first() -> None:
    cps = [ck(100, size=40, tags=("prod",)), ck(200, size=40), ck(300, size=40), ck(400, size=40), ck(500, size=40)]
    plan = RetentionPolicy(keep_last=4, max_bytes=130).plan(cps)
    # Kept by keep_last: 200..500 (160 B) plus the tagged 100 (200 B in all): drop 200 then 300 -> 120 B.
    assert names(plan.keep) == ["bert/step-100", "bert/step-400", "bert/step-500"]
    assert {d.checkpoint.name: d.reasons for d in plan.remove} == {
        "bert/step-200": ("over the 130 B budget, which removes the oldest unprotected checkpoints first",),
        "bert/step-300": ("over the 130 B budget, which removes the oldest unprotected checkpoints first",),
    }
    assert plan.warnings == ()
    assert plan.bytes_freed_upper_bound == 80


def test_max_bytes_alone_keeps_everything_that_fits() -> None:
    cps = [ck(s, size=10) for s in (100, 200, 300, 400)]
    assert names(RetentionPolicy(max_bytes=1000).plan(cps).remove) == []
    plan = RetentionPolicy(max_bytes=25).plan(cps)
    assert names(plan.keep) == ["bert/step-300", "bert/step-400"]
    assert plan.keep[0].reasons == ("within the 25 B budget",)
    assert plan.keep[1].reasons == ("the latest checkpoint of the run", "within the 25 B budget")


def test_max_bytes_never_removes_protected_and_warns_when_still_over() -> None:
    cps = [
        ck(100, size=50, loss=0.1),
        ck(200, size=50, tags=("v1.0.0",)),
        ck(300, size=50),
        ck(400, size=50, loss=0.9),
    ]
    plan = RetentionPolicy(keep_last=4, keep_best=1, max_bytes=60).plan(cps, protected_ids={"id-bert/step-300"})
    assert names(plan.remove) == []
    assert any(
        w.startswith("The kept checkpoints total 200 B, over max_bytes (60 B): every one left is protected")
        for w in plan.warnings
    )


def test_plans_are_deterministic_whatever_the_input_order() -> None:
    policy = RetentionPolicy(keep_last=2, keep_best=2, keep_every=500, max_bytes=3000)
    cps = bert_run() + [ck(None, t=50, name="bert/manual", loss=0.3)]
    expected = policy.plan(cps)
    rng = random.Random(0)
    for _ in range(20):
        rng.shuffle(cps)
        assert policy.plan(cps) == expected
    everything = names(expected.keep) + names(expected.remove)
    assert "bert/manual" in everything and len(everything) == len(cps)


# ---------------------------------------------------------------------------------------------------------------
# property test against an oracle written from the issue, not from the implementation

STEPS = st.one_of(st.none(), st.sampled_from([0, 30, 200, 1000, 1200, 2000, 10000]), st.integers(0, 3000))
LOSS = st.one_of(st.none(), st.sampled_from([0.1, 0.2, 0.5]), st.floats(0, 5, allow_nan=False))
TAGS = st.lists(st.sampled_from(["latest", "best", "v1.0.0", "prod"]), unique=True, max_size=2).map(tuple)
USER_TAGS = {"v1.0.0", "prod"}


@st.composite
def checkpoint_lists(draw: st.DrawFn) -> list[CheckpointInfo]:
    n = draw(st.integers(0, 12))
    times = draw(st.lists(st.integers(0, 10_000), min_size=n, max_size=n, unique=True))
    out = []
    for i, t in enumerate(times):
        loss = draw(LOSS)
        out.append(
            CheckpointInfo(
                id=f"c{i}",
                name=f"run/ckpt-{i}",
                run="run",
                step=draw(STEPS),
                created_at=float(t),
                tags=draw(TAGS),
                metrics={} if loss is None else {"eval_loss": loss},
                logical_bytes=draw(st.integers(0, 100)),
            )
        )
    return out


def oracle_oldest_first(cps: list[CheckpointInfo]) -> list[CheckpointInfo]:
    """Unnumbered checkpoints by time, then numbered ones by step (as numbers) and time."""
    unnumbered = sorted((c for c in cps if c.step is None), key=lambda c: c.created_at)
    numbered = sorted((c for c in cps if c.step is not None), key=lambda c: (int(c.step or 0), c.created_at))
    return unnumbered + numbered


@settings(max_examples=150, deadline=None, database=None)
@given(
    cps=checkpoint_lists(),
    keep_last=st.one_of(st.none(), st.integers(0, 5)),
    keep_best=st.one_of(st.none(), st.integers(0, 4)),
    keep_every=st.one_of(st.none(), st.sampled_from([100, 200, 1000])),
    max_bytes=st.one_of(st.none(), st.integers(1, 600)),
    mode=st.sampled_from(["min", "max"]),
    data=st.data(),
)
def test_plan_properties(
    cps: list[CheckpointInfo],
    keep_last: int | None,
    keep_best: int | None,
    keep_every: int | None,
    max_bytes: int | None,
    mode: str,
    data: st.DataObject,
) -> None:
    if not (keep_last or keep_best or keep_every or max_bytes):
        with pytest.raises(PolicyError):
            RetentionPolicy(keep_last, keep_best, "eval_loss", mode, keep_every, max_bytes)  # type: ignore[arg-type]
        return
    policy = RetentionPolicy(keep_last, keep_best, "eval_loss", mode, keep_every, max_bytes)  # type: ignore[arg-type]
    in_use = data.draw(st.sets(st.sampled_from([c.id for c in cps]))) if cps else set()
    plan = policy.plan(cps, protected_ids=in_use)

    keep = [d.checkpoint.id for d in plan.keep]
    remove = [d.checkpoint.id for d in plan.remove]
    all_ids = {c.id for c in cps}
    assert set(keep) | set(remove) == all_ids
    assert not set(keep) & set(remove)
    assert len(keep) + len(remove) == len(cps)
    assert all(d.reasons for d in plan.keep + plan.remove)

    ordered = oracle_oldest_first(cps)
    assert keep == [c.id for c in ordered if c.id in set(keep)]
    assert remove == [c.id for c in ordered if c.id in set(remove)]

    # Never removed: the latest, the user-tagged, the ones in use, the best K.
    tagged = {c.id for c in cps if USER_TAGS & set(c.tags)}
    must_keep = tagged | in_use | ({ordered[-1].id} if ordered else set())
    assert not must_keep & set(remove)

    scored = [(c.metrics["eval_loss"] if mode == "min" else -c.metrics["eval_loss"], c.id) for c in cps if c.metrics]
    scored.sort()
    best_region: set[str] = set()
    if keep_best and scored:
        kth = scored[min(keep_best, len(scored)) - 1][0]
        strictly_better = {cid for v, cid in scored if v < kth}
        best_region = {cid for v, cid in scored if v <= kth}
        assert not strictly_better & set(remove)
        assert len(best_region & set(keep)) >= min(keep_best, len(scored))
    # A checkpoint without the metric is never kept *as best*.
    for d in plan.keep:
        if not d.checkpoint.metrics:
            assert not any("best" in r for r in d.reasons)

    if max_bytes is None:
        if keep_last:
            assert {c.id for c in ordered[-keep_last:]} <= set(keep)
        if keep_every:
            assert {c.id for c in cps if c.step is not None and c.step % keep_every == 0} <= set(keep)
        if keep_last and not keep_best and not keep_every:
            assert set(keep) == {c.id for c in ordered[-keep_last:]} | tagged | in_use
    else:
        kept_bytes = sum(d.checkpoint.logical_bytes for d in plan.keep)
        if kept_bytes > max_bytes:
            # Only protected checkpoints may be left over budget, and the plan must say so.
            assert set(keep) <= must_keep | best_region
            assert any("over max_bytes" in w for w in plan.warnings)
        # The budget only trims what the rules keep, oldest first, and no more than it must.
        base = set(all_ids)
        if keep_last or keep_best or keep_every:
            rules_only = RetentionPolicy(keep_last, keep_best, "eval_loss", mode, keep_every)  # type: ignore[arg-type]
            base = {d.checkpoint.id for d in rules_only.plan(cps, protected_ids=in_use).keep}
        assert set(keep) <= base
        trimmed = [c for c in ordered if c.id in base - set(keep)]
        assert not {c.id for c in trimmed} & must_keep
        if trimmed:
            newest_trimmed = trimmed[-1]
            assert kept_bytes + newest_trimmed.logical_bytes > max_bytes
            position = {c.id: i for i, c in enumerate(ordered)}
            trimmable_left = set(keep) - must_keep - best_region
            assert all(position[i] > position[newest_trimmed.id] for i in trimmable_left)

    assert plan.bytes_freed_upper_bound == sum(d.checkpoint.logical_bytes for d in plan.remove)
    assert policy.plan(list(reversed(cps)), protected_ids=in_use) == plan
    if keep_best and cps and not scored:
        assert any("No checkpoint records the metric 'eval_loss'" in w for w in plan.warnings)
