"""`ckpt ls --where` / Store.query: filters on model facts, tags and metrics, answered by the index, on a store of
the real all-MiniLM-L6-v2, a tiny BERT classifier run, its bf16 conversion and a tiny GPT-2."""

from __future__ import annotations

import json
import shutil
import sqlite3

import pytest
import torch
import transformers
from conftest import make_tiny_bert

from ckptstore import Store
from ckptstore.errors import InvalidArgument

SST2 = {100: (0.80, 0.50), 200: (0.92, 0.30), 300: (0.95, 0.35)}


@pytest.fixture(scope="module")
def query_folder(tmp_path_factory, minilm_dir):
    path = tmp_path_factory.mktemp("query") / "store"
    store = Store.init(path)
    store.import_folder(minilm_dir, run="minilm")
    model = make_tiny_bert(cls_name="BertForSequenceClassification")
    for step, (acc, loss) in SST2.items():
        with torch.no_grad():
            model.classifier.weight.add_(0.1)
        store.save(model, f"sst2/step-{step}", metrics={"eval_accuracy": acc, "eval_loss": loss})
    store.tag("sst2/step-200", "prod")
    store.convert("sst2/step-300", dtype="bf16")
    torch.manual_seed(0)
    gpt = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_embd=16, n_layer=1, n_head=2, vocab_size=50,
                                                               n_positions=16))
    store.save(gpt, "gpt/step-1", metrics={"eval_accuracy": 0.91, "perplexity": 12.5})
    store.close()
    return path


@pytest.fixture
def qstore(query_folder, tmp_path):
    shutil.copytree(query_folder, tmp_path / "store")
    store = Store.open(tmp_path / "store")
    yield store
    store.close()


def names(infos) -> set[str]:
    return {c.name for c in infos}


@pytest.mark.parametrize("where, run, expected", [
    (["eval_accuracy>=0.9", "model_type=bert"], None, {"sst2/step-200", "sst2/step-300"}),
    (["eval_accuracy>=0.9"], None, {"sst2/step-200", "sst2/step-300", "gpt/step-1"}),
    (["eval_accuracy = 0.92"], None, {"sst2/step-200"}),
    (["eval_accuracy!=0.92", "model_type==bert"], None, {"sst2/step-100", "sst2/step-300"}),
    (["parameters > 1M"], None, {"minilm/model"}),
    (["parameters>=22713216", "parameters<=22713216"], None, {"minilm/model"}),
    (["parameters<1M", "dtype=bf16"], None, {"sst2/step-300-bf16"}),
    (["dtype=F32", "model_type=bert"], "sst2", {"sst2/step-100", "sst2/step-200", "sst2/step-300"}),
    (["dtype!=fp32"], None, {"sst2/step-300-bf16"}),
    (["tag=prod"], None, {"sst2/step-200"}),
    (["tag=sst2:prod"], None, {"sst2/step-200"}),
    (["tag!=prod"], "sst2", {"sst2/step-100", "sst2/step-300", "sst2/step-300-bf16"}),
    (["tag~lates"], None, {"minilm/model", "sst2/step-300", "gpt/step-1"}),
    (["architecture=GPT2LMHeadModel"], None, {"gpt/step-1"}),
    (["architecture~sequenceclass"], None, {"sst2/step-100", "sst2/step-200", "sst2/step-300", "sst2/step-300-bf16"}),
    (["model_type!=bert"], None, {"gpt/step-1"}),
    (["model_type~GP"], None, {"gpt/step-1"}),
    (["size>50MB"], None, {"minilm/model"}),
    (["name~step-3"], None, {"sst2/step-300", "sst2/step-300-bf16"}),
    (["step>=200", "run=sst2"], None, {"sst2/step-200", "sst2/step-300", "sst2/step-300-bf16"}),
    (["perplexity<20", "eval_accuracy>0.9"], None, {"gpt/step-1"}),
    (["eval_loss<0.1"], None, set()),
])
def test_where_combinations(qstore, where, run, expected):
    assert names(qstore.query(where, run=run)) == expected


def test_where_on_the_command_line_with_sort_and_json(qstore, ckpt):
    r = ckpt("ls", "--where", "eval_loss<0.4", "--where", "model_type=bert", "--sort", "eval_loss", "--json",
             store=qstore.root)
    assert r.code == 0, r.err
    assert [c["name"] for c in json.loads(r.out)] == ["sst2/step-200", "sst2/step-300"]
    r = ckpt("ls", "sst2", "--where", "eval_accuracy>=0.9", store=qstore.root)
    assert r.code == 0 and "sst2/step-200" in r.out and "sst2/step-100" not in r.out and "gpt" not in r.out
    r = ckpt("ls", "sst3", "--where", "eval_accuracy>=0.9", store=qstore.root)
    assert r.code == 1 and "Did you mean 'sst2'" in r.err


def test_annotated_metrics_are_what_where_sees(qstore):
    assert "sst2/step-100" not in names(qstore.query(["eval_accuracy>=0.9", "model_type=bert"]))
    qstore.annotate("sst2/step-100", metrics={"eval_accuracy": 0.97, "test_f1": 0.5})
    assert "sst2/step-100" in names(qstore.query(["eval_accuracy>=0.9", "model_type=bert"]))
    assert names(qstore.query("test_f1>0.4")) == {"sst2/step-100"}


@pytest.mark.parametrize("expr, message, hint", [
    ("eval_acuracy>=0.9", "no checkpoint records the metric 'eval_acuracy'. Did you mean 'eval_accuracy'?",
     "Keys: model_type"),
    ("model_tpye=bert", "'model_tpye' is no key, and a metric takes a number. Did you mean 'model_type'?",
     "KEY OP VALUE"),
    ("model_type", "Cannot read --where 'model_type'.", "KEY OP VALUE"),
    ("parameters>lots", "'lots' is not a count", "units: k, m, b"),
    ("eval_accuracy>=high", "'high' is not a number", "KEY OP VALUE"),
    ("model_type>bert", "model_type is text; it takes = != or ~, not >.", "model_type=bert"),
    ("eval_loss~0.3", "eval_loss is a number; ~ needs text.", "Use = != < <= > or >="),
    ("dtype~bf", "dtype takes = or !=.", "dtype=bf16"),
])
def test_bad_where_is_a_usage_error_with_a_one_line_hint(qstore, ckpt, expr, message, hint):
    r = ckpt("ls", "--where", expr, store=qstore.root)
    assert r.code == 2 and r.out == ""
    lines = r.err.splitlines()
    assert len(lines) == 2 and lines[0].startswith("error: ") and lines[1].startswith("hint: "), r.err
    assert message in lines[0] and hint in lines[1]
    with pytest.raises(InvalidArgument):
        qstore.query(expr)


def _facts_rows(store) -> int:
    with sqlite3.connect(store.root / "index.sqlite") as db:
        return db.execute("SELECT count(*) FROM model_facts WHERE id IN (SELECT id FROM checkpoints)").fetchone()[0]


def test_the_index_rebuilds_the_facts(qstore, ckpt):
    where = ["eval_accuracy>=0.9", "model_type=bert"]
    expected = names(qstore.query(where))
    # A rebuilt index (fsck --reindex) fills them again.
    assert ckpt("fsck", "--reindex", store=qstore.root).code == 0
    assert _facts_rows(qstore) == 6
    # An index written before the table existed: the table comes back empty, the next sync fills it.
    root = qstore.root
    qstore.close()
    with sqlite3.connect(root / "index.sqlite") as db:
        db.execute("DROP TABLE model_facts")
    again = Store.open(root)
    assert names(again.query(where)) == expected and _facts_rows(again) == 6
    again.close()
    # A deleted index: rebuilt on open, facts included.
    for p in root.glob("index.sqlite*"):
        p.unlink()
    r = ckpt("ls", "--where", "parameters>1M", "--json", store=root)
    assert [c["name"] for c in json.loads(r.out)] == ["minilm/model"]
