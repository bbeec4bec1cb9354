"""`ckpt info` / Store.model_info: what huggingface_hub's model_info gives, for stored checkpoints: the real
all-MiniLM-L6-v2 (with its model card) and tiny real transformers models of several heads."""

from __future__ import annotations

import hashlib
import json

import pytest
import transformers
from conftest import make_tiny_bert

from ckptstore._core.pipeline import pipeline_for


@pytest.fixture
def minilm(store, minilm_dir):
    store.import_folder(minilm_dir, run="minilm")
    return store


def test_info_json_of_minilm_gives_the_hub_fields(minilm, minilm_dir, ckpt):
    r = ckpt("info", "minilm/model", "--json", "--sha256", store=minilm.root)
    assert r.code == 0, r.err
    info = json.loads(r.out)
    assert info["name"] == "minilm/model" and info["id"] == minilm.resolve("minilm:latest")
    assert info["model_type"] == "bert" and info["architectures"] == ["BertModel"]
    # The card's own pipeline tag and library win over the rule on the class name (BertModel: feature-extraction).
    assert info["pipeline_tag"] == "sentence-similarity" and info["library_name"] == "sentence-transformers"
    assert info["auto_model"] == "AutoModel"
    model = transformers.AutoModel.from_pretrained(minilm_dir)
    assert info["parameters"] == sum(p.numel() for p in model.parameters()) == 22_713_216
    assert info["dtypes"] == {"F32": 22_713_216} == info["safetensors"]["parameters"]
    assert info["safetensors"]["total"] == 22_713_216
    on_disk = {p.relative_to(minilm_dir).as_posix(): p for p in minilm_dir.rglob("*") if p.is_file()}
    assert info["size"] == sum(p.stat().st_size for p in on_disk.values())
    assert {f["path"]: (f["size"], f["sha256"]) for f in info["files"]} == {
        rel: (p.stat().st_size, hashlib.sha256(p.read_bytes()).hexdigest()) for rel, p in on_disk.items()}
    assert all(len(f["digest"]) == 64 for f in info["files"])
    card = info["card_data"]
    assert card["license"] == "apache-2.0" and card["language"] == "en" and "s2orc" in card["datasets"]
    assert info["card_summary"].startswith("This is a [sentence-transformers](https://www.SBERT.net) model: It maps")
    for tag in ("sentence-transformers", "safetensors", "bert", "sentence-similarity", "license:apache-2.0",
                "dataset:s2orc", "en"):
        assert tag in info["tags"]
    assert info["store_tags"] == ["minilm:latest"] and info["base_model"] is None and info["collections"] == []


def test_info_without_a_card_derives_pipeline_and_lists_collections(store, ckpt):
    model = make_tiny_bert(cls_name="BertForSequenceClassification", num_labels=3)
    store.save(model, "sst2/step-10", metrics={"eval_accuracy": 0.75}, tags=["v1"])
    store.collection_create("release")
    store.collection_add("release", "sst2:v1")
    mi = store.model_info("sst2/step-10")
    assert (mi.pipeline_tag, mi.auto_model, mi.library_name) == (
        "text-classification", "AutoModelForSequenceClassification", "transformers")
    assert mi.parameters == sum(p.numel() for p in model.parameters())
    assert mi.card_data is None and mi.card_summary is None and mi.collections == ("release",)
    assert set(mi.store_tags) == {"sst2:v1", "sst2:latest"} and mi.metrics == {"eval_accuracy": 0.75}
    assert [f.path for f in mi.files] == ["config.json", "model.safetensors"]
    assert all(f.sha256 is None for f in mi.files)
    r = ckpt("info", "sst2:v1", store=store.root)
    assert r.code == 0
    rows = {line.split(None, 1)[0]: line.split(None, 1)[1].strip() for line in r.out.splitlines()
            if line and not line.startswith(" ") and len(line.split(None, 1)) == 2}
    assert rows["name"] == "sst2/step-10" and rows["collections"] == "release" and rows["library"] == "transformers"
    assert "pipeline tag  text-classification" in r.out and "AutoModelForSequenceClassification" in r.out
    missing = ckpt("info", "sst2/step-11", store=store.root)
    assert missing.code == 1 and "Did you mean 'sst2/step-10'" in missing.err


@pytest.mark.parametrize("cls_name, config", [
    ("BertForMaskedLM", None), ("BertForTokenClassification", None), ("BertForQuestionAnswering", None),
    ("BertForSequenceClassification", None), ("BertModel", None),
    ("GPT2LMHeadModel", transformers.GPT2Config(n_embd=16, n_layer=1, n_head=2, vocab_size=50, n_positions=16)),
    ("T5ForConditionalGeneration", transformers.T5Config(d_model=16, d_ff=32, num_layers=1, num_heads=2,
                                                         d_kv=8, vocab_size=50)),
])
def test_pipeline_rule_names_the_auto_class_that_builds_the_architecture(cls_name, config):
    """The Auto class the rule gives really builds that architecture from its config, in the installed
    transformers (so the rule and transformers' own mappings agree)."""
    config = config or make_tiny_bert().config
    tag, auto = pipeline_for(cls_name, config.model_type)
    assert tag is not None
    assert type(getattr(transformers, auto).from_config(config)).__name__ == cls_name
