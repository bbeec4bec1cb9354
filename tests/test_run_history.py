"""The Store methods the web view added: a run's storage over time, bytes per run, children, deleted checkpoints."""

from __future__ import annotations

import torch


def _model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Linear(8, 8))


def test_storage_growth_counts_each_blob_once_in_save_order(store):
    m = _model()
    first = store.save(m, "r/step-1")
    second = store.save(m, "r/step-2")  # identical: adds nothing but its config-less manifest's blobs
    with torch.no_grad():
        m[1].weight.add_(1.0)
    third = store.save(m, "r/step-3")
    growth = store.storage_growth("r")
    assert [g.name for g in growth] == ["r/step-1", "r/step-2", "r/step-3"]
    assert growth[0].new_bytes == store.du().stored_bytes - growth[2].new_bytes
    assert growth[1].new_bytes == 0 == second.new_bytes
    assert growth[2].new_bytes == third.new_bytes > 0  # the changed layer's blob (and the file header)
    assert [g.folders_bytes for g in growth] == [first.logical_bytes * k for k in (1, 2, 3)]
    assert growth[-1].stored_bytes == store.run_stored_bytes()["r"] == store.du().stored_bytes
    assert growth[0].to_json()["new_bytes"] == growth[0].new_bytes


def test_run_stored_bytes_counts_shared_blobs_in_each_run(store):
    store.save(_model(0), "a/step-1")
    store.save(_model(0), "b/step-1")  # the same weights in another run
    store.save(_model(1), "b/step-2")
    stored = store.run_stored_bytes()
    unique = {r.run: r.unique_bytes for r in store.du().runs}
    assert stored["a"] > 0 and unique["a"] == 0  # everything of a is shared with b
    assert stored["b"] > stored["a"] and unique["b"] == stored["b"] - stored["a"]
    assert store.du().stored_bytes == stored["b"]


def test_run_summaries(store):
    store.save(_model(0), "a/step-1", metrics={"eval_loss": 0.5})
    best = store.save(_model(1), "a/step-2", metrics={"eval_loss": 0.4})
    store.save(_model(2), "a/step-3", metrics={"eval_loss": 0.6})
    store.save(_model(3), "b/final")  # no step, no metric
    summaries = {r.run: r for r in store.run_summaries()}
    assert list(summaries) == ["a", "b"]
    a = summaries["a"]
    assert (a.checkpoints, a.latest_step, a.best.id, a.best.tags) == (3, 3, best.id, ("best",))
    assert a.logical_bytes == sum(c.logical_bytes for c in store.list("a"))
    assert a.last_saved == max(c.created_at for c in store.list("a"))
    assert (summaries["b"].latest_step, summaries["b"].best) == (None, None)


def test_children_and_deleted(store):
    store.save(_model(), "r/step-1")
    kid = store.save(_model(1), "r/step-2", parent="r/step-1")
    other = store.save(_model(2), "r/final", parent="r/step-1")
    assert [c.name for c in store.children("r/step-1")] == sorted([kid.name, other.name])
    assert store.children("r/step-2") == []
    assert store.deleted() == []
    store.save(_model(3), "s/step-5")
    store.delete(["r/step-2", "s/step-5"])
    gone = {d.name: d for d in store.deleted()}
    assert set(gone) == {"r/step-2", "s/step-5"} and gone["r/step-2"].step == 2 and gone["r/step-2"].id == kid.id
    assert [d.name for d in store.deleted("s")] == ["s/step-5"]
    # Records never change: names already known are not read again, and unknown ones still are.
    assert {d.name for d in store.deleted(known={kid.id: "r/step-2"})} == {"r/step-2", "s/step-5"}
