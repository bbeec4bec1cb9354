"""`Store.diff` and `ckpt diff`: exactly the modified layer is named, unchanged tensors are never read, and config,
file and tensor-shape changes are all reported."""

from __future__ import annotations

import json
import math

import torch
from safetensors.torch import load_file, save_file

from ckptstore._ops.diff import tensor_delta
from storefiles import blob_path


def _layer_names(model, prefix: str) -> set[str]:
    return {n for n, _ in model.named_parameters() if n.startswith(prefix)}


def test_one_modified_layer_is_named_exactly(store, tiny_bert, ckpt):
    model = tiny_bert()
    store.save(model, "run/step-1")
    with torch.no_grad():
        for i, p in enumerate(model.encoder.layer[1].parameters()):
            p.add_(0.01 * (i + 1))  # different sizes of change, so the order is meaningful
    store.save(model, "run/step-2", parent="run/step-1")

    d = store.diff("run/step-1", "run/step-2")
    changed = [t.name for t in d.tensors_changed]
    assert set(changed) == _layer_names(model, "encoder.layer.1.")
    total = len(list(model.parameters()))
    assert d.tensors_unchanged == total - len(changed) and d.tensors_read == len(changed)
    assert not (d.tensors_added or d.tensors_removed or d.tensors_reshaped or d.config)
    assert [(f.path, f.change) for f in d.files] == [("model.safetensors", "changed")] and d.files_unchanged == 1
    rel = [t.rel_l2 for t in d.tensors_changed]
    assert rel == sorted(rel, reverse=True) and all(r > 0 for r in rel)
    biggest = d.tensors_changed[-1]
    assert math.isclose(biggest.max_abs, 0.01 * (1 + [n for n, _ in model.encoder.layer[1].named_parameters()]
                                                  .index(biggest.name.removeprefix("encoder.layer.1."))), rel_tol=1e-3)

    result = ckpt("diff", "run/step-1", "run/step-2")
    assert result.code == 0
    named = {line.split()[0] for line in result.out.splitlines() if line.startswith("encoder.")}
    assert named == set(changed)
    data = json.loads(ckpt("diff", "run/step-1", "run/step-2", "--json").out)
    assert [t["name"] for t in data["tensors"]["changed"]] == changed
    assert data["tensors"]["unchanged"] == d.tensors_unchanged


def test_unchanged_tensors_are_not_read(store, tiny_bert):
    model = tiny_bert()
    store.save(model, "run/a")
    with torch.no_grad():
        model.pooler.dense.weight.mul_(2)
    store.save(model, "run/b")
    # Delete every blob the two checkpoints share: a diff that read an unchanged tensor would now fail.
    shared = set(store.manifest("run/a").blob_refs()) & set(store.manifest("run/b").blob_refs())
    header_and_config = {f.blobs[0].digest for f in store.manifest("run/a").files}
    for digest in shared - header_and_config:
        blob_path(store, digest).unlink()
    d = store.diff("run/a", "run/b")
    assert [t.name for t in d.tensors_changed] == ["pooler.dense.weight"]
    assert math.isclose(d.tensors_changed[0].rel_l2, 1.0, rel_tol=1e-6)
    assert d.tensors_read == 1 and d.tensors_unchanged == len(list(model.parameters())) - 1


def test_config_files_and_shapes(store, tiny_bert, tmp_path):
    a = tmp_path / "a"
    tiny_bert().save_pretrained(a)
    store.save(a, "run/a")
    b = tmp_path / "b"
    tiny_bert(vocab_size=120, hidden_dropout_prob=0.2).save_pretrained(b)
    weights = load_file(b / "model.safetensors")
    weights["extra.scale"] = torch.ones(3)
    del weights["pooler.dense.bias"]
    save_file(weights, b / "model.safetensors", metadata={"format": "pt"})
    (b / "NOTES.md").write_text("vocab grown\n")
    store.save(b, "run/b")

    d = store.diff("run/a", "run/b")
    config = {c.key: (c.old, c.new, c.change) for c in d.config}
    assert config == {"vocab_size": (99, 120, "changed"), "hidden_dropout_prob": (0.1, 0.2, "changed")}
    assert {(f.path, f.change) for f in d.files} == {
        ("NOTES.md", "added"), ("config.json", "changed"), ("model.safetensors", "changed")}
    assert [(t.name, t.new_shape) for t in d.tensors_added] == [("extra.scale", (3,))]
    assert [t.name for t in d.tensors_removed] == ["pooler.dense.bias"]
    assert [(t.name, t.old_shape, t.new_shape) for t in d.tensors_reshaped] == [
        ("embeddings.word_embeddings.weight", (99, 32), (120, 32))]
    # Same seed, so every other tensor is the same: only the re-initialised draws after the embedding differ.
    assert "embeddings.word_embeddings.weight" not in {t.name for t in d.tensors_changed}
    assert json.loads(json.dumps(d.to_json()))["tensors"]["reshaped"][0]["new_shape"] == [120, 32]


def test_tensor_delta_edge_cases():
    zero = torch.zeros(4)
    assert tensor_delta(zero, zero) == (0.0, 0.0)
    assert tensor_delta(zero, torch.ones(4)) == (math.inf, 1.0)
    rel, max_abs = tensor_delta(torch.tensor([3.0, 4.0]), torch.tensor([3.0, 5.0]))
    assert math.isclose(rel, 1 / 5) and max_abs == 1.0
    assert math.isnan(tensor_delta(torch.ones(2), torch.tensor([1.0, float("nan")]))[0])
    # bf16 against fp32 of the same values: a dtype change without a value change.
    x = torch.tensor([1.0, 2.0, 0.5])
    assert tensor_delta(x, x.to(torch.bfloat16)) == (0.0, 0.0)
