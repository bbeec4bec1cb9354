"""What `ckpt show` adds (issue 4): parameters per top-level module, the dtype breakdown and the lineage chain,
all read from the manifest."""

from __future__ import annotations

import json

import torch



def test_modules_dtypes_and_lineage(store, tiny_bert, ckpt):
    model = tiny_bert(cls_name="BertForSequenceClassification", num_labels=3)
    model.classifier.to(torch.bfloat16)
    store.save(model, "cls/step-1")
    store.save(model, "cls/step-2", parent="cls/step-1")
    store.save(model, "cls/step-3", parent="cls/step-2")
    store.delete("cls/step-1")

    details = store.describe("cls/step-3")
    by_module = details["parameters_by_module"]
    # "bert" holds nearly everything, so it is shown by its children; the head stays on its own.
    assert list(by_module) == ["bert.embeddings", "bert.encoder", "bert.pooler", "classifier"]
    assert by_module["classifier"] == 32 * 3 + 3
    assert by_module["bert.pooler"] == 32 * 32 + 32
    assert sum(by_module.values()) == store.manifest("cls/step-3").model["parameters"]
    assert details["dtype_breakdown"]["BF16"] == {"tensors": 2, "parameters": 99, "bytes": 198}
    assert details["dtype_breakdown"]["F32"]["parameters"] == sum(by_module.values()) - 99

    chain = details["lineage_chain"]
    assert [c["name"] for c in chain] == ["cls/step-3", "cls/step-2", None]
    assert chain[2]["deleted"] is True and chain[1]["step"] == 2

    shown = json.loads(ckpt("show", "cls/step-3", "--json").out)
    assert shown["parameters_by_module"] == by_module and shown["lineage_chain"] == chain
    text = ckpt("show", "cls/step-3").out
    assert "bert.encoder: " in text
