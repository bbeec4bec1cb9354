"""`ckpt annotate` / `Store.annotate`: metrics, metadata and a message added after the save, kept in
annotations/<id>.json beside the immutable manifest, merged wherever checkpoints are listed, sorted and ranked."""

from __future__ import annotations

import json

import pytest

from ckptstore import Store
from ckptstore.errors import CorruptObject, InvalidArgument
from ckptstore.policies import RetentionPolicy


@pytest.fixture
def two(store, tiny_bert):
    store.save(tiny_bert(seed=1), "run/step-1", metrics={"eval_loss": 0.5}, metadata={"lr": 0.1}, message="first")
    store.save(tiny_bert(seed=2), "run/step-2", metrics={"eval_loss": 0.7})
    return store


def test_annotations_merge_over_the_manifest_and_survive_a_reindex(two, ckpt):
    store = two
    cid = store.resolve("run/step-2")
    manifest_bytes = (store.root / "checkpoints" / f"{cid}.json").read_bytes()

    info = store.annotate("run/step-2", metrics={"test_acc": 0.9}, metadata={"reviewer": "ana"}, message="shipped")
    assert info.id == cid  # the checkpoint is the same: its manifest was not touched
    assert (store.root / "checkpoints" / f"{cid}.json").read_bytes() == manifest_bytes
    assert info.metrics == {"eval_loss": 0.7, "test_acc": 0.9}
    assert info.metadata == {"reviewer": "ana"} and info.message == "shipped"
    again = store.annotate(cid[:8], metrics={"eval_loss": 0.4, "test_acc": 0.95}, metadata={"split": "test"})
    assert again.metrics == {"eval_loss": 0.4, "test_acc": 0.95}
    assert again.metadata == {"reviewer": "ana", "split": "test"} and again.message == "shipped"
    doc = json.loads((store.root / "annotations" / f"{cid}.json").read_text())
    assert doc["checkpoint"] == cid and doc["format"] == 1

    # Another process (the CLI) sees the merged values, and so does an index rebuilt from the files.
    listed = {c["name"]: c for c in json.loads(ckpt("ls", "--json", store=store.root).out)}
    assert listed["run/step-2"]["metrics"] == {"eval_loss": 0.4, "test_acc": 0.95}
    assert listed["run/step-1"]["metrics"] == {"eval_loss": 0.5}
    store.close()
    (store.root / "index.sqlite").unlink()
    with Store.open(store.root) as fresh:
        assert fresh.info("run/step-2").metrics == {"eval_loss": 0.4, "test_acc": 0.95}
        fresh.fsck(reindex=True)
        assert fresh.info("run/step-2").message == "shipped"
    shown = ckpt("show", "run/step-2", store=store.root)
    assert "test_acc=0.95" in shown.out and "reviewer: ana" in shown.out and "shipped" in shown.out


def test_an_annotation_that_changes_the_best_moves_the_best_tag_and_retention_sees_it(two):
    store = two
    store.set_policy("run", RetentionPolicy(keep_last=1, keep_best=1, metric="eval_loss"))
    store.save(_tiny(), "run/step-3", metrics={"eval_loss": 0.6})
    assert store.resolve("run:best") == store.resolve("run/step-1")
    store.annotate("run/step-3", metrics={"eval_loss": 0.1})
    assert store.resolve("run:best") == store.resolve("run/step-3")
    # step-1 is no longer the best: the policy (keep the latest and the best 1) now removes it.
    result = store.prune("run")
    assert [d.checkpoint.name for d in result.plan.remove] == ["run/step-1"]


def _tiny():
    from conftest import make_tiny_bert

    return make_tiny_bert(seed=3)


def test_delete_and_gc_remove_annotations(two):
    store = two
    cid = store.resolve("run/step-1")
    store.annotate("run/step-1", metrics={"x": 1.0})
    doc = store.root / "annotations" / f"{cid}.json"
    kept = doc.read_bytes()
    store.delete("run/step-1")
    assert not doc.exists()
    # A delete that crashed after removing the manifest leaves the annotation behind: gc removes it.
    doc.write_bytes(kept)
    store.gc()
    assert not doc.exists()
    store.annotate("run/step-2", metrics={"y": 2.0})
    store.gc()
    assert store.info("run/step-2").metrics["y"] == 2.0


def test_bad_annotations_are_refused_and_a_damaged_document_is_named(two, ckpt):
    store = two
    with pytest.raises(InvalidArgument, match="Nothing to annotate"):
        store.annotate("run/step-1")
    with pytest.raises(InvalidArgument, match="not finite"):
        store.annotate("run/step-1", metrics={"loss": float("nan")})
    cid = store.resolve("run/step-1")
    (store.root / "annotations").mkdir(exist_ok=True)
    (store.root / "annotations" / f"{cid}.json").write_text("{not json")
    assert store.info("run/step-1").metrics == {"eval_loss": 0.5}  # listing still works
    with pytest.raises(CorruptObject, match="not a format-1 annotation"):
        store.annotate("run/step-1", metrics={"a": 1.0})

    r = ckpt("annotate", "run/step-2", store=store.root)
    assert r.code == 2 and "Nothing to annotate" in r.err
    r = ckpt("annotate", "run/step-2", "--metric", "acc=high", store=store.root)
    assert r.code == 2 and "not a number" in r.err
    r = ckpt("annotate", "run/step-3", "--metric", "acc=1", store=store.root)
    assert r.code == 1 and "Did you mean" in r.err


def test_cli_annotate(two, ckpt):
    r = ckpt("annotate", "run/step-2", "--metric", "test_acc=0.91", "--meta", "tags=[1,2]", "-m", "ok", "--json",
             store=two.root)
    assert r.code == 0, r.err
    data = json.loads(r.out)
    assert data["metrics"] == {"eval_loss": 0.7, "test_acc": 0.91}
    assert data["metadata"] == {"tags": [1, 2]} and data["message"] == "ok"
    r = ckpt("annotate", "run/step-1", "--metric", "test_acc=0.8", store=two.root)
    assert r.code == 0 and "Annotated run/step-1" in r.err and "test_acc=0.8" in r.err
