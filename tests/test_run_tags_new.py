"""Every run has RUN:latest while it has checkpoints and RUN:best wherever its metric exists, moved by the store
after save, delete, prune, import and convert, and never set by hand (issue "What a new user hit", item 6)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ckptstore import InvalidArgument, Store
from ckptstore.errors import CheckpointNotFound

from conftest import make_tiny_bert


def _train(model, step: int) -> None:
    with torch.no_grad():
        model.pooler.dense.bias.add_(0.01 * step)


def _trainer_checkpoint(folder: Path, model, step: int, log: list[dict], best_step: int, best_value: float) -> None:
    from transformers import TrainerState

    model.save_pretrained(folder)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    torch.save(opt.state_dict(), folder / "optimizer.pt")
    TrainerState(global_step=step, max_steps=6, log_history=list(log), best_metric=best_value,
                 best_global_step=best_step, best_model_checkpoint=str(folder.parent / f"checkpoint-{best_step}")
                 ).save_to_json(str(folder / "trainer_state.json"))


@pytest.fixture
def accuracy_run(tmp_path) -> Path:
    """A Trainer output_dir whose best_model_checkpoint follows eval_accuracy (metric_for_best_model="accuracy"):
    by eval_loss the best would be step 2, by accuracy it is step 4."""
    root = tmp_path / "acc-out"
    model = make_tiny_bert(seed=4)
    evals = {2: (0.40, 0.60), 4: (0.55, 0.80), 6: (0.50, 0.70)}  # step: (eval_loss, eval_accuracy)
    log: list[dict] = []
    for step, (loss, acc) in evals.items():
        _train(model, step)
        log.append({"eval_loss": loss, "eval_accuracy": acc, "step": step, "epoch": step / 2})
        best = max((s for s in evals if s <= step), key=lambda s: evals[s][1])
        _trainer_checkpoint(root / f"checkpoint-{step}", model, step, log, best, evals[best][1])
    return root


def test_ckpt_save_gives_a_run_latest_and_best_readme_checkout_works(ckpt, tiny_bert, tmp_path):
    """README: `ckpt save ./out/checkpoint-500 bert-sst2/step-500 ...` then `ckpt checkout bert-sst2:latest`."""
    model = tiny_bert()
    for step, loss in ((500, 0.31), (1000, 0.35)):
        _train(model, step)
        folder = tmp_path / "out" / f"checkpoint-{step}"
        _trainer_checkpoint(folder, model, step, [{"eval_loss": loss, "step": step}], step, loss)
        assert ckpt("save", folder, f"bert-sst2/step-{step}", "--metric", f"eval_loss={loss}").code == 0
    res = ckpt("checkout", "bert-sst2:latest", tmp_path / "resume")
    assert res.code == 0, res.err
    assert json.loads((tmp_path / "resume" / "trainer_state.json").read_text())["global_step"] == 1000
    shown = json.loads(ckpt("show", "bert-sst2:best", "--json").out)
    assert shown["name"] == "bert-sst2/step-500"


def test_rm_moves_latest_and_best_to_what_is_left(store: Store, tiny_bert, ckpt):
    model = tiny_bert()
    for step, loss in ((1, 0.5), (2, 0.2), (3, 0.3), (4, 0.9)):
        _train(model, step)
        store.save(model, f"r/step-{step}", metrics={"eval_loss": loss})
    assert (store.info("r:latest").step, store.info("r:best").step) == (4, 2)

    res = ckpt("rm", "r:latest")
    assert res.code == 0 and "tags" not in res.err  # no tag went: latest moved
    assert store.info("r:latest").step == 3
    store.delete("r:best")
    assert (store.info("r:latest").step, store.info("r:best").step) == (3, 3)
    assert "r:best follows eval_loss (lower is better)" in ckpt("policy", "r").out
    store.delete(["r/step-1", "r/step-3"])
    for tag in ("latest", "best"):
        with pytest.raises(CheckpointNotFound):
            store.resolve(f"r:{tag}")


def test_latest_and_best_cannot_be_set_or_removed_by_hand_in_any_run(store: Store, tiny_bert_dir, ckpt):
    store.save(tiny_bert_dir, "plain/step-1", metrics={"eval_loss": 0.4})  # no policy, no integration
    store.save(tiny_bert_dir, "plain/step-2", metrics={"eval_loss": 0.6})
    with pytest.raises(InvalidArgument, match="plain:best is kept up to date by ckptstore") as exc:
        store.tag("plain/step-2", "best")
    assert "ckpt tag plain/step-2 chosen" in exc.value.hint
    with pytest.raises(InvalidArgument, match="plain:latest is kept up to date"):
        store.untag("plain:latest")
    with pytest.raises(InvalidArgument, match="plain:latest is kept up to date"):
        store.save(tiny_bert_dir, "plain/step-3", tags=["latest"])
    res = ckpt("tag", "plain/step-2", "best")
    assert res.code != 0 and "kept up to date by ckptstore" in res.err and "Traceback" not in res.err
    assert store.info("plain:best").step == 1 and store.info("plain:latest").step == 2
    assert "chosen" in store.tag("plain/step-2", "chosen").tags


def test_import_of_trainer_output_sets_latest_and_best_follows_trainers_metric(store: Store, accuracy_run, ckpt,
                                                                             tiny_bert):
    res = ckpt("import", accuracy_run, "--run", "acc")
    assert res.code == 0, res.err
    assert store.info("acc:latest").name == "acc/step-6"
    assert store.info("acc:best").name == "acc/step-4"  # Trainer's best_model_checkpoint, by eval_accuracy
    assert "acc:best follows eval_accuracy (higher is better)" in ckpt("policy", "acc").out
    # A later save keeps best on Trainer's metric (by eval_loss it would jump to the new one).
    model = tiny_bert()
    store.save(model, "acc/step-8", metrics={"eval_loss": 0.1, "eval_accuracy": 0.75})
    assert store.info("acc:best").name == "acc/step-4" and store.info("acc:latest").name == "acc/step-8"


def test_import_of_one_model_folder_and_convert_into_a_new_run_get_latest(store: Store, tiny_bert_dir):
    report = store.import_folder(tiny_bert_dir, run="imported")
    assert report.added and store.info("imported:latest").name == report.added[0].name
    info = store.convert("imported:latest", dtype="bf16", name="serving/bf16")
    assert store.info("serving:latest").id == info.id
    with pytest.raises(CheckpointNotFound):
        store.resolve("serving:best")  # no metric in that run: no best


def test_tags_move_with_an_index_query_not_manifest_reads(store: Store, tiny_bert_dir, monkeypatch):
    """Moving latest/best runs after every save: it must not read the run's manifests."""
    for step in (1, 2, 3):
        store.save(tiny_bert_dir, f"r/step-{step}", metrics={"eval_loss": 1.0 / step})
    reads: list[str] = []
    from ckptstore._repo.repository import Repository

    original = Repository.read_manifest

    def counting(self, cid):
        reads.append(cid)
        return original(self, cid)

    monkeypatch.setattr(Repository, "read_manifest", counting)
    store.delete("r/step-3")
    assert reads == [] and store.info("r:latest").step == 2 and store.info("r:best").step == 2
