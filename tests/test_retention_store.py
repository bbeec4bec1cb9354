"""Retention in the store: run settings on disk, policies applied on save and by prune, latest/best tags, leases,
and the `ckpt prune`, `ckpt policy` and `ckpt checkout` commands."""

from __future__ import annotations

import json

import pytest
import torch

from ckptstore import Store
from ckptstore.errors import CheckpointNotFound, InvalidArgument, InvalidName, PolicyError, RetentionWarning
from ckptstore.policies import RetentionPolicy


def put(store: Store, run: str, step: int, metrics: dict | None = None):
    """A small real checkpoint: a linear layer whose weights depend on the step (so no two share weight blobs)."""
    torch.manual_seed(step)
    return store.save(torch.nn.Linear(8, 8), f"{run}/step-{step}", metrics=metrics)


def names(store: Store, run: str) -> list[str]:
    return sorted((c.name for c in store.list(run)), key=lambda n: int(n.rsplit("-", 1)[1]))


def tag_target(store: Store, ref: str) -> str | None:
    try:
        return store.info(ref).name
    except CheckpointNotFound:
        return None


# -- settings ------------------------------------------------------------------------------------------------------


def test_policy_is_persisted_per_run_and_seen_by_another_store_instance(store):
    policy = RetentionPolicy(keep_last=3, keep_best=1, metric="eval_acc", mode="max")
    store.set_policy("bert", policy)
    raw = json.loads((store.root / "policies" / "bert.json").read_text())
    assert raw["policy"]["keep_last"] == 3 and raw["policy"]["metric"] == "eval_acc"
    other = Store.open(store.root)
    assert other.get_policy("bert") == policy
    assert other.get_policy("gpt") is None
    store.set_policy("bert", None)
    assert Store.open(store.root).get_policy("bert") is None


def test_setting_a_policy_deletes_nothing_until_the_next_save(store):
    for step in (1, 2, 3):
        put(store, "r", step)
    store.set_policy("r", RetentionPolicy(keep_last=1))
    assert names(store, "r") == ["r/step-1", "r/step-2", "r/step-3"]
    put(store, "r", 4)
    assert names(store, "r") == ["r/step-4"]


def test_invalid_run_name_is_refused(store):
    with pytest.raises(InvalidName):
        store.set_policy("a/b", RetentionPolicy(keep_last=1))
    with pytest.raises(InvalidName):
        store.prune("bad run", RetentionPolicy(keep_last=1))


def test_damaged_or_foreign_settings_are_reported(store):
    put(store, "r", 1)
    path = store.root / "policies" / "r.json"
    path.write_text("{not json")
    with pytest.raises(PolicyError, match="not valid JSON"):
        store.get_policy("r")
    path.write_text(json.dumps({"format": 1, "policy": {"keep_last": 2, "keep_oldest": 1}, "best": None}))
    # The save is committed and says so; the policy it cannot read is reported, not silently skipped, and not
    # reported as a failed save either (a Trainer run must not die over a damaged policy file).
    with pytest.warns(RetentionWarning, match="keep_oldest"):
        put(store, "r", 2)
    assert "r/step-2" in names(store, "r")


# -- applying policies ---------------------------------------------------------------------------------------------


def test_save_applies_the_run_policy_and_maintains_latest_and_best(store):
    store.set_policy("r", RetentionPolicy(keep_last=2, keep_best=1, metric="eval_loss"))
    losses = {1: 0.9, 2: 0.3, 3: 0.5, 4: 0.6, 5: 0.7}
    for step, loss in losses.items():
        put(store, "r", step, {"eval_loss": loss})
    assert names(store, "r") == ["r/step-2", "r/step-4", "r/step-5"]
    assert tag_target(store, "r:latest") == "r/step-5"
    assert tag_target(store, "r:best") == "r/step-2"
    # Other runs are untouched.
    put(store, "other", 1)
    put(store, "other", 2)
    assert names(store, "other") == ["other/step-1", "other/step-2"]
    assert tag_target(store, "other:latest") == "other/step-2"  # no policy: tags are maintained all the same
    assert tag_target(store, "other:best") is None  # no checkpoint of it has eval_loss


def test_user_tag_pins_and_missing_metric_is_explained(store):
    for step in (1, 2, 3, 4):
        put(store, "r", step, {"eval_loss": 1.0 / step} if step != 3 else {"loss": 0.1})
    store.tag("r/step-1", "prod")
    result = store.prune("r", RetentionPolicy(keep_last=1, keep_best=1), dry_run=True)
    decisions = {d.checkpoint.name: d.reason for d in result.plan.keep + result.plan.remove}
    assert [d.checkpoint.name for d in result.plan.remove] == ["r/step-2", "r/step-3"]
    assert "tagged prod" in decisions["r/step-1"]
    assert "it has no eval_loss" in decisions["r/step-3"]
    assert any("no 'eval_loss' value" in w and "r/step-3" in w for w in result.plan.warnings)
    assert not result.executed and len(store.list("r")) == 4  # a dry run removes nothing


def test_metric_that_no_checkpoint_has_is_reported(store):
    for step in (1, 2):
        put(store, "r", step, {"eval_loss": 0.5})
    result = store.prune("r", RetentionPolicy(keep_last=2, keep_best=1, metric="eval_f1"), dry_run=True)
    assert any("No checkpoint records the metric 'eval_f1'" in w and "eval_loss" in w for w in result.plan.warnings)


def test_the_runs_best_is_never_pruned_whatever_the_rules(store):
    """keep_last alone, or keep_best ranking by another metric than the one RUN:best follows (Trainer's
    metric_for_best_model), must not lose the best checkpoint."""
    for step, loss in ((1, 0.9), (2, 0.1), (3, 0.5), (4, 0.7)):
        put(store, "a", step, {"eval_loss": loss})
    result = store.prune("a", RetentionPolicy(keep_last=1))
    assert sorted(c.step for c in store.list("a")) == [2, 4]
    assert [d.reasons for d in result.plan.keep if d.checkpoint.step == 2] == [
        ("the run's best by eval_loss (lower is better)",)]
    assert store.info("a:best").step == 2

    store.register_run("b", metric="eval_acc", mode="max")
    store.set_policy("b", RetentionPolicy(keep_last=1, keep_best=1))  # keep_best by eval_loss, the default
    for step, loss, acc in ((1, 0.2, 0.9), (2, 0.1, 0.5), (3, 0.5, 0.6), (4, 0.7, 0.4)):
        put(store, "b", step, {"eval_loss": loss, "eval_acc": acc})
    assert sorted(c.step for c in store.list("b")) == [1, 2, 4]  # acc-best 1 (b:best), loss-best 2, latest 4
    assert store.info("b:best").step == 1
    # The run's best and latest are the store's to move: a hand-set one would silently move back.
    with pytest.raises(InvalidArgument, match="b:best is kept up to date by ckptstore"):
        store.tag("b/step-4", "best")
    store.tag("b/step-4", "chosen")
    # So in a run without a policy or training integration: the store moves its latest and best there too.
    put(store, "c", 1)
    with pytest.raises(InvalidArgument, match="c:best is kept up to date by ckptstore"):
        store.tag("c/step-1", "best")
def test_policy_that_would_delete_everything_is_refused(store, ckpt):
    with pytest.raises(PolicyError, match="would delete every checkpoint"):
        RetentionPolicy(keep_last=0)
    put(store, "bert", 1)
    result = ckpt("policy", "bert", "--keep-last", "0", store=store.root)
    assert result.code == 2 and "would delete every checkpoint" in result.err  # a bad argument: exit 2


def test_prune_needs_a_policy_and_a_known_run(store):
    put(store, "bert", 1)
    with pytest.raises(PolicyError, match="no retention policy"):
        store.prune("bert")
    with pytest.raises(CheckpointNotFound) as info:
        store.prune("berT", RetentionPolicy(keep_last=1))
    assert "bert" in info.value.candidates


def test_prune_then_gc_reclaims_the_blobs(store):
    for step in (1, 2, 3, 4):
        put(store, "r", step)
    before = store.du().stored_bytes
    result = store.prune("r", RetentionPolicy(keep_last=1))
    assert result.executed and result.reclaimable_bytes > 0
    assert store.list("r")[0].name == "r/step-4" and len(store.list("r")) == 1
    freed = store.gc().bytes_freed
    assert freed == result.reclaimable_bytes
    assert store.du().stored_bytes == before - freed
    assert not store.verify().problems


def test_checkpoint_in_use_is_never_pruned_and_stale_leases_are_dropped(store):
    for step in (1, 2, 3):
        put(store, "r", step)
    stale = store.root / "locks" / "inuse" / f"{store.resolve('r/step-2')}.99999.dead"
    stale.parent.mkdir(parents=True, exist_ok=True)
    stale.touch()  # a lease whose process died: nobody holds its lock
    with store.hold("r/step-1") as cid:
        result = store.prune("r", RetentionPolicy(keep_last=1))
        assert [d.checkpoint.name for d in result.plan.remove] == ["r/step-2"]
        kept = {d.checkpoint.id: d.reason for d in result.plan.keep}
        assert "in use" in kept[cid]
    assert not stale.exists()
    assert store.prune("r", RetentionPolicy(keep_last=1)).plan.remove[0].checkpoint.name == "r/step-1"


# -- CLI -----------------------------------------------------------------------------------------------------------


def test_cli_prune_dry_run_prints_every_decision(store, ckpt):
    for step in (1, 2, 3):
        put(store, "r", step, {"eval_loss": [0.2, 0.5, 0.4][step - 1]})
    res = ckpt("prune", "r", "--keep-last", "1", "--keep-best", "1", "--dry-run")
    assert res.code == 0, res.err
    lines = res.out.strip().splitlines()
    assert [line.split()[0] for line in lines] == ["kept", "would", "kept"]
    assert "r/step-2" in lines[1] and "not the latest" in lines[1]
    assert "among the best" in lines[0] or "the best by eval_loss" in lines[0]
    assert len(store.list("r")) == 3
    res = ckpt("prune", "r", "--keep-last", "1", "--keep-best", "1", "--json")
    data = json.loads(res.out)
    assert res.code == 0 and data["executed"] and [d["name"] for d in data["remove"]] == ["r/step-2"]
    assert data["gc"]["bytes_freed"] > 0


def test_cli_policy_shows_sets_and_clears(store, ckpt):
    for step in (1, 2, 3):
        put(store, "r", step, {"eval_loss": 0.5})
    assert "no retention policy" in ckpt("policy", "r").out
    res = ckpt("policy", "r", "--keep-last", "1", "--keep-best", "1", "--metric", "eval_f1", "--mode", "max")
    assert res.code == 0, res.err
    assert "keep the latest" in res.out and "eval_f1" in res.out
    assert "removes 2" in res.err and "No checkpoint records the metric 'eval_f1'" in " ".join(res.err.split())
    assert len(store.list("r")) == 3  # shown, not done
    data = json.loads(ckpt("policy", "r", "--json").out)
    assert data["policy"]["keep_last"] == 1 and data["best"] == {"metric": "eval_f1", "mode": "max"}
    assert ckpt("policy", "r", "--keep-last", "0").code == 2
    assert ckpt("policy", "r", "--clear", "--keep-last", "2").code == 2
    assert ckpt("policy", "r", "--clear").code == 0
    assert Store.open(store.root).get_policy("r") is None
    assert ckpt("policy", "no/such").code == 2
    assert ckpt("prune", "r").code == 2  # no policy any more: the command needs one given


def test_cli_checkout_refuses_a_checkpoint_without_training_state(store, ckpt, tmp_path):
    put(store, "r", 1)
    res = ckpt("checkout", "r/step-1", tmp_path / "resume")
    assert res.code == 1 and "no training state" in res.err and "ckpt export" in res.err
    assert not (tmp_path / "resume").exists()


def test_checkout_writes_the_training_folder_byte_for_byte(store, ckpt, tmp_path, tiny_bert_dir):
    src = tmp_path / "checkpoint-7"
    src.mkdir()
    for f in tiny_bert_dir.iterdir():
        (src / f.name).write_bytes(f.read_bytes())
    (src / "optimizer.pt").write_bytes(b"\x80\x04opaque pickle bytes, stored verbatim")
    (src / "trainer_state.json").write_text('{"global_step": 7}')
    store.save(src, "r/step-7")
    dest = tmp_path / "resume"
    res = ckpt("checkout", "r/step-7", dest)
    assert res.code == 0, res.err
    assert {p.name: p.read_bytes() for p in dest.iterdir()} == {p.name: p.read_bytes() for p in src.iterdir()}
    assert ckpt("checkout", "r/step-7", dest).code == 2  # not empty any more
