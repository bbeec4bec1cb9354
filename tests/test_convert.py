"""`Store.convert` / `ckpt convert`: a new checkpoint (parent: REF) whose safetensors weights load with from_pretrained
and give the source's outputs within the target dtype's tolerance; ties handled as save_pretrained handles them."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import make_tiny_bert

from ckptstore import InvalidArgument, NameExists

IDS = torch.tensor([[2, 17, 33, 5, 64, 3]])


def _outputs(model) -> torch.Tensor:
    with torch.no_grad():
        out = model(IDS)
    return (out.logits if hasattr(out, "logits") else out.last_hidden_state).float()


def test_minilm_to_fp16_keeps_tokenizer_and_outputs(store, minilm_dir, tmp_path):
    from transformers import AutoModel, AutoTokenizer

    store.save(minilm_dir, "minilm/v1")
    info = store.convert("minilm/v1", dtype="fp16")
    assert info.name == "minilm/v1-fp16"
    assert info.parent == store.resolve("minilm/v1")
    assert info.metadata["converted"]["dtype"] == "fp16" and info.metadata["converted"]["via"] == "model"
    source, converted = store.manifest("minilm/v1"), store.manifest(info.name)
    assert set(converted.model["dtypes"]) == {"F16"}
    # Files other than the weights and config are carried over as they are, without a byte written.
    for path in ("tokenizer.json", "vocab.txt", "modules.json", "1_Pooling/config.json", "README.md"):
        assert converted.file(path).digest == source.file(path).digest

    out = store.export(info.name, tmp_path / "fp16")
    assert json.loads((out / "config.json").read_text())["dtype"] == "float16"
    tok = AutoTokenizer.from_pretrained(out)
    batch = tok(["A checkpoint store for Hugging Face models."], return_tensors="pt")
    with torch.no_grad():
        want = AutoModel.from_pretrained(minilm_dir).eval()(**batch).last_hidden_state
        got = AutoModel.from_pretrained(out).eval()(**batch).last_hidden_state
    assert got.dtype == torch.float16
    torch.testing.assert_close(got.float(), want, rtol=0, atol=2e-2)


def test_tied_model_to_bf16_and_sharded_fp32(store, tmp_path):
    from transformers import AutoModelForMaskedLM

    model = make_tiny_bert(seed=3, cls_name="BertForMaskedLM")
    store.save(model, "mlm/base")
    bf16 = store.convert("mlm/base", dtype="bf16")
    weights = store.manifest(bf16.name).file("model.safetensors")
    # safetensors forbids aliases: the decoder weight is dropped, as save_pretrained drops it, and re-tied on load.
    assert "cls.predictions.decoder.weight" not in {t.name for t in weights.tensors}
    loaded = AutoModelForMaskedLM.from_pretrained(store.export(bf16.name, tmp_path / "bf16")).eval()
    assert loaded.dtype == torch.bfloat16
    assert loaded.cls.predictions.decoder.weight.data_ptr() == loaded.bert.embeddings.word_embeddings.weight.data_ptr()
    torch.testing.assert_close(_outputs(loaded), _outputs(model), rtol=0, atol=5e-2)

    sharded = store.convert("mlm/base", dtype="fp32", max_shard_size="20KB", name="mlm/sharded")
    assert sharded.name == "mlm/sharded"
    files = [f.path for f in store.manifest("mlm/sharded").files]
    assert "model.safetensors.index.json" in files and sum(p.startswith("model-") for p in files) > 1
    loaded = AutoModelForMaskedLM.from_pretrained(store.export("mlm/sharded", tmp_path / "sharded")).eval()
    torch.testing.assert_close(_outputs(loaded), _outputs(model), rtol=0, atol=0)


def test_legacy_bin_kept_verbatim_converts_later(store, tmp_path):
    from transformers import BertForMaskedLM

    model = make_tiny_bert(seed=4, cls_name="BertForMaskedLM")
    model.config.architectures = ["BertForMaskedLM"]
    src = tmp_path / "old"
    model.config.save_pretrained(src)
    torch.save(model.state_dict(), src / "pytorch_model.bin")
    store.import_folder(src, keep_pickles=True)

    info = store.convert("old")
    assert info.name == "old-safetensors"
    assert [f.path for f in store.manifest(info.name).files] == ["config.json", "model.safetensors"]
    loaded = BertForMaskedLM.from_pretrained(store.export(info.name, tmp_path / "out")).eval()
    torch.testing.assert_close(_outputs(loaded), _outputs(model), rtol=0, atol=0)


def test_weights_without_a_known_class_are_converted_tensor_by_tensor(store, tmp_path):
    from transformers import BertModel

    model = make_tiny_bert(seed=5)
    folder = tmp_path / "custom"
    model.save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "architectures": ["MyOwnBert"]}))
    store.save(folder, "custom/v1")
    info = store.convert("custom/v1", dtype="bf16")
    assert info.metadata["converted"]["via"] == "tensors"
    out = store.export(info.name, tmp_path / "out")
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    loaded = BertModel.from_pretrained(out).eval()
    assert loaded.dtype == torch.bfloat16
    torch.testing.assert_close(_outputs(loaded), _outputs(model), rtol=0, atol=5e-2)

    # A tensor the model class does not have: loading the model would drop it, so the tensors are converted.
    from safetensors.torch import load_file, save_file

    extra = tmp_path / "extra"
    model.save_pretrained(extra)
    save_file({**load_file(extra / "model.safetensors"), "probe.weight": torch.ones(3)}, extra / "model.safetensors",
              metadata={"format": "pt"})
    store.save(extra, "extra/v1")
    info = store.convert("extra/v1", dtype="fp16")
    assert info.metadata["converted"]["via"] == "tensors"
    assert store.load_state_dict(info.name)["probe.weight"].dtype == torch.float16

    # A plain torch module (no config at all): every floating tensor cast, names unchanged.
    store.save(torch.nn.Linear(4, 3), "plain/v1")
    half = store.convert("plain/v1", dtype="fp16")
    assert {k: (v.dtype, v.shape) for k, v in store.load_state_dict(half.name).items()} == {
        "weight": (torch.float16, (3, 4)), "bias": (torch.float16, (3,)),
    }


def test_convert_refuses_bad_requests(store, tmp_path, ckpt):
    store.save(make_tiny_bert(), "m/v1")
    with pytest.raises(InvalidArgument, match="Cannot convert to 'onnx'"):
        store.convert("m/v1", to="onnx")
    with pytest.raises(InvalidArgument, match="Unknown dtype 'int3'"):
        store.convert("m/v1", dtype="int3")
    for bad in ("lots", "0", "-1GB"):
        with pytest.raises(InvalidArgument, match="Invalid shard size"):
            store.convert("m/v1", max_shard_size=bad)
    from ckptstore._ops.convert import parse_shard_size

    # As transformers counts: GB are 10**9 bytes, GiB 2**30; a plain number is bytes.
    assert [parse_shard_size(s) for s in ("2GB", "2GiB", "100000", 5)] == [2 * 10**9, 2 * 2**30, 100000, 5]
    store.convert("m/v1", dtype="bf16")
    with pytest.raises(NameExists):
        store.convert("m/v1", dtype="bf16")

    result = ckpt("convert", "m/v1", "--dtype", "fp16", "--max-shard-size", "20KB", "--name", "m/half", "--json")
    assert result.code == 0, result.err
    assert json.loads(result.out)["parent"] == store.resolve("m/v1")
    assert ckpt("convert", "m/v1", "--dtype", "int3").code == 2
    missing = ckpt("convert", "m/v2")
    assert missing.code == 1 and "Did you mean 'm/v1'" in missing.err
