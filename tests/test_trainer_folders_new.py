"""Trainer folders as a new user meets them: a stray file beside the checkpoints of an output folder, `ckpt save` of
one checkpoint-N folder (metrics, lineage and a step that disagrees with its name), and the hyperparameters
Trainer records (trainer_state.json, JSON args files) kept as searchable metadata."""

from __future__ import annotations

import json
import os
import pickle
import shutil

import pytest
import torch
from conftest import run_ckpt_subprocess
from test_import import EVAL_LOSS, trainer_output  # noqa: F401 - the real Trainer output folder fixture

from ckptstore import Store
from ckptstore.errors import StepMismatchWarning

RUN = "sst2"


class _Canary:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def test_a_stray_weights_file_in_a_trainer_output_folder_is_skipped_with_a_note(trainer_output, tmp_path, ckpt):  # noqa: F811
    """The folder holds checkpoint-N folders and, beside them, a state dict the user saved by hand (no config.json):
    the checkpoints are imported, the stray file is skipped and said so, and the import succeeds."""
    out = tmp_path / "out"
    shutil.copytree(trainer_output, out)
    for name in ("config.json", "model.safetensors", "training_args.bin", "trainer_state.json"):
        (out / name).unlink()  # no final model: only the stray file is left at the top
    torch.save({"w": torch.zeros(3)}, out / "final_sd.pt")

    store = Store.init(tmp_path / "store")
    report = store.import_folder(out)
    assert [i.name for i in report.added] == ["out/step-2", "out/step-4", "out/step-6"]
    assert report.failed == ()
    assert any("final_sd.pt" in n and "not a checkpoint" in n for n in report.notes), report.notes

    result = ckpt("import", out, "--run", "again")
    assert result.code == 0, result.err
    assert "note: " in result.err and "final_sd.pt" in result.err
    assert "Imported 3 checkpoint(s)" in result.err


def test_cli_save_of_a_checkpoint_folder_takes_metrics_parent_and_warns_on_a_step_mismatch(trainer_output, tmp_path):  # noqa: F811
    store_dir = tmp_path / "store"
    for step in (2, 4):
        r = run_ckpt_subprocess("save", trainer_output / f"checkpoint-{step}", f"{RUN}/step-{step}", "--store", store_dir)
        assert r.returncode == 0, r.stderr
        assert "warning" not in r.stderr
    # Named for step 40, but trainer_state.json says 6: one warning line, the save still succeeds.
    r = run_ckpt_subprocess("save", trainer_output / "checkpoint-6", f"{RUN}/step-40", "--store", store_dir)
    assert r.returncode == 0, r.stderr
    warnings_ = [line for line in r.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings_) == 1 and "step 40" in warnings_[0] and "global_step 6" in warnings_[0], r.stderr

    with Store.open(store_dir) as store:
        infos = {i.name: i for i in store.list(RUN)}
        for step in (2, 4):
            assert infos[f"{RUN}/step-{step}"].metrics == {"eval_loss": EVAL_LOSS[step],
                                                          "eval_accuracy": 0.5 + step / 100}
        assert infos[f"{RUN}/step-2"].parent is None
        assert infos[f"{RUN}/step-4"].parent == infos[f"{RUN}/step-2"].id
        assert infos[f"{RUN}/step-40"].parent == infos[f"{RUN}/step-4"].id
        # The folder's own evaluation describes its weights, whatever it was named.
        assert infos[f"{RUN}/step-40"].metrics["eval_loss"] == EVAL_LOSS[6]


def test_store_save_warns_with_a_ckpt_warning_and_metrics_given_on_the_command_line_add_to_the_state(
    trainer_output, tmp_path, ckpt  # noqa: F811
):
    store = Store.init(tmp_path / "store")
    with pytest.warns(StepMismatchWarning, match="global_step 4"):
        store.save(trainer_output / "checkpoint-4", f"{RUN}/step-5")
    # An explicit parent wins over the run's previous checkpoint; no step in the name: no warning.
    store.save(trainer_output / "checkpoint-2", f"{RUN}/two")
    info = store.save(trainer_output / "checkpoint-6", f"{RUN}/six", parent=f"{RUN}/two")
    assert info.parent == store.resolve(f"{RUN}/two") and info.step == 6

    result = ckpt("save", trainer_output / "checkpoint-2", "cli/step-2", "--metric", "bleu=3")
    assert result.code == 0, result.err
    got = Store.open(tmp_path / "store").info("cli/step-2").metrics
    assert got == {"eval_loss": EVAL_LOSS[2], "eval_accuracy": 0.52, "bleu": 3.0}


def test_single_checkpoint_import_links_to_the_previous_step(trainer_output, tmp_path):  # noqa: F811
    store = Store.init(tmp_path / "store")
    store.import_folder(trainer_output / "checkpoint-2", run=RUN)
    store.import_folder(trainer_output / "checkpoint-6", run=RUN)
    store.import_folder(trainer_output / "checkpoint-4", run=RUN)
    assert store.info(f"{RUN}/step-6").parent == store.resolve(f"{RUN}/step-2")
    assert store.info(f"{RUN}/step-4").parent == store.resolve(f"{RUN}/step-2")


def test_hyperparameters_are_recorded_from_trainer_state_and_json_args_never_the_pickle(trainer_output, tmp_path, ckpt):  # noqa: F811
    folder = tmp_path / "checkpoint-4"
    shutil.copytree(trainer_output / "checkpoint-4", folder)
    state = json.loads((folder / "trainer_state.json").read_text())
    state.update(train_batch_size=8, num_train_epochs=3, logging_steps=1, eval_steps=2, save_steps=2)
    (folder / "trainer_state.json").write_text(json.dumps(state))
    (folder / "training_args.json").write_text(json.dumps({"learning_rate": 0.01, "hub_token": "<HUB_TOKEN>",
                                                            "warmup_ratio": 0.1, "seed": 42}))
    # training_args.bin is a pickle: were it opened, the canary file would be created.
    canary = tmp_path / "canary"
    (folder / "training_args.bin").write_bytes(pickle.dumps(_Canary(str(canary))))

    store = Store.init(tmp_path / "store")
    info = store.save(folder, f"{RUN}/step-4")
    hp = info.metadata["hyperparameters"]
    assert hp["train_batch_size"] == 8 and hp["num_train_epochs"] == 3 and hp["eval_steps"] == 2
    assert hp["save_steps"] == 2 and hp["logging_steps"] == 1 and hp["max_steps"] == 6
    assert hp["learning_rate"] == 0.01 and hp["seed"] == 42
    assert "hub_token" not in hp
    assert not canary.exists()

    report = store.import_folder(trainer_output, run="imported")
    assert all("hyperparameters" in store.info(i.name).metadata for i in report.added)

    shown = ckpt("show", f"{RUN}/step-4")
    assert shown.code == 0, shown.err
    assert any(x.startswith("hyperparameters") for x in shown.out.splitlines())
    assert "train_batch_size: 8" in shown.out and "learning_rate: 0.01" in shown.out
    meta_line = next(x for x in shown.out.splitlines() if x.startswith("metadata"))
    assert "train_batch_size" not in meta_line
