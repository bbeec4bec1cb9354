"""`store.load` with arguments a user gets wrong: every failure is a CkptError naming the argument and what to do,
never a raw TypeError/ValueError/AssertionError from deep inside from_pretrained, and never blamed on the
transformers version or the checkpoint."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoTokenizer

from ckptstore.errors import CkptError, CompatibilityWarning, InvalidArgument, InvalidCheckpoint


@pytest.fixture
def newer(store, tiny_bert, tmp_path):
    """A checkpoint whose config says a newer transformers saved it (as one from a colleague's machine does)."""
    folder = tmp_path / "newer"
    tiny_bert().save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    config["transformers_version"] = "9.1.0"
    (folder / "config.json").write_text(json.dumps(config))
    store.save(folder, "bert/newer")
    return "bert/newer"


@pytest.mark.parametrize("materialize", [False, True])
def test_a_misspelt_keyword_is_a_usage_error_not_the_version(store, newer, materialize):
    with pytest.warns(CompatibilityWarning), pytest.raises(InvalidArgument) as exc:
        store.load(newer, dtyp=torch.float16, materialize=materialize)
    err = exc.value
    assert "unexpected keyword argument 'dtyp'" in err.message and "Did you mean 'dtype'?" in err.message
    assert "9.1.0" not in err.message + err.hint and "pgrade" not in err.message + err.hint
    assert err.exit_code == 2 and isinstance(err, ValueError)


def test_a_misspelt_config_attribute_is_suggested(store, tiny_bert):
    store.save(tiny_bert(cls_name="BertForSequenceClassification"), "cls/v1")
    with pytest.raises(InvalidArgument, match=r"'num_label'.* Did you mean 'num_labels'\?"):
        store.load("cls/v1", num_label=3)
    # The right spelling still works: a new 3-way head.
    assert store.load("cls/v1", num_labels=3, ignore_mismatched_sizes=True).classifier.out_features == 3


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA, so device_map='cuda' is valid")
@pytest.mark.parametrize("device_map", ["cuda", "cuda:0", torch.device("cuda"), {"": 0}])
def test_cuda_without_cuda_says_to_load_on_the_cpu(store, tiny_bert, device_map):
    store.save(tiny_bert(), "bert/v1")
    with pytest.raises(InvalidArgument) as exc:
        store.load("bert/v1", device_map=device_map)
    assert exc.value.message.startswith("CUDA is not available on this machine")
    assert "device_map='cpu' or 'auto'" in exc.value.hint
    assert {p.device.type for p in store.load("bert/v1", device_map="cpu").parameters()} == {"cpu"}


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"dtype": "float17"}, "dtype='float17'"),
        ({"dtype": 3}, "dtype=3"),
        ({"device_map": "gpu"}, "device_map='gpu'"),
        ({"attn_implementation": "nope"}, "attn_implementation='nope'"),
        ({"num_labels": "x"}, "num_labels='x'"),
    ],
)
def test_a_bad_value_names_the_argument(store, tiny_bert, kwargs, named):
    store.save(tiny_bert(), "bert/v1")
    with pytest.raises(InvalidArgument) as exc:
        store.load("bert/v1", **kwargs)
    assert named in exc.value.message and "\n" not in exc.value.message and exc.value.hint


@pytest.mark.parametrize("cls", [123, "AutoModel", AutoTokenizer])
def test_cls_that_is_not_a_model_class(store, tiny_bert, cls):
    store.save(tiny_bert(), "bert/v1")
    with pytest.raises(InvalidArgument) as exc:
        store.load("bert/v1", cls)
    assert exc.value.hint


def test_a_checkpoint_that_fails_without_any_argument_is_the_checkpoints_error(store, tiny_bert, tmp_path):
    """An activation the installed transformers does not have, in a config from this version: transformers raises
    a KeyError from its activation table; the user gets the checkpoint named and the command that explains it."""
    folder = tmp_path / "odd"
    tiny_bert().save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    config["hidden_act"] = "gelu_nobody_has"
    (folder / "config.json").write_text(json.dumps(config))
    store.save(folder, "bert/odd")
    with pytest.raises(InvalidCheckpoint) as exc:
        store.load("bert/odd")
    assert exc.value.message.startswith("Cannot load 'bert/odd': from_pretrained failed (")
    assert "gelu_nobody_has" in exc.value.message and "ckpt validate bert/odd" in exc.value.hint
    assert isinstance(exc.value, CkptError) and not isinstance(exc.value, InvalidArgument)
