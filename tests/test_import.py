"""`ckpt import` / `Store.import_folder` / `Store.import_hf_cache` on real folders: save_pretrained output (sharded,
legacy .bin, sharded .bin), a Trainer output folder written with Trainer's own TrainerState, and a real hub cache
layout (blobs + snapshot symlinks + refs) scanned by huggingface_hub."""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
from pathlib import Path

import pytest
import torch
from conftest import make_tiny_bert

from ckptstore import IncompleteCheckpoint, InvalidArgument, InvalidCheckpoint, NameChanged, Store

IDS = torch.tensor([[2, 17, 33, 5, 64, 3]])


def _sha(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _same_files(a: Path, b: Path) -> None:
    files_a = sorted(p.relative_to(a).as_posix() for p in a.rglob("*") if p.is_file())
    assert files_a == sorted(p.relative_to(b).as_posix() for p in b.rglob("*") if p.is_file())
    for rel in files_a:
        assert _sha(a / rel) == _sha(b / rel), rel


class Recorder:
    """An ImportProgress that remembers what it was told."""

    def __init__(self) -> None:
        self.runs: list[list] = []

    def start(self, label: str, total: int) -> None:
        self.runs.append([label, total, 0])

    def advance(self, n: int) -> None:
        self.runs[-1][2] += n

    def done(self) -> None:
        pass


# -- model folders ------------------------------------------------------------------------------------------------


def test_sharded_safetensors_folder_is_imported_byte_for_byte(store, tmp_path):
    src = tmp_path / "bert-small"
    make_tiny_bert().save_pretrained(src, max_shard_size="20KB")
    assert (src / "model.safetensors.index.json").exists()

    progress = Recorder()
    report = store.import_folder(src, progress=progress)
    assert report.kind == "model folder"
    assert [i.name for i in report.added] == ["bert-small"]
    assert report.bytes_read == sum(p.stat().st_size for p in src.iterdir())
    assert progress.runs == [["bert-small", report.bytes_read, report.bytes_read]]
    assert store.manifest("bert-small").metadata["import"] == {"kind": "model folder", "path": str(src.resolve())}
    _same_files(src, store.export("bert-small", tmp_path / "out"))

    again = store.import_folder(src, run="team")  # --run puts it in a run; every byte is already stored
    assert [i.name for i in again.added] == ["team/bert-small"] and again.bytes_stored == 0


def _legacy_mlm(tmp_path: Path):
    """BertForMaskedLM, whose decoder weight is tied to the word embeddings: torch.save keeps the alias."""
    model = make_tiny_bert(seed=1, cls_name="BertForMaskedLM")
    model.config.architectures = ["BertForMaskedLM"]
    return model


def test_legacy_bin_is_converted_exactly_as_save_pretrained_writes_safetensors(store, tmp_path):
    from transformers import BertForMaskedLM

    model = _legacy_mlm(tmp_path)
    src = tmp_path / "old-mlm"
    model.config.save_pretrained(src)
    torch.save(model.state_dict(), src / "pytorch_model.bin")  # as transformers < 4.35 saved
    reference = tmp_path / "reference"
    model.save_pretrained(reference)

    report = store.import_folder(src)
    assert report.added[0].converted == ("pytorch_model.bin",)
    manifest = store.manifest("old-mlm")
    assert [f.path for f in manifest.files] == ["config.json", "model.safetensors"]
    entry = manifest.file("model.safetensors")
    assert entry.converted_from == "pytorch_model.bin"
    # The alias is dropped as save_pretrained drops it: the file is byte-identical to save_pretrained's.
    out = store.export("old-mlm", tmp_path / "out")
    assert _sha(out / "model.safetensors") == _sha(reference / "model.safetensors")
    loaded = BertForMaskedLM.from_pretrained(out).eval()
    assert loaded.cls.predictions.decoder.weight.data_ptr() == loaded.bert.embeddings.word_embeddings.weight.data_ptr()
    with torch.no_grad():
        torch.testing.assert_close(loaded(IDS).logits, model(IDS).logits, rtol=0, atol=0)


def test_sharded_legacy_bins_and_their_index_are_converted(store, tmp_path):
    from transformers import BertForMaskedLM

    model = _legacy_mlm(tmp_path)
    src = tmp_path / "old-sharded"
    model.config.save_pretrained(src)
    state = model.state_dict()
    names = list(state)
    halves = {"pytorch_model-00001-of-00002.bin": names[: len(names) // 2],
              "pytorch_model-00002-of-00002.bin": names[len(names) // 2 :]}
    for i, (shard, keys) in enumerate(halves.items()):
        # One shard in the pre-1.6 format (read without mmap), one in the zip format (mmapped).
        torch.save({k: state[k] for k in keys}, src / shard, _use_new_zipfile_serialization=bool(i))
    weight_map = {k: shard for shard, keys in halves.items() for k in keys}
    index = {"metadata": {"total_size": 1}, "weight_map": weight_map}
    (src / "pytorch_model.bin.index.json").write_text(json.dumps(index))

    report = store.import_folder(src)
    assert sorted(report.added[0].converted) == sorted([*halves, "pytorch_model.bin.index.json"])
    manifest = store.manifest("old-sharded")
    assert sorted(f.path for f in manifest.files) == [
        "config.json", "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors",
        "model.safetensors.index.json",
    ]
    new_index = json.loads(store.read_file("old-sharded", "model.safetensors.index.json"))
    assert set(new_index["weight_map"].values()) == {"model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"}
    assert new_index["metadata"]["total_size"] == sum(
        t.nbytes for f in manifest.files if f.is_safetensors for t in f.tensors
    )
    loaded = BertForMaskedLM.from_pretrained(store.export("old-sharded", tmp_path / "out")).eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(IDS).logits, model(IDS).logits, rtol=0, atol=0)


def test_alias_of_an_unknown_architecture_is_kept_and_stored_once(store, tmp_path):
    model = _legacy_mlm(tmp_path)
    model.config.architectures = ["SomethingTransformersDoesNotKnow"]
    src = tmp_path / "custom"
    model.config.save_pretrained(src)
    torch.save(model.state_dict(), src / "pytorch_model.bin")
    store.import_folder(src)
    entry = store.manifest("custom").file("model.safetensors")
    blobs = entry.tensor_blobs()
    decoder, embeddings = "cls.predictions.decoder.weight", "bert.embeddings.word_embeddings.weight"
    assert {decoder, embeddings} <= set(blobs)
    assert [b.digest for b, _ in blobs[decoder]] == [b.digest for b, _ in blobs[embeddings]]


# -- Trainer output -------------------------------------------------------------------------------------------------

EVAL_LOSS = {2: 0.70, 4: 0.60, 6: 0.65}


@pytest.fixture(scope="module")
def trainer_output(tmp_path_factory) -> Path:
    """What Trainer(output_dir=..., eval/save every 2 steps, load_best_model_at_end=True) leaves after 6 steps:
    real weights, optimizer and scheduler states, rng state, TrainingArguments, and Trainer's own TrainerState."""
    from transformers import TrainerState, TrainingArguments

    root = tmp_path_factory.mktemp("trainer") / "bert-sst2-out"
    model = make_tiny_bert(seed=2, cls_name="BertForSequenceClassification").train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    args = TrainingArguments(output_dir=str(root), report_to=[], use_cpu=True)
    log: list[dict] = []
    best = None
    for step in (1, 2, 3, 4, 5, 6):
        loss = model(input_ids=torch.randint(0, 99, (4, 8)), labels=torch.tensor([0, 1, 0, 1])).loss
        loss.backward()
        opt.step()
        sched.step()
        opt.zero_grad()
        log.append({"epoch": step / 2, "loss": loss.item(), "learning_rate": 1e-2, "step": step})
        if step % 2:
            continue
        log.append({"epoch": step / 2, "eval_loss": EVAL_LOSS[step], "eval_accuracy": 0.5 + step / 100,
                    "eval_runtime": 0.1, "eval_samples_per_second": 80.0, "eval_steps_per_second": 10.0, "step": step})
        best = step if best is None or EVAL_LOSS[step] < EVAL_LOSS[best] else best
        folder = root / f"checkpoint-{step}"
        model.save_pretrained(folder)
        torch.save(opt.state_dict(), folder / "optimizer.pt")
        torch.save(sched.state_dict(), folder / "scheduler.pt")
        torch.save({"python": random.getstate(), "cpu": torch.random.get_rng_state()}, folder / "rng_state.pth")
        torch.save(args, folder / "training_args.bin")
        state = TrainerState(global_step=step, max_steps=6, log_history=list(log), best_metric=EVAL_LOSS[best],
                             best_global_step=best, best_model_checkpoint=str(root / f"checkpoint-{best}"))
        state.save_to_json(str(folder / "trainer_state.json"))
    # trainer.save_model() + save_state() after load_best_model_at_end: the best weights in the output folder.
    for name in ("config.json", "model.safetensors", "training_args.bin"):
        shutil.copy(root / f"checkpoint-{best}" / name, root / name)
    log.append({"epoch": 3.0, "step": 6, "train_loss": 0.69, "train_runtime": 1.5, "train_samples_per_second": 16.0})
    TrainerState(global_step=6, max_steps=6, log_history=log, best_metric=EVAL_LOSS[best], best_global_step=best,
                 best_model_checkpoint=str(root / f"checkpoint-{best}")).save_to_json(str(root / "trainer_state.json"))
    return root


def test_trainer_output_becomes_a_run_with_metrics_best_and_final(store, trainer_output, tmp_path):
    progress = Recorder()
    report = store.import_folder(trainer_output, progress=progress)
    run = "bert-sst2-out"
    assert report.kind == "trainer output"
    assert [i.name for i in report.added] == [f"{run}/step-2", f"{run}/step-4", f"{run}/step-6", f"{run}/final"]
    assert report.tags == (f"{run}:best",)
    assert [r[0] for r in progress.runs] == [i.name for i in report.added]
    assert all(total == done for _, total, done in progress.runs)

    infos = {i.name: i for i in store.list(run)}
    for step in (2, 4, 6):
        info = infos[f"{run}/step-{step}"]
        assert info.step == step
        assert info.metrics == {"eval_loss": EVAL_LOSS[step], "eval_accuracy": 0.5 + step / 100}
    assert infos[f"{run}/step-4"].parent == infos[f"{run}/step-2"].id
    assert store.resolve(f"{run}:best") == infos[f"{run}/step-4"].id
    assert infos[f"{run}/final"].step == 6
    # Training state is stored verbatim, and a checkpoint exports as the very folder Trainer wrote.
    _same_files(trainer_output / "checkpoint-4", store.export(f"{run}/step-4", tmp_path / "ck4"))
    # The final model is the best checkpoint's weights: nothing of them is stored twice.
    final = report.added[-1]
    assert final.bytes_read > 50_000
    assert final.bytes_stored == (trainer_output / "trainer_state.json").stat().st_size
    assert sorted(f.path for f in store.manifest(f"{run}/final").files) == [
        "config.json", "model.safetensors", "trainer_state.json", "training_args.bin",
    ]

    again = store.import_folder(trainer_output)
    assert again.added == () and len(again.skipped) == 4 and again.bytes_stored == 0
    assert f"{run}/step-2: already stored, skipped" in again.notes
    assert store.resolve(f"{run}:best") == infos[f"{run}/step-4"].id


def test_one_trainer_checkpoint_and_the_run_option(store, trainer_output):
    report = store.import_folder(trainer_output / "checkpoint-6", run="sst2")
    assert report.kind == "trainer checkpoint"
    info = store.info("sst2/step-6")
    assert info.step == 6 and info.metrics["eval_loss"] == EVAL_LOSS[6]


def test_a_broken_checkpoint_fails_alone(store, trainer_output, tmp_path, ckpt):
    out = tmp_path / "out"
    shutil.copytree(trainer_output, out)
    (out / "checkpoint-2" / "config.json").unlink()
    report = store.import_folder(out)
    assert [i.name for i in report.failed] == ["out/step-2"]
    assert "no config.json" in report.failed[0].reason
    assert [i.name for i in report.added] == ["out/step-4", "out/step-6", "out/final"]
    assert store.info("out/step-4").parent is None  # its predecessor is not stored

    result = ckpt("import", out, "--run", "again")
    assert result.code == 1
    assert "error: again/step-2: Incomplete checkpoint" in result.err
    assert "Imported 3 checkpoint(s) from trainer output (0 already stored, 1 failed)" in result.err


def test_save_of_a_trainer_checkpoint_takes_its_step_and_metrics_and_refuses_the_output_folder(
    store, trainer_output, ckpt, tmp_path
):
    """`ckpt save out/checkpoint-4 NAME`: step and eval metrics come from its trainer_state.json, as import takes
    them (given ones win). The output folder itself is a run, not a checkpoint: refused, nothing stored."""
    info = store.save(trainer_output / "checkpoint-4", "sst2/final")
    assert info.step == 4 and info.metrics == {"eval_loss": EVAL_LOSS[4], "eval_accuracy": 0.5 + 4 / 100}
    given = store.save(trainer_output / "checkpoint-4", "sst2/mine", step=40, metrics={"acc": 1.0, "eval_loss": 0.1})
    assert given.step == 40 and given.metrics == {"eval_loss": 0.1, "eval_accuracy": 0.5 + 4 / 100, "acc": 1.0}

    with pytest.raises(InvalidCheckpoint, match="is a Trainer output folder holding 3 checkpoint folders"):
        store.save(trainer_output, "sst2/everything")
    result = ckpt("save", trainer_output, "sst2/everything", store=tmp_path / "fresh")
    assert result.code == 1 and "ckpt import" in result.err
    assert not (tmp_path / "fresh").exists()  # the store a failed save would have created is not left behind


def test_reimport_skips_unchanged_checkpoints_and_fails_on_a_changed_one(store, trainer_output, tmp_path):
    """Training went on in the same output folder: the re-import must not call the old copy of a changed folder
    'already stored' (it would look current); unchanged checkpoints are still skipped."""
    out = tmp_path / "out"
    shutil.copytree(trainer_output, out)
    store.import_folder(out)
    weights = out / "checkpoint-6" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01
    weights.write_bytes(bytes(data))
    before = store.manifest("out/step-6")

    again = store.import_folder(out)
    assert [i.name for i in again.skipped] == ["out/step-2", "out/step-4", "out/final"]
    assert [i.name for i in again.failed] == ["out/step-6"]
    assert "has changed since it was imported (model.safetensors differ)" in again.failed[0].reason
    assert store.manifest("out/step-6") == before  # nothing stored was touched

    with pytest.raises(NameChanged, match="'out/step-6' is already stored, but"):
        store.import_folder(out / "checkpoint-6", run="out")


# -- Hugging Face hub cache -------------------------------------------------------------------------------------------


def _hub_repo(cache: Path, repo_id: str, revisions: dict[str, dict[str, Path]], main: str) -> None:
    """The layout huggingface_hub downloads into: blobs named by their hash, snapshots of relative symlinks."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    for commit, files in revisions.items():
        for rel, src in files.items():
            blob = repo / "blobs" / _sha(src)
            if not blob.exists():
                shutil.copyfile(src, blob)
            link = repo / "snapshots" / commit / rel
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(os.path.relpath(blob, link.parent))
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(main)


@pytest.fixture
def hub_cache(tmp_path, minilm_dir) -> Path:
    cache = tmp_path / "hub"
    minilm = {p.relative_to(minilm_dir).as_posix(): p for p in minilm_dir.rglob("*") if p.is_file()}
    changed = tmp_path / "config-v2.json"
    changed.write_text(json.dumps({**json.loads((minilm_dir / "config.json").read_text()), "note": "v2"}, indent=2))
    old, new = "1" * 40, "a" * 40
    _hub_repo(cache, "sentence-transformers/all-MiniLM-L6-v2", {old: minilm, new: {**minilm, "config.json": changed}}, new)
    legacy = tmp_path / "legacy-src"
    model = _legacy_mlm(tmp_path)
    model.config.save_pretrained(legacy)
    torch.save(model.state_dict(), legacy / "pytorch_model.bin")
    _hub_repo(cache, "someone/old-bert", {"b" * 40: {p.name: p for p in legacy.iterdir()}}, "b" * 40)
    return cache


def test_hub_cache_snapshots_are_imported_by_repo_and_revision(store, hub_cache, monkeypatch, minilm_dir):
    monkeypatch.setenv("HF_HUB_CACHE", str(hub_cache))  # the default cache is resolved when the import runs
    report = store.import_hf_cache()
    run = "sentence-transformers--all-MiniLM-L6-v2"
    assert report.kind == "hf cache" and report.source == str(hub_cache)
    names = [i.name for i in report.added]
    assert sorted(names) == sorted([f"{run}/rev-{'1' * 12}", f"{run}/rev-{'a' * 12}", f"someone--old-bert/rev-{'b' * 12}"])
    assert store.resolve(f"{run}:main") == store.resolve(f"{run}/rev-{'a' * 12}")
    by_name = {i.name: i for i in report.added}
    first, second = by_name[f"{run}/rev-{'1' * 12}"], by_name[f"{run}/rev-{'a' * 12}"]
    # The second revision differs in config.json only: its 90 MB of weights are read, not stored again.
    weights = (minilm_dir / "model.safetensors").stat().st_size
    assert first.bytes_read > weights and second.bytes_read > weights
    assert second.bytes_stored < 2_000
    assert by_name[f"someone--old-bert/rev-{'b' * 12}"].converted == ("pytorch_model.bin",)
    assert store.manifest(f"{run}/rev-{'a' * 12}").metadata["import"]["repo_id"] == "sentence-transformers/all-MiniLM-L6-v2"
    # A snapshot exports back to the very files of the cache.
    with store.materialized(f"{run}/rev-{'1' * 12}") as folder:
        _same_files(minilm_dir, folder)

    again = store.import_folder(hub_cache)  # a cache folder given as PATH is recognised
    assert again.kind == "hf cache" and again.added == () and len(again.skipped) == 3
    with pytest.raises(InvalidArgument, match="--run does not apply"):
        store.import_folder(hub_cache, run="x")


def test_a_damaged_hub_snapshot_fails_alone(store, hub_cache):
    """A snapshot with a broken link (an unfinished download) makes huggingface_hub's scanner drop the whole repo
    with a warning; the import still brings in the repo's intact snapshots and its refs, and fails the damaged one."""
    repo = hub_cache / "models--sentence-transformers--all-MiniLM-L6-v2"
    broken = repo / "snapshots" / ("c" * 40)
    broken.mkdir()
    (broken / "config.json").symlink_to(next((repo / "snapshots" / ("a" * 40)).glob("config.json")).resolve())
    (broken / "model.safetensors").symlink_to("../../blobs/" + "0" * 64)

    report = store.import_hf_cache(hub_cache)
    run = "sentence-transformers--all-MiniLM-L6-v2"
    assert sorted(i.name for i in report.added) == sorted(
        [f"{run}/rev-{'1' * 12}", f"{run}/rev-{'a' * 12}", f"someone--old-bert/rev-{'b' * 12}"])
    assert [i.name for i in report.failed] == [f"{run}/rev-{'c' * 12}"]
    assert "model.safetensors is a broken link" in report.failed[0].reason
    assert store.resolve(f"{run}:main") == store.resolve(f"{run}/rev-{'a' * 12}")


def test_a_folder_with_a_broken_link_is_not_saved_without_the_file(store, tiny_bert_dir):
    (tiny_bert_dir / "model.safetensors").rename(tiny_bert_dir / "elsewhere.bin")
    (tiny_bert_dir / "model.safetensors").symlink_to(tiny_bert_dir / "gone.safetensors")
    with pytest.raises(IncompleteCheckpoint, match="model.safetensors is a broken link"):
        store.save(tiny_bert_dir, "m/step-1")
    assert store.list() == []


def test_missing_hub_cache_is_a_usage_error(store, tmp_path, ckpt):
    result = ckpt("import", "--hf-cache", tmp_path / "nowhere")
    assert result.code == 2 and "No Hugging Face cache at" in result.err


def test_cli_imports_a_hub_cache_and_a_folder(ckpt, hub_cache, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_CACHE", str(hub_cache))
    result = ckpt("import", "--hf-cache", "--json")
    assert result.code == 0, result.err
    data = json.loads(result.out)
    assert data["added"] == 3 and data["failed"] == 0 and data["bytes_stored"] < data["bytes_read"]
    assert "newly stored" in result.err

    src = tmp_path / "plain"
    make_tiny_bert().save_pretrained(src)
    result = ckpt("import", src)
    assert result.code == 0 and "plain" in result.out and "added" in result.out
    assert ckpt("import", src).out.count("skipped") == 1


def test_what_is_not_a_checkpoint_is_refused_clearly(store, tmp_path, ckpt):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("x")
    with pytest.raises(InvalidCheckpoint, match="not a model folder, a Trainer output folder or a Hugging Face cache"):
        store.import_folder(tmp_path / "notes")
    (tmp_path / "weights-only").mkdir()
    (tmp_path / "weights-only" / "model.safetensors").write_bytes(b"")
    with pytest.raises(IncompleteCheckpoint):
        store.import_folder(tmp_path / "weights-only")
    assert ckpt("import").code == 2
    assert ckpt("import", tmp_path / "missing").code == 2
    assert Store.open(tmp_path / "store").list() == []
