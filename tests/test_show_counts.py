"""`ckpt show` and `ckpt validate` count parameters the same way (buffers such as position_ids are not
parameters), and show says what a user asks of it plainly: metadata as key: value lines, which transformers wrote
the config and which environment stored it, and the tensors with their shapes and dtypes."""

from __future__ import annotations

import json

import pytest
import torch


def _shown(ckpt, ref: str) -> dict:
    result = ckpt("show", ref, "--json")
    assert result.code == 0, result.err
    return json.loads(result.out)


def test_show_and_validate_agree_on_the_real_minilm(store, minilm_dir, ckpt):
    """MiniLM's safetensors holds the embeddings' position_ids buffer (512 int64 values): stored, not a parameter."""
    from transformers import BertModel

    store.save(minilm_dir, "minilm/v1")
    real = sum(p.numel() for p in BertModel.from_pretrained(minilm_dir).parameters())
    assert real == 22_713_216
    assert store.validate("minilm/v1").parameters == real
    assert store.manifest("minilm/v1").model["parameters"] == real
    shown = _shown(ckpt, "minilm/v1")
    assert shown["model"]["parameters"] == shown["parameters"] == real
    assert shown["model"]["dtypes"] == {"F32": real}
    assert shown["buffers"] == {"embeddings.position_ids": 512}
    assert sum(shown["parameters_by_module"].values()) == real
    assert shown["dtype_breakdown"]["I64"] == {"tensors": 1, "parameters": 0, "bytes": 4096}
    text = ckpt("show", "minilm/v1").out
    (line,) = [row for row in text.splitlines() if row.startswith("parameters  ")]
    assert "22,713,216" in line and "22,713,728" not in text and "embeddings.position_ids" in line


@pytest.mark.parametrize("cls_name", ["BertModel", "BertForSequenceClassification", "BertForMaskedLM"])
def test_show_and_validate_agree_on_tiny_berts(store, tiny_bert, ckpt, cls_name):
    model = tiny_bert(cls_name=cls_name)
    store.save(model, "tiny/v1")
    real = sum(p.numel() for p in model.parameters())
    assert store.validate("tiny/v1").parameters == real == _shown(ckpt, "tiny/v1")["parameters"]


def test_batchnorm_statistics_are_buffers_too(store, ckpt):
    """A tiny real ResNet: BatchNorm's running_mean, running_var and num_batches_tracked are stored, not trained."""
    import transformers

    torch.manual_seed(0)
    model = transformers.ResNetModel(
        transformers.ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], num_channels=3)).eval()
    store.save(model, "resnet/v1")
    real = sum(p.numel() for p in model.parameters())
    shown = _shown(ckpt, "resnet/v1")
    assert store.validate("resnet/v1").parameters == real == shown["parameters"]
    assert {name.rsplit(".", 1)[1] for name in shown["buffers"]} == {"running_mean", "running_var",
                                                                     "num_batches_tracked"}


def test_metadata_is_key_value_lines_not_a_python_repr(store, tiny_bert, ckpt):
    store.save(tiny_bert(), "m/v1", metadata={"dataset": {"name": "sst2", "split": "train"}, "lrs": [0.1, 0.01],
                                              "note": "[bold]kept as typed[/]"})
    lines = ckpt("show", "m/v1").out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("metadata "))
    values = [line.split(None, 1)[1] if i == 0 else line.strip() for i, line in enumerate(lines[start:start + 3])]
    assert values == ['dataset: {"name": "sst2", "split": "train"}', "lrs: [0.1, 0.01]", "note: [bold]kept as typed[/]"]
    assert "{'name'" not in "\n".join(lines)


def test_the_config_version_and_the_storing_environment_are_told_apart(store, minilm_dir, ckpt):
    import transformers

    store.save(minilm_dir, "minilm/v1")
    rows = {line.split("  ", 1)[0]: line.split("  ", 1)[1].strip() for line in ckpt("show", "minilm/v1").out.splitlines()
            if "  " in line and not line.startswith(" ")}
    assert rows["config written by"] == "transformers 4.8.2 (config.json's transformers_version)"
    assert f"transformers {transformers.__version__}" in rows["stored from"]
    assert rows["stored from"].endswith("(the environment that saved it into the store)")
    assert "saved with" not in rows


def test_tensors_in_json_and_with_the_tensors_flag(store, minilm_dir, ckpt):
    store.save(minilm_dir, "minilm/v1")
    manifest = store.manifest("minilm/v1")
    stored = [(t.name, t.dtype, list(t.shape)) for f in manifest.files if f.path == "model.safetensors"
              for t in f.tensors]
    shown = _shown(ckpt, "minilm/v1")["tensors"]
    assert [(t["name"], t["dtype"], t["shape"]) for t in shown] == stored and len(stored) == 104
    assert {t["name"] for t in shown if not t["parameter"]} == {"embeddings.position_ids"}

    plain = ckpt("show", "minilm/v1").out
    assert "embeddings.word_embeddings.weight" not in plain  # the table only when asked for
    table = ckpt("show", "minilm/v1", "--tensors").out.splitlines()
    rows = {line.split()[0]: line.split(None, 1)[1] for line in table[table.index(next(
        line for line in table if line.startswith("tensors"))) + 2:]}
    assert len(rows) == 104
    assert rows["embeddings.word_embeddings.weight"].split() == ["F32", "[30522,", "384]", "11,720,448"]
    assert rows["embeddings.position_ids"].split() == ["I64", "[1,", "512]", "buffer"]
