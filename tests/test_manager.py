"""CheckpointManager: exact resume of a plain PyTorch loop (in a new process), async save, training state stored
as tensors + JSON, faults (errors in the background, a crash mid-save, two processes saving into one run)."""

from __future__ import annotations

import json
import math
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file

from ckptstore import CheckpointManager, Store
from ckptstore._core import failpoints as _failpoints
from ckptstore._training import statetree as _statetree
from ckptstore._backend.local import file_lock
from ckptstore.errors import IncompleteCheckpoint, InvalidArgument, InvalidName, NameExists
from ckptstore.policies import RetentionPolicy

TESTS = Path(__file__).resolve().parent
TOTAL_STEPS = 8


# -- the loop under test (also run by the resuming subprocess, which imports this module) -------------------------


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def make_training(seed: int = 0):
    """A tiny BERT masked LM (dropout on, tied decoder weights), AdamW and a warmup/decay LR schedule."""
    from conftest import make_tiny_bert

    model = make_tiny_bert(seed, "BertForMaskedLM").train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scheduler = transformers.get_linear_schedule_with_warmup(optimizer, 2, TOTAL_STEPS)
    return model, optimizer, scheduler


def train(model, optimizer, scheduler, steps) -> list[float]:
    """Batches and masks drawn from all three generators (torch, numpy, python), so a resume must restore each."""
    losses = []
    for _ in steps:
        ids = torch.randint(1, 99, (4, 10))
        p = 0.3 + 0.2 * float(np.random.rand()) + 0.1 * random.random()
        labels = torch.where(torch.rand(ids.shape) < p, ids, torch.full_like(ids, -100))
        loss = model(input_ids=ids, labels=labels).loss
        loss.backward()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    return losses


def resume_and_finish(store_path: str, run: str, out: str) -> None:
    """Entry point of the resuming process: different seed and init, everything must come from the store."""
    seed_all(1234)
    model, optimizer, scheduler = make_training(seed=77)
    step, extra = CheckpointManager(store_path, run).restore(model, optimizer, scheduler)
    losses = extra["losses"] + train(model, optimizer, scheduler, range(step + 1, TOTAL_STEPS + 1))
    Path(out, "losses.json").write_text(json.dumps(losses))
    save_file({k: v.clone() for k, v in model.state_dict().items()}, str(Path(out, "weights.safetensors")))


def run_python(code: str, *, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    import os

    prelude = f"import sys; sys.path.insert(0, {str(TESTS)!r})\n"
    return subprocess.run(
        [sys.executable, "-c", prelude + textwrap.dedent(code)], capture_output=True, text=True, timeout=timeout,
        env={**os.environ, **(env or {})},
    )


@pytest.fixture(scope="module")
def uninterrupted():
    """Losses and final weights of the whole run, never interrupted."""
    seed_all(0)
    model, optimizer, scheduler = make_training()
    losses = train(model, optimizer, scheduler, range(1, TOTAL_STEPS + 1))
    return losses, {k: v.clone() for k, v in model.state_dict().items()}


def first_half(store: Store, run: str, *, async_save: bool) -> CheckpointManager:
    seed_all(0)
    model, optimizer, scheduler = make_training()
    manager = CheckpointManager(store, run, async_save=async_save)
    half = TOTAL_STEPS // 2
    losses = train(model, optimizer, scheduler, range(1, half + 1))
    manager.save(half, model, optimizer, scheduler, metrics={"loss": losses[-1]}, extra={"losses": losses})
    # Training goes on after the save (in a real run); a resume must not see any of it.
    train(model, optimizer, scheduler, range(half + 1, half + 3))
    manager.wait()
    return manager


# -- exact resume ------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_resume_in_a_new_process_is_bit_exact(store, tmp_path, uninterrupted):
    first_half(store, "loop", async_save=False)
    res = run_python(f"import test_manager; test_manager.resume_and_finish({str(store.root)!r}, 'loop', {str(tmp_path)!r})")
    assert res.returncode == 0, res.stderr
    full_losses, full_weights = uninterrupted
    assert json.loads((tmp_path / "losses.json").read_text()) == full_losses
    resumed = load_file(str(tmp_path / "weights.safetensors"))
    assert resumed.keys() == full_weights.keys()
    for name, tensor in full_weights.items():
        assert torch.equal(resumed[name], tensor), name


def test_async_save_resumes_bit_exactly_and_stores_what_a_sync_save_stores(store, uninterrupted):
    first_half(store, "sync", async_save=False)
    first_half(store, "async", async_save=True)
    sync_files = {f.path: f.digest for f in store.manifest("sync/step-4").files}
    async_files = {f.path: f.digest for f in store.manifest("async/step-4").files}
    assert async_files == sync_files  # the host-memory snapshot is exactly what a sync save writes
    seed_all(99)
    model, optimizer, scheduler = make_training(seed=5)
    step, extra = CheckpointManager(store, "async").restore(model, optimizer, scheduler)
    assert step == 4
    losses = extra["losses"] + train(model, optimizer, scheduler, range(5, TOTAL_STEPS + 1))
    full_losses, full_weights = uninterrupted
    assert losses == full_losses
    assert all(torch.equal(model.state_dict()[k], v) for k, v in full_weights.items())


# -- what is stored ------------------------------------------------------------------------------------------------


def test_training_state_is_tensors_plus_json_never_a_pickle(store):
    model, optimizer, scheduler = make_training()
    train(model, optimizer, scheduler, range(2))
    manager = CheckpointManager(store, "r")
    manager.save(2, model, optimizer, scheduler)
    manager.save(3, model, optimizer, scheduler)  # nothing trained in between
    m2, m3 = store.manifest("r/step-2"), store.manifest("r/step-3")
    assert not [f.path for f in m2.files if f.path.endswith((".pt", ".pth", ".bin", ".pkl"))]
    opt = m2.file("optimizer.safetensors")
    assert opt.is_safetensors and {"optimizer/state/0/exp_avg", "optimizer/state/0/step"} <= {t.name for t in opt.tensors}
    state = json.loads(store.read_file("r/step-2", "training_state.json"))
    assert state["optimizer"]["param_groups"][0]["betas"] == {"__tuple__": [0.9, 0.999]}
    assert state["scheduler"]["last_epoch"] == 2
    # Unchanged optimizer state and weights are the same blobs: stored once.
    for path in ("optimizer.safetensors", "model.safetensors", "config.json"):
        assert m2.file(path).digest == m3.file(path).digest, path


def test_state_tree_round_trips_exactly():
    state = {
        "state": {0: {"step": torch.tensor(3.0), "m": torch.arange(4.0)}, 1: {}},
        "groups": [{"betas": (0.9, 0.999), "lr": 1e-3, "flag": None, "name": "x"}],
        "odd": {"__tensor__": "not a marker", "n": np.float64(0.5)},
        "weird": [math.inf, -math.inf, 0.1 + 0.2],
    }
    skeleton, tensors = _statetree.flatten(state, "opt")
    back = _statetree.unflatten(json.loads(_statetree.dumps(skeleton)), tensors)
    assert back["state"][0]["m"] is tensors["opt/state/0/m"] and 1 in back["state"]
    assert back["groups"][0]["betas"] == (0.9, 0.999) and back["odd"] == {"__tensor__": "not a marker", "n": 0.5}
    assert back["weird"] == [math.inf, -math.inf, 0.1 + 0.2]
    nan = _statetree.unflatten(json.loads(_statetree.dumps(_statetree.flatten([math.nan], "x")[0])), {})
    assert math.isnan(nan[0])
    with pytest.raises(InvalidArgument, match="groups/0/fn"):
        _statetree.flatten({"groups": [{"fn": object()}]}, "opt")


def test_nonfinite_metric_is_kept_as_metadata(store):
    manager = CheckpointManager(store, "r")
    info = manager.save(1, torch.nn.Linear(2, 2), metrics={"loss": float("nan"), "acc": 0.5})
    assert info.metrics == {"acc": 0.5} and info.metadata["nonfinite_metrics"] == {"loss": "nan"}


def test_latest_best_and_policy(store):
    manager = CheckpointManager(store, "r", policy=RetentionPolicy(keep_last=1, keep_best=1, metric="acc", mode="max"),
                                metric="acc", mode="max")
    assert manager.latest() is None and manager.best() is None
    for step, acc in ((1, 0.5), (2, 0.9), (3, 0.7), (4, 0.6)):
        manager.save(step, torch.nn.Linear(2, 2), metrics={"acc": acc})
    assert manager.latest().name == "r/step-4" and manager.best().name == "r/step-2"
    assert sorted(c.name for c in store.list("r")) == ["r/step-2", "r/step-4"]
    with pytest.raises(NameExists):
        manager.save(4, torch.nn.Linear(2, 2))
    model = torch.nn.Linear(2, 2)
    assert manager.restore(model, ref="step-2") == (2, None)
    assert torch.equal(model.weight, store.load_state_dict("r/step-2")["weight"])


def test_training_resumed_from_an_earlier_checkpoint_stores_the_new_attempt_beside_the_old(store, caplog):
    """Rolling back (restore step 2 of a run that reached step 4) and training on passes step 3 and 4 again: the new
    attempts are stored as r/step-3.1 and r/step-4.1, the earlier ones stay, and `latest` is the new step 4."""
    manager = CheckpointManager(store, "r")
    for step in (1, 2, 3, 4):
        manager.save(step, torch.nn.Linear(2, 2), metrics={"loss": 1.0 / step})
    resumed = CheckpointManager(store, "r")
    assert resumed.restore(torch.nn.Linear(2, 2), ref="step-2")[0] == 2
    with caplog.at_level("WARNING", logger="ckptstore"):
        assert resumed.save(3, torch.nn.Linear(2, 2)).name == "r/step-3.1"
        assert resumed.save(4, torch.nn.Linear(2, 2)).name == "r/step-4.1"
    assert "r/step-3 is already stored" in caplog.text
    assert {c.name for c in store.list("r")} == {f"r/step-{n}" for n in (1, 2, 3, 4)} | {"r/step-3.1", "r/step-4.1"}
    assert store.info("r:latest").name == "r/step-4.1" and store.info("r/step-4.1").step == 4
    assert [c.name for c in store.lineage("r/step-4.1")] == ["r/step-4.1", "r/step-3.1", "r/step-2", "r/step-1"]
    with pytest.raises(NameExists):  # a step not after the restored one is a mistake in the loop, not a new attempt
        resumed.save(2, torch.nn.Linear(2, 2))


def test_checkout_of_a_manager_checkpoint_says_how_to_resume_it(store, ckpt, tmp_path):
    model, optimizer, scheduler = make_training()
    CheckpointManager(store, "r").save(3, model, optimizer, scheduler)
    res = ckpt("checkout", "r:latest", tmp_path / "resume", store=store.root)
    assert res.code == 0 and (tmp_path / "resume" / "training_state.json").is_file()
    assert "CheckpointManager" in res.err and ".restore(" in res.err and "trainer.train" not in res.err


# -- bad input -----------------------------------------------------------------------------------------------------


def test_invalid_run_name_is_refused(store):
    for run in ("a/b", "", "has space", ".."):
        with pytest.raises(InvalidName):
            CheckpointManager(store, run)


def test_restore_says_when_there_is_no_optimizer_state(store):
    model, optimizer, scheduler = make_training()
    CheckpointManager(store, "r").save(1, model)  # weights only
    store.save(model, "plain/step-1")  # not saved by the manager at all
    with pytest.raises(IncompleteCheckpoint, match="no optimizer state"):
        CheckpointManager(store, "r").restore(model, optimizer)
    with pytest.raises(IncompleteCheckpoint, match="no training state"):
        CheckpointManager(store, "plain").restore(model, optimizer, scheduler)
    assert CheckpointManager(store, "plain").restore(model) == (1, None)  # weights alone are fine
    with pytest.raises(IncompleteCheckpoint, match="do not fit this model"):
        CheckpointManager(store, "r").restore(torch.nn.Linear(3, 3))


# -- async save ------------------------------------------------------------------------------------------------------


def test_async_snapshot_is_consistent_and_loads_see_the_last_committed(store):
    model = torch.nn.Linear(16, 16)
    manager = CheckpointManager(store, "r", async_save=True)
    manager.save(1, model)
    manager.wait()
    with torch.no_grad():
        model.weight.add_(1.0)
    expected = {k: v.clone() for k, v in model.state_dict().items()}
    # Held exclusively (as gc holds it), the objects lock stops the background save before it writes anything.
    with file_lock(store.root / "locks" / "objects"):
        manager.save(2, model)
        with torch.no_grad():
            model.weight.mul_(0.0)  # training goes on, mutating the live weights
        reader = Store.open(store.root)
        assert reader.info("r:latest").name == "r/step-1"
        assert [c.name for c in reader.list("r")] == ["r/step-1"]
        assert torch.equal(reader.load_state_dict("r:latest")["bias"], model.bias)
    assert manager.wait().name == "r/step-2"
    stored = store.load_state_dict("r/step-2")
    assert all(torch.equal(stored[k], v) for k, v in expected.items())


def test_second_async_save_waits_for_the_first(store):
    manager = CheckpointManager(store, "r", async_save=True)
    manager.save(1, torch.nn.Linear(64, 64))
    manager.save(2, torch.nn.Linear(64, 64))
    # save(2) returned, so save(1) had been committed before it started.
    assert "r/step-1" in [c.name for c in Store.open(store.root).list("r")]
    manager.wait()


def test_background_error_is_raised_at_the_next_save_and_at_wait(store):
    manager = CheckpointManager(store, "r", async_save=True)
    try:
        _failpoints.configure("blob.write:eio")
        manager.save(1, torch.nn.Linear(8, 8))
        with pytest.raises(OSError, match="failpoint blob.write"):
            manager.save(2, torch.nn.Linear(8, 8))
        assert store.list("r") == []  # neither was stored: step 2 never started
        _failpoints.configure("blob.write:eio")
        manager.save(3, torch.nn.Linear(8, 8))
        with pytest.raises(OSError):
            manager.wait()
        manager.wait()  # raised once, not forever
    finally:
        _failpoints.configure(None)
    manager.save(3, torch.nn.Linear(8, 8))
    assert manager.wait().name == "r/step-3"
    assert not store.verify().problems


@pytest.mark.crash
def test_pending_async_save_completes_at_exit_and_a_crash_mid_save_leaves_the_store_valid(store):
    code = f"""
        import torch
        from ckptstore import CheckpointManager
        from ckptstore._core import failpoints as _failpoints
        manager = CheckpointManager({str(store.root)!r}, "r", async_save=True)
        manager.save(1, torch.nn.Linear(256, 256))
        if {{crash}}:
            manager.wait()
            _failpoints.configure("manifest.rename:kill")  # dies between writing the manifest and renaming it
            manager.save(2, torch.nn.Linear(256, 256))
            manager.wait()
        # else: exit with the save in flight; atexit must finish it
    """
    res = run_python(code.replace("{crash}", "False"))
    assert res.returncode == 0, res.stderr
    fresh = Store.open(store.root)
    assert [c.name for c in fresh.list("r")] == ["r/step-1"]
    fresh.delete("r/step-1")
    res = run_python(code.replace("{crash}", "True"))
    assert res.returncode == -9, res.stderr
    fresh = Store.open(store.root)
    assert [c.name for c in fresh.list("r")] == ["r/step-1"]
    assert not fresh.verify().problems
    fresh.gc()
    assert not fresh.verify().problems
    model = torch.nn.Linear(256, 256)
    assert CheckpointManager(fresh, "r").restore(model) == (1, None)


@pytest.mark.crash
def test_two_processes_saving_into_one_run_both_succeed(store, tmp_path):
    code = f"""
        import sys, time, torch
        from pathlib import Path
        from ckptstore import CheckpointManager
        from ckptstore.policies import RetentionPolicy
        steps = [int(s) for s in sys.argv[1].split(",")]
        manager = CheckpointManager({str(store.root)!r}, "shared", policy=RetentionPolicy(keep_last=100))
        Path({str(tmp_path)!r}, "ready-" + sys.argv[1]).touch()
        while not Path({str(tmp_path)!r}, "go").exists():
            time.sleep(0.01)
        for step in steps:
            torch.manual_seed(step)
            manager.save(step, torch.nn.Linear(128, 128), metrics={{"eval_loss": 1.0 / step}})
    """
    import os

    prelude = f"import sys; sys.path.insert(0, {str(TESTS)!r})\n"
    procs = [
        subprocess.Popen([sys.executable, "-c", prelude + textwrap.dedent(code), steps], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=dict(os.environ))
        for steps in ("1,3,5,7", "2,4,6,8")
    ]
    try:
        while len(list(tmp_path.glob("ready-*"))) < 2 and all(p.poll() is None for p in procs):
            import time

            time.sleep(0.05)
        (tmp_path / "go").touch()
        results = [p.communicate(timeout=120) for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert [p.returncode for p in procs] == [0, 0], results
    fresh = Store.open(store.root)
    assert sorted(c.step for c in fresh.list("shared")) == list(range(1, 9))
    assert not fresh.verify().problems
    assert fresh.info("shared:latest").name == "shared/step-8"
    assert fresh.info("shared:best").name == "shared/step-8"
    for step in range(1, 9):
        torch.manual_seed(step)
        expected = torch.nn.Linear(128, 128).state_dict()
        stored = fresh.load_state_dict(f"shared/step-{step}")
        assert all(torch.equal(stored[k], v) for k, v in expected.items())
