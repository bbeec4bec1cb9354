"""Byte-exact round trips: what goes into the store comes back out as the very same bytes, and models loaded
from the store (or from an export) are the models that were saved.

Digests are computed here with hashlib's sha256, independently of the store's BLAKE3.
"""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModel, AutoModelForSequenceClassification, AutoTokenizer

SENTENCES = ["A checkpoint store for Hugging Face models.", "Every file comes back byte for byte."]


def _embeddings(model, tokenizer) -> torch.Tensor:
    batch = tokenizer(SENTENCES, padding=True, return_tensors="pt")
    with torch.no_grad():
        return model.eval()(**batch).last_hidden_state


def _assert_same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].dtype == b[key].dtype, key
        assert torch.equal(a[key], b[key]), key


# -- 1. the real MiniLM checkpoint ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_minilm_exports_byte_exact_and_embeds_the_same(store, minilm_dir, tmp_path, tree_sha256):
    original = tree_sha256(minilm_dir)
    assert "model.safetensors" in original and "1_Pooling/config.json" in original
    info = store.save(minilm_dir, "minilm/original")
    dest = store.export("minilm/original", tmp_path / "export")
    assert tree_sha256(dest) == original
    assert info.logical_bytes == sum(p.stat().st_size for p in minilm_dir.rglob("*") if p.is_file())

    expected = _embeddings(AutoModel.from_pretrained(minilm_dir), AutoTokenizer.from_pretrained(minilm_dir))
    exported = _embeddings(AutoModel.from_pretrained(dest), AutoTokenizer.from_pretrained(dest))
    assert torch.equal(exported, expected)
    # And straight from the store, without an export.
    loaded = _embeddings(store.load("minilm/original"), store.load_tokenizer("minilm/original"))
    assert torch.equal(loaded, expected)


# -- 2. sharded folders -------------------------------------------------------------------------------------------


def test_sharded_folder_round_trips_byte_exact(store, tiny_bert, tmp_path, tree_sha256):
    model = tiny_bert(vocab_size=300)
    src = tmp_path / "sharded"
    model.save_pretrained(src, max_shard_size="20KB")
    original = tree_sha256(src)
    shards = sorted(p for p in original if p.endswith(".safetensors"))
    assert len(shards) >= 3 and "model.safetensors.index.json" in original

    store.save(src, "bert/sharded")
    assert tree_sha256(store.export("bert/sharded", tmp_path / "out")) == original
    manifest = store.manifest("bert/sharded")
    assert sorted(f.path for f in manifest.files if f.is_safetensors) == shards
    _assert_same_state(store.load_state_dict("bert/sharded"), model.state_dict())
    _assert_same_state(store.load("bert/sharded").state_dict(), model.state_dict())


def test_folder_with_empty_file_and_subfolders_round_trips(store, tiny_bert_dir, tmp_path, tree_sha256):
    (tiny_bert_dir / "empty.txt").write_bytes(b"")
    (tiny_bert_dir / "sub" / "deeper").mkdir(parents=True)
    (tiny_bert_dir / "sub" / "deeper" / "notes.bin").write_bytes(bytes(range(256)) * 3)
    original = tree_sha256(tiny_bert_dir)
    store.save(tiny_bert_dir, "bert/odd-files")
    assert tree_sha256(store.export("bert/odd-files", tmp_path / "out")) == original


def test_export_of_more_files_than_it_keeps_open_round_trips(store, tiny_bert, tmp_path, tree_sha256):
    """Export fills files from a pool of threads and keeps a bounded number open: a checkpoint with many more
    files than that (shards and notes) still comes out byte-exact, with and without re-hashing every blob."""
    from ckptstore._ops import load as _load

    src = tmp_path / "many"
    tiny_bert(vocab_size=300).save_pretrained(src, max_shard_size="20KB")
    for i in range(_load._OPEN_FILES + 8):
        (src / "notes" / f"{i:03d}.txt").parent.mkdir(exist_ok=True)
        (src / "notes" / f"{i:03d}.txt").write_bytes(f"note {i}\n".encode() * (i + 1))
    original = tree_sha256(src)
    assert len(original) > _load._OPEN_FILES + 8
    store.save(src, "bert/many-files")
    assert tree_sha256(store.export("bert/many-files", tmp_path / "out")) == original
    assert tree_sha256(store.export("bert/many-files", tmp_path / "checked", verify=True)) == original


def test_small_chunks_split_tensors_and_still_round_trip(tmp_path, tiny_bert, tree_sha256):
    from ckptstore import Store

    model = tiny_bert(vocab_size=500)
    src = tmp_path / "src"
    model.save_pretrained(src)
    with Store.init(tmp_path / "small-chunks", chunk_bytes=4096) as store:
        store.save(src, "bert/chunked")
        entry = store.manifest("bert/chunked").file("model.safetensors")
        assert max(b.size for b in entry.blobs[1:]) == 4096
        assert len(entry.blobs) > len(entry.tensors) + 1  # some tensors span several chunks
        assert tree_sha256(store.export("bert/chunked", tmp_path / "out")) == tree_sha256(src)
        _assert_same_state(store.load_state_dict("bert/chunked", verify=True), model.state_dict())


def test_load_passes_config_keywords_into_the_config_as_from_pretrained_does(store, tiny_bert_dir, tmp_path):
    """`num_labels=5` on a base checkpoint is how a classifier is started from it: from_pretrained puts keywords
    that are config attributes into the config. store.load must do the same, not hand them to the model's __init__."""
    store.save(tiny_bert_dir, "base/step-1")
    kwargs = {"num_labels": 5, "output_attentions": True}
    ours = store.load("base/step-1", cls=AutoModelForSequenceClassification, **kwargs)
    theirs = AutoModelForSequenceClassification.from_pretrained(store.export("base/step-1", tmp_path / "out"), **kwargs)
    assert ours.config.num_labels == theirs.config.num_labels == 5
    assert ours.config.output_attentions is theirs.config.output_attentions is True
    assert ours.classifier.out_features == 5
    base = {k: v for k, v in theirs.state_dict().items() if not k.startswith("classifier.")}
    _assert_same_state({k: v for k, v in ours.state_dict().items() if not k.startswith("classifier.")}, base)


# -- 3. live models -----------------------------------------------------------------------------------------------


def test_live_model_loads_back_identical(store, tiny_bert):
    model = tiny_bert(cls_name="BertForSequenceClassification", num_labels=3)
    store.save(model, "cls/step-1")

    back = store.load("cls/step-1", cls=AutoModelForSequenceClassification)
    assert type(back) is type(model)
    assert back.config.num_labels == 3
    _assert_same_state(back.state_dict(), model.state_dict())

    half = store.load("cls/step-1", cls=AutoModelForSequenceClassification, dtype=torch.float16)
    assert half.dtype == torch.float16
    _assert_same_state(half.state_dict(), {k: v.to(torch.float16) for k, v in model.state_dict().items()})


def test_live_model_with_tied_weights_loads_back_identical(store, tiny_bert, tmp_path, tree_sha256):
    from transformers import AutoModelForMaskedLM

    model = tiny_bert(cls_name="BertForMaskedLM")
    assert model.cls.predictions.decoder.weight.data_ptr() == model.bert.embeddings.word_embeddings.weight.data_ptr()
    store.save(model, "mlm/step-1")
    back = store.load("mlm/step-1", cls=AutoModelForMaskedLM)
    _assert_same_state(back.state_dict(), model.state_dict())
    assert back.cls.predictions.decoder.weight.data_ptr() == back.bert.embeddings.word_embeddings.weight.data_ptr()

    model.save_pretrained(tmp_path / "reference")
    assert tree_sha256(store.export("mlm/step-1", tmp_path / "out")) == tree_sha256(tmp_path / "reference")


@pytest.mark.parametrize("max_shard_size", [None, "20KB"])
def test_live_model_exports_what_save_pretrained_writes(store, tiny_bert, tmp_path, tree_sha256, max_shard_size):
    model = tiny_bert(cls_name="BertForSequenceClassification", vocab_size=300)
    kwargs = {} if max_shard_size is None else {"max_shard_size": max_shard_size}
    model.save_pretrained(tmp_path / "reference", **kwargs)
    reference = tree_sha256(tmp_path / "reference")
    assert ("model.safetensors.index.json" in reference) == (max_shard_size is not None)

    store.save(model, "cls/live", **kwargs)
    assert tree_sha256(store.export("cls/live", tmp_path / "out")) == reference


def test_live_generative_model_with_tokenizer_exports_what_save_pretrained_writes(
    store, tmp_path, tree_sha256, minilm_dir
):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=99, n_positions=32, n_embd=32, n_layer=2, n_head=2)).eval()
    tokenizer = AutoTokenizer.from_pretrained(minilm_dir)
    model.save_pretrained(tmp_path / "reference")
    tokenizer.save_pretrained(tmp_path / "reference")
    reference = tree_sha256(tmp_path / "reference")
    assert "generation_config.json" in reference

    store.save(model, "gpt/step-1", tokenizer=tokenizer)
    assert tree_sha256(store.export("gpt/step-1", tmp_path / "out")) == reference
    back = store.load("gpt/step-1", cls=GPT2LMHeadModel)
    _assert_same_state(back.state_dict(), model.state_dict())
    assert back.generation_config.to_dict() == model.generation_config.to_dict()
