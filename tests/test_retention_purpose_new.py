"""Checkpoints made on purpose (a conversion, a name outside the step pattern, a user tag) are never pruned by step
rules, do not count in them, and the plan says why each stays (issue "What a new user hit", item 5)."""

from __future__ import annotations

import json

import torch

from ckptstore import Store
from ckptstore._core.info import CheckpointInfo
from ckptstore.policies import RetentionPolicy, latest_of, made_on_purpose


def _train(model, step: int) -> None:
    with torch.no_grad():
        model.pooler.dense.bias.add_(0.01 * step)  # stand-in for training: every step saves different weights


def test_readme_convert_to_serve_survives_the_runs_policy(store: Store, tiny_bert, ckpt):
    """README's own example: keep-last 2 / keep-best 1, then `ckpt convert bert-sst2:best --dtype bf16 --name
    bert-sst2/serve`. The next saves removed bert-sst2/serve (the source's step, no metrics) before."""
    model = tiny_bert()
    assert ckpt("policy", "bert-sst2", "--keep-last", "2", "--keep-best", "1").code == 0
    for step, loss in ((100, 0.9), (200, 0.3), (300, 0.5)):
        _train(model, step)
        store.save(model, f"bert-sst2/step-{step}", metrics={"eval_loss": loss})
    converted = ckpt("convert", "bert-sst2:best", "--dtype", "bf16", "--name", "bert-sst2/serve")
    assert converted.code == 0, converted.err
    store.save(None, "bert-sst2/final", extra_files={"config.json": b"{}"})  # a name someone chose
    for step, loss in ((400, 0.6), (500, 0.7)):
        _train(model, step)
        store.save(model, f"bert-sst2/step-{step}", metrics={"eval_loss": loss})

    names = {c.name for c in store.list("bert-sst2")}
    # serve and final stay; the step rules kept the last 2 steps and the best, as if serve and final were not there.
    assert names == {"bert-sst2/serve", "bert-sst2/final", "bert-sst2/step-200", "bert-sst2/step-400",
                     "bert-sst2/step-500"}
    assert store.info("bert-sst2:latest").name == "bert-sst2/step-500"
    assert store.info("bert-sst2:best").name == "bert-sst2/step-200"

    store.tag("bert-sst2/step-400", "v1")
    dry = ckpt("prune", "bert-sst2", "--keep-last", "1", "--dry-run", "--json")
    assert dry.code == 0, dry.err
    plan = json.loads(dry.out)
    kept = {d["name"]: d["reasons"] for d in plan["keep"]}
    assert kept["bert-sst2/serve"] == ["made by convert"]
    assert kept["bert-sst2/final"] == ["named outside the step pattern"]
    assert kept["bert-sst2/step-400"] == ["tagged v1"]
    assert "bert-sst2/serve" in kept and [d["name"] for d in plan["remove"]] == []
    text = ckpt("prune", "bert-sst2", "--keep-last", "1", "--dry-run")
    assert "made by convert" in text.out + text.err and "named outside the step pattern" in text.out + text.err


def test_a_conversion_of_the_latest_does_not_become_latest_nor_push_it_out(store: Store, tiny_bert):
    """A conversion carries its source's step and is newer: on the step axis it would be "the latest", so a resume
    from RUN:latest would get the bf16 copy and keep_last=1 would drop the checkpoint training goes on from."""
    model = tiny_bert()
    store.set_policy("r", RetentionPolicy(keep_last=1))
    for step in (1, 2):
        _train(model, step)
        store.save(model, f"r/step-{step}")
    bf16 = store.convert("r:latest", dtype="bf16")  # r/step-2-bf16, step 2
    assert bf16.step == 2 and "latest" not in bf16.tags
    assert store.info("r:latest").name == "r/step-2"
    _train(model, 3)
    store.save(model, "r/step-3")
    assert {c.name for c in store.list("r")} == {"r/step-2-bf16", "r/step-3"}
    assert store.info("r:latest").name == "r/step-3"


def ck(name: str, step: int | None, t: float, **metadata) -> CheckpointInfo:
    return CheckpointInfo(id=f"id-{name}", name=name, run="r", step=step, created_at=t, metadata=metadata,
                          logical_bytes=10)


def test_the_pure_plan_reads_purpose_from_the_listed_facts():
    cps = [
        ck("r/step-100", 100, 1), ck("r/step-200", 200, 2), ck("r/step-200.1", 200, 5),  # a second attempt: a step
        ck("r/checkpoint-300", 300, 3), ck("r/serve", 300, 4, converted={"from": "id-r/checkpoint-300"}),
        ck("r/final", None, 6), ck("r/step-300-bf16", 300, 7, converted={"from": "x"}),
    ]
    assert [made_on_purpose(c) for c in cps] == [
        None, None, None, None, "made by convert", "named outside the step pattern", "made by convert"]
    assert latest_of(cps).name == "r/checkpoint-300"
    plan = RetentionPolicy(keep_last=2).plan(cps)
    assert [d.checkpoint.name for d in plan.remove] == ["r/step-100", "r/step-200"]
    reasons = {d.checkpoint.name: d.reasons for d in plan.keep}
    assert reasons["r/serve"] == ("made by convert",)
    assert reasons["r/final"] == ("named outside the step pattern",)
    assert reasons["r/checkpoint-300"] == ("the latest checkpoint of the run", "among the last 2")
    assert reasons["r/step-200.1"] == ("among the last 2",)
    # A run of chosen names only: latest is the highest step, else the newest.
    assert latest_of([ck("m/v1", None, 1), ck("m/v2", None, 2)]).name == "m/v2"
    assert latest_of([]) is None
