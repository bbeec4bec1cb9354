"""`ckpt ls --family` / Store.family: a model's family tree from lineage, over a real hub-cache import of
all-MiniLM-L6-v2, a real fine-tune of it (two optimizer steps, saved with their parents), a real bf16 conversion
and a second fine-tune branch."""

from __future__ import annotations

import copy
import json
import shutil

import pytest
import torch
from test_import import _hub_repo

from ckptstore import Store

REPO_ID = "sentence-transformers/all-MiniLM-L6-v2"
ROOT = f"sentence-transformers--all-MiniLM-L6-v2/rev-{'1' * 12}"


def _train_step(model, tokenizer) -> None:
    batch = tokenizer(["a cat sat on the mat", "stocks fell sharply"], return_tensors="pt", padding=True)
    opt = torch.optim.SGD(model.parameters(), lr=1e-2)
    model.train()
    model(**batch).last_hidden_state.pow(2).mean().backward()
    opt.step()
    opt.zero_grad()
    model.eval()


@pytest.fixture(scope="module")
def family_folder(tmp_path_factory, minilm_dir):
    """A store holding: import (hub cache) -> sts/step-1 (fine-tune) -> sts/step-2 (continued) ->
    sts/step-2-bf16 (conversion); import -> nli/step-1 (another fine-tune). Built once: tests copy it."""
    tmp = tmp_path_factory.mktemp("family")
    cache = tmp / "hub"
    _hub_repo(cache, REPO_ID, {"1" * 40: {p.relative_to(minilm_dir).as_posix(): p
                                           for p in minilm_dir.rglob("*") if p.is_file()}}, "1" * 40)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("HF_HUB_CACHE", str(cache))
        store = Store.init(tmp / "store")
        store.import_hf_cache()
        model, tokenizer = store.load(ROOT), store.load_tokenizer(ROOT)
        other = copy.deepcopy(model)
        _train_step(model, tokenizer)
        store.save(model, "sts/step-1", tokenizer=tokenizer, parent=ROOT, metrics={"eval_loss": 0.4})
        _train_step(model, tokenizer)
        store.save(model, "sts/step-2", tokenizer=tokenizer, parent="sts/step-1", metrics={"eval_loss": 0.3})
        store.convert("sts/step-2", dtype="bf16")
        _train_step(other, tokenizer)
        store.save(other, "nli/step-1", tokenizer=tokenizer, parent=ROOT)
        store.save(other, "unrelated/step-1")  # no lineage: in no family but its own
        store.close()
    return tmp / "store"


@pytest.fixture
def family_store(family_folder, tmp_path):
    shutil.copytree(family_folder, tmp_path / "store")
    store = Store.open(tmp_path / "store")
    yield store
    store.close()


EXPECTED = [
    (ROOT, "import", 0, f"hf cache {REPO_ID}@{'1' * 12}"),
    ("sts/step-1", "fine-tune", 1, ""),
    ("sts/step-2", "continued", 1, ""),
    ("sts/step-2-bf16", "conversion", 2, "bf16"),
    ("nli/step-1", "fine-tune", 1, ""),
]


def test_family_tree_is_the_same_from_every_member(family_store):
    for ref in (ROOT, "sts/step-1", "sts:latest", "sts/step-2-bf16", "nli/step-1"):
        members = family_store.family(ref)
        assert [(m.name, m.relation, m.depth, m.detail) for m in members] == EXPECTED
        assert [m.name for m in members if m.is_ref] == [family_store.info(ref).name]
    bf16 = family_store.family("sts/step-2-bf16")[3]
    assert bf16.parent == family_store.resolve("sts/step-2")
    assert family_store.load_state_dict("sts/step-2-bf16")["embeddings.word_embeddings.weight"].dtype == torch.bfloat16
    assert [m.name for m in family_store.family("unrelated/step-1")] == ["unrelated/step-1"]


def test_ls_family_cli_prints_the_tree_and_json(family_store, ckpt):
    r = ckpt("ls", "--family", "sts/step-2", store=family_store.root)
    assert r.code == 0, r.err
    lines = r.out.splitlines()
    assert len(lines) == 5
    assert lines[0].startswith(ROOT) and "import (hf cache" in lines[0]
    assert lines[1].startswith("  sts/step-1 ") and "fine-tune" in lines[1]
    assert lines[2].startswith("  sts/step-2 ") and lines[2].endswith("continued  <-")
    assert lines[3].startswith("    sts/step-2-bf16 ") and "conversion (bf16)" in lines[3]
    assert lines[4].startswith("  nli/step-1 ")
    j = json.loads(ckpt("ls", "--family", "nli/step-1", "--json", store=family_store.root).out)
    assert [(m["name"], m["relation"], m["depth"]) for m in j] == [(n, r, d) for n, r, d, _ in EXPECTED]
    assert [m["name"] for m in j if m["is_ref"]] == ["nli/step-1"]
    bad = ckpt("ls", "sts", "--family", "sts/step-2", store=family_store.root)
    assert bad.code == 2 and "--family" in bad.err


def test_a_deleted_base_is_the_root_by_id(family_store):
    root_id = family_store.resolve(ROOT)
    family_store.delete(ROOT)
    members = family_store.family("sts/step-2-bf16")
    assert members[0].id == root_id and members[0].info is None and members[0].relation == "deleted"
    assert [(m.name, m.depth) for m in members[1:]] == [
        ("sts/step-1", 1), ("sts/step-2", 1), ("sts/step-2-bf16", 2), ("nli/step-1", 1)]
    assert members[0].name == f"{root_id[:12]} (deleted)"


def test_model_info_names_the_base_model_from_lineage(family_store):
    # Imported from the hub cache: the Hub's own name for the base.
    assert family_store.model_info("sts/step-2").base_model == REPO_ID
    assert family_store.model_info("sts/step-2-bf16").base_model == REPO_ID
    assert family_store.model_info(ROOT).base_model is None
