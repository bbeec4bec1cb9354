"""Collections, --where and families on both backends of the storage seam (the local folder and the in-memory one,
whose guard fails any test that touches a store file above the seam): they live in documents only."""

from __future__ import annotations

import pytest
import torch
from conftest import make_tiny_bert

from ckptstore.errors import InCollection
from ckptstore.policies import RetentionPolicy

from .test_store_conformance import subject  # noqa: F401  (the fixture: a store on each backend)


def test_collections_keep_checkpoints_through_prune_and_guard_deletes(subject):  # noqa: F811
    store = subject.store
    model = make_tiny_bert(cls_name="BertForSequenceClassification")
    store.save(model, "run/step-1", metrics={"eval_accuracy": 0.9})
    store.collection_create("release", "v1")
    store.collection_add("release", "run/step-1", note="ship")
    assert "collections/release.json" in subject.document_keys("collections/")
    store.set_policy("run", RetentionPolicy(keep_last=1))
    for step in (2, 3):
        with torch.no_grad():
            model.classifier.weight.add_(1.0)
        store.save(model, f"run/step-{step}", metrics={"eval_accuracy": 0.5})
    assert {c.name for c in store.list()} == {"run/step-1", "run/step-3"}
    kept = {d.checkpoint.name: d.reasons for d in store.prune("run", dry_run=True).plan.keep}
    assert "in collection release" in kept["run/step-1"]
    store.gc()
    assert set(store.manifest("run/step-1").blob_refs()) <= subject.blob_digests()

    with pytest.raises(InCollection):
        store.delete("run/step-1")
    assert store.delete("run/step-1", force=True).collections == (("run/step-1", "release"),)
    assert store.collection("release").items == ()
    store.collection_delete("release")
    assert subject.document_keys("collections/") == set()


def test_where_and_family_on_the_backend(subject):  # noqa: F811
    store = subject.store
    base = store.save(make_tiny_bert(), "base/v1")
    store.save(make_tiny_bert(seed=1, cls_name="BertForMaskedLM"), "mlm/step-1", parent="base/v1",
               metrics={"eval_loss": 0.7})
    assert [c.name for c in store.query(["model_type=bert", "eval_loss<1", "architecture=BertForMaskedLM"])] == [
        "mlm/step-1"]
    assert [c.name for c in store.query("parameters>0")] == ["mlm/step-1", "base/v1"]
    assert [(m.name, m.relation) for m in store.family("mlm/step-1")] == [("base/v1", "base"),
                                                                         ("mlm/step-1", "fine-tune")]
    assert store.model_info("mlm/step-1").base_model == base.name
    store.reindex()
    assert [c.name for c in store.query("architecture~maskedlm")] == ["mlm/step-1"]
