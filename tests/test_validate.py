"""`Store.validate` and `ckpt validate` on real checkpoints: a good one and the real MiniLM pass; a NaN, a removed
tensor, an unknown model_type and a wrong head each fail, naming what is wrong."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from ckptstore.errors import ValidationFailed


def test_good_checkpoint_passes(store, tiny_bert):
    model = tiny_bert()
    store.save(model, "run/step-1")
    report = store.validate("run/step-1")
    assert report.ok, report.findings
    assert report.model_class == "BertModel"
    assert report.parameters == sum(p.numel() for p in model.parameters())
    assert report.dtypes == {"float32": report.parameters}
    assert (report.missing_keys, report.unexpected_keys, report.mismatched_keys, report.nonfinite_tensors) == ((),) * 4
    assert report.input_kind == "dummy ids" and report.output_shape == (1, 8, 32) and report.output_finite
    # No tokenizer is a warning, not an error.
    assert [w.message for w in report.warnings] == ["no tokenizer stored; the forward pass used dummy token ids"]
    assert report.compatibility.saved_with == report.compatibility.installed
    assert report.raise_for_errors() is report
    data = report.to_json()
    assert json.loads(json.dumps(data)) == data and data["ok"] is True


def test_real_minilm_passes_with_its_tokenizer(store, minilm_dir):
    store.save(minilm_dir, "minilm/v1")
    report = store.validate("minilm/v1", text="Checkpoints belong in a store.")
    assert report.ok and not report.findings, report.findings
    assert report.tokenizer_class is not None and report.input_kind == "text"
    assert report.output_shape[0] == 1 and report.output_shape[2] == 384 and report.output_shape[1] > 3
    assert report.compatibility.saved_with == "4.8.2"  # MiniLM's config records the version that saved it


def test_a_tokenizer_larger_than_the_embedding_is_named(store, tiny_bert, minilm_dir):
    """A small-vocabulary model saved with a 30,522-token tokenizer: the forward pass fails with torch's 'index
    out of range in self'; validate says which two things disagree."""
    from transformers import AutoTokenizer

    model = tiny_bert()
    store.save(model, "mix/step-1", tokenizer=AutoTokenizer.from_pretrained(minilm_dir))
    report = store.validate("mix/step-1", text="Checkpoints belong in a store.")
    assert not report.ok
    message = report.errors[0].message
    assert "the tokenizer has 30,522 tokens but the model's embedding only" in message, message
    assert f"{model.config.vocab_size:,}" in message and "resize_token_embeddings" in report.errors[0].hint


def test_nan_and_inf_fail_naming_the_tensors(store, tiny_bert, ckpt):
    """The stored tensors are scanned, so the verdict does not hang on the forward pass: a NaN in the query weights
    does not reach the output through torch's CPU SDPA kernel (its softmax max drops it), yet the checkpoint is
    unfit all the same."""
    model = tiny_bert()
    with torch.no_grad():
        model.encoder.layer[0].attention.self.query.weight[3, 4] = float("nan")
        model.pooler.dense.bias[0] = float("inf")
    store.save(model, "run/step-2")
    report = store.validate("run/step-2")
    assert not report.ok
    bad = {t.name: (t.nan, t.inf) for t in report.nonfinite_tensors}
    assert bad == {"encoder.layer.0.attention.self.query.weight": (1, 0), "pooler.dense.bias": (0, 1)}
    messages = [e.message for e in report.errors]
    assert "tensor 'encoder.layer.0.attention.self.query.weight' contains 1 NaN" in messages
    with pytest.raises(ValidationFailed, match="encoder.layer.0.attention.self.query.weight") as exc:
        report.raise_for_errors()
    assert exc.value.report is report

    result = ckpt("validate", "run/step-2")
    assert result.code == 1
    assert "INVALID" in result.out and "encoder.layer.0.attention.self.query.weight" in result.out
    as_json = json.loads(ckpt("validate", "run/step-2", "--json").out)
    assert as_json["ok"] is False
    assert {t["name"] for t in as_json["nonfinite_tensors"]} == set(bad)


def test_a_nan_that_reaches_the_output_fails_the_forward_pass(store, tiny_bert):
    """A NaN in the encoder's last LayerNorm scales the output itself: no later reduction can drop it, so every
    kernel (eager, SDPA, any CPU) gives a NaN output."""
    model = tiny_bert()
    with torch.no_grad():
        model.encoder.layer[-1].output.LayerNorm.weight[4] = float("nan")
    store.save(model, "run/step-3")
    report = store.validate("run/step-3")
    assert not report.ok and report.output_finite is False and report.output_shape == (1, 8, 32)
    messages = [e.message for e in report.errors]
    assert "tensor 'encoder.layer.1.output.LayerNorm.weight' contains 1 NaN" in messages
    assert any(m.startswith("forward pass output last_hidden_state") and "not finite" in m for m in messages), messages


def test_removed_tensor_fails_naming_the_missing_key(store, tiny_bert, tmp_path):
    folder = tmp_path / "cut"
    tiny_bert().save_pretrained(folder)
    weights = load_file(folder / "model.safetensors")
    del weights["encoder.layer.1.output.dense.weight"]
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    store.save(folder, "run/cut")
    report = store.validate("run/cut")
    assert not report.ok
    assert report.missing_keys == ("encoder.layer.1.output.dense.weight",)
    assert any("encoder.layer.1.output.dense.weight" in e.message for e in report.errors)


def test_unknown_model_type_fails_with_upgrade_hint(store, tiny_bert, tmp_path, ckpt):
    folder = tmp_path / "future"
    tiny_bert().save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    config.update(model_type="bert-from-the-future", architectures=["BertFromTheFutureModel"],
                  transformers_version="99.1.0")
    (folder / "config.json").write_text(json.dumps(config))
    store.save(folder, "future/v1")
    report = store.validate("future/v1")
    assert not report.ok
    compat = report.compatibility
    assert (compat.model_type_known, compat.newer, compat.unknown_architectures) == (
        False, True, ("BertFromTheFutureModel",))
    (error,) = report.errors
    assert "'bert-from-the-future' is unknown to transformers" in error.message and "99.1.0" in error.message
    assert "Upgrade transformers" in error.hint

    result = ckpt("validate", "future/v1")
    assert result.code == 1 and "hint: Upgrade transformers" in result.out


def test_wrong_head_fails_with_missing_classifier(store, tiny_bert, ckpt):
    store.save(tiny_bert(), "base/v1")
    report = store.validate("base/v1", cls="AutoModelForSequenceClassification")
    assert not report.ok
    assert report.model_class == "BertForSequenceClassification"
    assert set(report.missing_keys) == {"classifier.weight", "classifier.bias"}
    # The checkpoint's own architecture is the default, so without --cls it passes.
    assert store.validate("base/v1").ok
    assert ckpt("validate", "base/v1", "--cls", "AutoModelForSequenceClassification").code == 1
    unknown = ckpt("validate", "base/v1", "--cls", "NoSuchModel")
    assert unknown.code == 2 and "NoSuchModel" in unknown.err
