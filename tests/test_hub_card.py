"""Model cards (`ckpt card`, `Store.model_card`, `ckpt export --card`) for a real Trainer run with eval metrics, an
imported Hub snapshot and a conversion of it, parsed back with huggingface_hub's own ModelCard."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import transformers
from huggingface_hub import HfApi, ModelCard, snapshot_download
from huggingface_hub.repocard_data import eval_results_to_model_index, model_index_to_eval_results

from conftest import make_tiny_bert
from hubserver import TOKEN, UPLOAD_WARNING, hub, online  # noqa: F401 - fixtures
from tinydata import TinyDataset

pytestmark = pytest.mark.filterwarnings(UPLOAD_WARNING)


def accuracy(pred) -> dict[str, float]:
    return {"accuracy": float((np.argmax(pred.predictions, axis=-1) == pred.label_ids).mean())}


def results_by_name(card: ModelCard) -> dict[str, float]:
    return {r.metric_name: r.metric_value for r in card.data.eval_results or []}


@pytest.mark.slow
def test_card_of_a_trainer_run_carries_its_eval_metrics_and_training_facts(store, ckpt, tmp_path):
    from ckptstore.integrations.transformers import CheckpointCallback

    transformers.logging.set_verbosity_error()
    out = tmp_path / "out"
    args = transformers.TrainingArguments(
        str(out), max_steps=4, per_device_train_batch_size=4, learning_rate=1e-3, seed=0, logging_steps=1,
        save_steps=2, eval_strategy="steps", eval_steps=2, use_cpu=True, report_to="none", disable_tqdm=True,
        metric_for_best_model="eval_accuracy", greater_is_better=True)
    trainer = transformers.Trainer(
        model=make_tiny_bert(0, "BertForSequenceClassification", num_labels=2).train(), args=args,
        train_dataset=TinyDataset(16), eval_dataset=TinyDataset(8, seed=1), compute_metrics=accuracy,
        data_collator=transformers.default_data_collator, callbacks=[CheckpointCallback(store, "sst2")])
    trainer.train()
    store.annotate("sst2:latest", metrics={"test_accuracy": 0.75}, message="Sentiment of short English reviews.")
    info = store.info("sst2:latest")
    assert {"eval_loss", "eval_accuracy", "test_accuracy"} <= set(info.metrics)

    r = ckpt("card", "sst2:latest", "--out", tmp_path / "README.md")
    assert r.code == 0, r.err
    card = ModelCard.load(tmp_path / "README.md")  # huggingface_hub's own parser
    data = card.data
    assert data.library_name == "transformers"
    assert data.pipeline_tag == "text-classification"
    assert {"ckptstore", "bert", "safetensors", "generated_from_trainer"} <= set(data.tags)
    assert results_by_name(card) == info.metrics  # every stored metric, annotations included, value for value
    splits = {r.metric_name: (r.metric_type, r.dataset_split) for r in data.eval_results}
    assert splits["eval_accuracy"] == ("accuracy", "validation") and splits["test_accuracy"] == ("accuracy", "test")
    # The metadata survives huggingface_hub's model-index round trip unchanged.
    name, results = model_index_to_eval_results(eval_results_to_model_index(info.name, data.eval_results))
    assert name == info.name and [r.metric_value for r in results] == [r.metric_value for r in data.eval_results]
    assert data.to_dict()["ckptstore"] == {"checkpoint": info.id, "name": info.name, "step": 4}
    text = card.text
    assert "Sentiment of short English reviews." in text.split("## Intended use")[1].split("##")[0]
    assert "- global step: 4" in text and "- train batch size: 4" in text
    assert "### Training results" in text  # Trainer's log history, tabulated by transformers' own helper
    assert info.id in text
    for f in store.manifest(info.id).files:
        assert f.digest in text
    # `ckpt card` to stdout and Store.model_card are the same card.
    assert ckpt("card", "sst2:latest").out.strip() == str(store.model_card("sst2:latest")).strip()


@pytest.fixture
def hub_snapshot(online, hub, tmp_path) -> tuple[Path, str]:
    """A model on the test Hub with its own README (license, datasets), downloaded into the test's hub cache by
    huggingface_hub's snapshot_download. Returns (cache folder, commit)."""
    model = make_tiny_bert(3, "BertForMaskedLM")
    src = tmp_path / "upstream"
    model.save_pretrained(src)
    (src / "README.md").write_text("---\nlicense: apache-2.0\ndatasets:\n- wikitext\nlanguage: en\n---\n# tiny\n")
    api = HfApi(endpoint=hub.url, token=TOKEN)
    api.create_repo("org/tiny-mlm")
    api.upload_folder(repo_id="org/tiny-mlm", folder_path=src)
    path = Path(snapshot_download("org/tiny-mlm", cache_dir=online["HF_HUB_CACHE"], endpoint=hub.url))
    return Path(online["HF_HUB_CACHE"]), path.name


def test_card_of_an_imported_hub_snapshot_and_of_its_conversion(store, ckpt, hub_snapshot, tmp_path):
    cache, commit = hub_snapshot
    report = store.import_hf_cache(cache)
    name = f"org--tiny-mlm/rev-{commit[:12]}"
    assert [i.name for i in report.added] == [name]

    card = store.model_card(name)
    parsed = ModelCard(str(card))
    assert parsed.data.pipeline_tag == "fill-mask"
    assert parsed.data.base_model is None  # it is org/tiny-mlm itself, whose own card names no base
    assert parsed.data.license == "apache-2.0" and parsed.data.datasets == ["wikitext"]  # kept from its README
    assert parsed.data.eval_results is None  # no metrics stored
    assert "from the Hub repo org/tiny-mlm" in parsed.text

    converted = store.convert(name, dtype="fp16", name="org--tiny-mlm/fp16")
    dest = tmp_path / "deploy"
    r = ckpt("export", converted.name, dest, "--card")
    assert r.code == 0, r.err
    assert "Wrote the model card" in r.err
    card = ModelCard.load(dest / "README.md")
    assert card.data.base_model == "org/tiny-mlm"  # from the lineage: its parent came from that Hub repo
    assert card.data.pipeline_tag == "fill-mask" and card.data.library_name == "transformers"
    assert "converted to fp16" in card.text and f"`{name}`" in card.text
    # The weights beside the card are the stored ones, byte for byte.
    assert (dest / "model.safetensors").read_bytes() == store.read_file(converted.id, "model.safetensors")
    assert transformers.AutoModelForMaskedLM.from_pretrained(dest).config.model_type == "bert"


def test_card_names_a_base_model_from_json_arguments_and_refuses_local_paths(store, tiny_bert):
    store.save(tiny_bert(), "run/step-1", metadata={"hyperparameters": {"model_name_or_path": "/data/bert"}})
    assert ModelCard(str(store.model_card("run/step-1"))).data.base_model is None
    store.save(tiny_bert(1), "run/step-2", parent="run/step-1",
               metadata={"hyperparameters": {"model_name_or_path": "google-bert/bert-base-uncased"}})
    card = ModelCard(str(store.model_card("run/step-2")))
    assert card.data.base_model == "google-bert/bert-base-uncased"
    assert card.data.pipeline_tag == "feature-extraction"  # BertModel: a bare encoder
    assert "Not stated" in card.text  # no message: intended use says how to record one


def test_card_of_an_unknown_reference_is_one_line_with_a_hint(ckpt, store):
    r = ckpt("card", "nope/step-1")
    assert r.code == 1
    assert r.err.splitlines()[0].startswith("error: Unknown reference 'nope/step-1'")
    assert r.err.splitlines()[1].startswith("hint: ")
