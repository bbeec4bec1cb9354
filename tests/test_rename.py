"""`ckpt mv` / `Store.rename`: a checkpoint changes its name and nothing else, in this process and in others."""

from __future__ import annotations

import json

import pytest

from ckptstore import CheckpointNotFound, InvalidName, NameExists, RetentionPolicy, Store


@pytest.fixture
def run(store, tiny_bert_dir):
    for step, loss in ((1, 0.9), (2, 0.5), (3, 0.7)):
        store.save(tiny_bert_dir, f"r/step-{step}", metrics={"eval_loss": loss}, tags=["v1"] if step == 2 else ())
    return store


def test_rename_keeps_the_id_files_metrics_tags_and_lineage(run, tmp_path, tree_sha256, tiny_bert_dir):
    before = run.info("r/step-2")
    child = run.save(tiny_bert_dir, "r/step-4", parent="r/step-2", metrics={"eval_loss": 0.8})
    run.annotate("r/step-2", metadata={"note": "kept"})
    info = run.rename("r/step-2", "r/release")
    assert info.id == before.id and info.name == "r/release" and info.run == "r"
    assert info.metrics == before.metrics and info.metadata["note"] == "kept"
    assert sorted(info.tags) == ["best", "v1"]
    assert run.resolve("r:v1") == info.id and run.resolve("r:best") == info.id
    assert run.lineage("r/step-4")[1].name == "r/release" and run.info(child.id).parent == info.id
    with pytest.raises(CheckpointNotFound, match="r/step-2"):
        run.info("r/step-2")
    run.export("r/release", tmp_path / "out")
    assert tree_sha256(tmp_path / "out") == tree_sha256(tiny_bert_dir)
    assert run.manifest("r/release").name == "r/release"
    # Another process, and an index rebuilt from the store, see the new name only.
    with Store.open(run.root) as other:
        assert {c.name for c in other.list("r")} == {"r/step-1", "r/release", "r/step-3", "r/step-4"}
    assert run.reindex() == 4 and run.info("r/release").id == before.id
    assert run.verify().ok


def test_the_old_name_is_free_again_and_the_new_one_must_be(run, tiny_bert_dir):
    run.rename("r/step-1", "r/first")
    again = run.save(tiny_bert_dir, "r/step-1")  # the old name can be used again
    assert again.id != run.resolve("r/first")
    with pytest.raises(NameExists):
        run.rename("r/step-3", "r/first")
    with pytest.raises(InvalidName):
        run.rename("r/step-3", "r/../x")
    assert run.info("r/step-3").name == "r/step-3"  # nothing moved


def test_a_move_to_another_run_leaves_the_old_runs_tags_and_updates_both_runs(run):
    info = run.rename("r/step-2", "other/step-2")
    assert info.run == "other"
    assert "r:v1" not in run.tags("r")  # a tag belongs to its run
    assert run.info("r:best").name == "r/step-3"  # the best of what r has left
    assert run.info("other:latest").id == info.id and run.info("other:best").id == info.id


def test_retention_sees_the_new_name(run, tiny_bert_dir):
    """A renamed checkpoint is named outside the step pattern: made on purpose, kept by step rules."""
    run.rename("r/step-1", "r/baseline")
    run.set_policy("r", RetentionPolicy(keep_last=1))
    run.save(tiny_bert_dir, "r/step-5", metrics={"eval_loss": 0.95})
    assert {c.name for c in run.list("r")} >= {"r/baseline", "r/step-5", "r/step-2"}


def test_cli_mv(run, ckpt):
    result = ckpt("mv", "r/step-3", "r/candidate", "--json", store=run.root)
    assert result.code == 0, result.err
    out = json.loads(result.out)
    assert out["name"] == "r/candidate" and out["renamed_from"] == "r/step-3"
    assert ckpt("mv", "r/nope", "r/x", store=run.root).code == 1
    assert ckpt("mv", "r/candidate", "bad name", store=run.root).code == 2
    moved = ckpt("mv", "r/step-2", "elsewhere/s2", store=run.root)
    assert moved.code == 0 and "r:v1" in moved.err  # says which tags stayed behind
