"""Replication while training: `CheckpointManager(..., replicate_to=...)` and `CheckpointCallback(...,
replicate_to=...)` copy each committed save to another store in a background thread; training does not wait for it,
a failure is a ReplicationWarning retried after the next save, the end of training waits for it, and both stores end
with the checkpoints the run's policy keeps.

The destinations are real stores: a local folder, and the in-memory backend (DESTINATIONS maps a backend's name to
a factory; object storage joins by adding its own).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from conformance.memory_backend import MemoryBackend
from conftest import make_tiny_bert

from ckptstore import CheckpointManager, Store
from ckptstore._core import failpoints
from ckptstore.errors import ReplicationWarning
from ckptstore.policies import RetentionPolicy


def _local(tmp_path: Path) -> Store | str:
    return str(tmp_path / "mirror")  # a path: the replicator opens (and creates) the store itself


def _memory(tmp_path: Path) -> Store | str:
    return Store.on(MemoryBackend(), create=True)


def _s3(tmp_path: Path) -> Store | str:
    return os.environ["CKPT_TEST_S3_URL"]  # a URL: the replicator opens (and creates) the store itself


DESTINATIONS: dict[str, Callable[[Path], Store | str]] = {"local": _local, "memory": _memory, "s3": _s3}


@pytest.fixture(params=sorted(DESTINATIONS))
def destination(request, tmp_path):
    if request.param == "s3":
        request.getfixturevalue("monkeypatch").setenv("CKPT_TEST_S3_URL", request.getfixturevalue("s3_url"))
    dest = DESTINATIONS[request.param](tmp_path)
    yield dest
    if isinstance(dest, Store):
        backend = dest._repo.backend
        dest.close()
        if isinstance(backend, MemoryBackend):
            backend.close()


def _open(dest: Store | str) -> Store:
    return dest if isinstance(dest, Store) else Store.open(dest)


def _train(manager: CheckpointManager, steps, losses) -> None:
    model = make_tiny_bert(0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for step, loss in zip(steps, losses):
        model.zero_grad()
        model(input_ids=torch.tensor([[1, 2, 3]])).last_hidden_state.sum().backward()
        opt.step()
        manager.save(step, model, opt, metrics={"eval_loss": loss})


@pytest.mark.parametrize("async_save", [False, True], ids=["sync-save", "async-save"])
def test_manager_replicates_every_save_and_both_stores_keep_what_the_policy_keeps(store, destination, async_save):
    policy = RetentionPolicy(keep_last=2)
    manager = CheckpointManager(store, "run", policy=policy, async_save=async_save, replicate_to=destination)
    # step 10 stays the best (lowest eval_loss), so the policy keeps it beside the last two.
    _train(manager, (10, 20, 30, 40, 50), (0.1, 0.5, 0.4, 0.3, 0.2))
    manager.close()

    mirror = _open(destination)
    mirror.refresh()
    kept = {c.name for c in store.list("run")}
    assert kept == {"run/step-10", "run/step-40", "run/step-50"}
    assert {(c.name, c.id) for c in mirror.list("run")} == {(c.name, c.id) for c in store.list("run")}
    assert mirror.get_policy("run") == policy
    assert mirror.tags("run")["run:best"] == store.tags("run")["run:best"]
    assert mirror.tags("run")["run:latest"] == store.tags("run")["run:latest"]
    assert manager.replicator.failures == 0
    # What the mirror holds restores like the original.
    restored = CheckpointManager(mirror, "run", save_on_signal=False)
    model = make_tiny_bert(3)
    step, _ = restored.restore(model, torch.optim.AdamW(model.parameters(), lr=1e-2))
    assert step == 50
    original = store.load_state_dict("run/step-50")
    assert all(torch.equal(model.state_dict()[k], v) for k, v in original.items())
    assert mirror.verify().ok


def test_a_save_returns_while_the_replication_waits(store, tmp_path):
    mirror = Store.init(tmp_path / "mirror")
    manager = CheckpointManager(store, "run", replicate_to=tmp_path / "mirror", save_on_signal=False)
    with mirror._repo.commit_lock():  # another process busy at the destination: every sync there waits
        started = time.monotonic()
        _train(manager, (1, 2), (0.5, 0.4))
        assert time.monotonic() - started < 30  # the saves did not wait for the (60 s) lock
        assert store.has("run/step-2")
        assert not manager.replicator.flush(timeout=0.2)  # the copy is still waiting for the destination
        mirror.refresh()
    assert manager.replicator.flush(timeout=60)
    manager.close()
    mirror.refresh()
    assert {c.id for c in mirror.list()} == {c.id for c in store.list()}


def test_a_checkpoint_a_sync_was_reading_when_the_source_pruned_it_is_pruned_after_the_copy(store, tmp_path):
    """The sync leases each checkpoint at the source while it copies it, so the training loop's prune after a save
    keeps it as in use; after the last save no other prune comes back for it, so the replicator does."""
    from ckptstore._repo import leases

    mirror = Store.init(tmp_path / "mirror")
    manager = CheckpointManager(store, "run", policy=RetentionPolicy(keep_last=1), replicate_to=tmp_path / "mirror",
                                save_on_signal=False)
    _train(manager, (1,), (0.5,))
    assert manager.replicator.flush(timeout=60)  # the run's settings are at the mirror: later syncs write none
    with mirror._repo.coord.lock("objects", exclusive=True):  # as a gc there would: the copy waits, leasing step 2
        _train(manager, (2,), (0.4,))
        second = store.info("run/step-2").id
        deadline = time.monotonic() + 60
        while second not in _in_use(store, leases):
            assert time.monotonic() < deadline, "the sync never leased the checkpoint it copies"
            time.sleep(0.05)
        _train(manager, (3,), (0.3,))  # the last save: its prune keeps step 2, in use by the sync
        assert store.has("run/step-2")
    manager.close()

    assert {c.name for c in store.list("run")} == {"run/step-3"}
    mirror.refresh()
    assert {c.name for c in mirror.list("run")} == {"run/step-3"}
    assert manager.replicator.failures == 0


def _in_use(store: Store, leases) -> frozenset[str]:
    with store._repo.commit_lock():
        return leases.in_use(store._repo)


def test_a_failed_replication_is_a_warning_and_the_next_save_retries_it(store, tmp_path):
    manager = CheckpointManager(store, "run", replicate_to=tmp_path / "mirror", save_on_signal=False)
    failpoints.configure("sync.blob:raise@1")  # the first blob the first sync sends fails, as a dropped link would
    try:
        with pytest.warns(ReplicationWarning, match=r"Replicating run 'run' to .*mirror failed .*next save tries"):
            _train(manager, (1,), (0.5,))
            manager.replicator.flush()
        assert manager.replicator.failures == 1
        mirror = Store.open(tmp_path / "mirror")
        assert mirror.list() == []  # nothing half-copied is visible
        _train(manager, (2,), (0.4,))  # the next save's sync takes step 1 along
        manager.close()
    finally:
        failpoints.configure(None)
    mirror.refresh()
    assert {c.name for c in mirror.list()} == {"run/step-1", "run/step-2"}
    assert manager.replicator.failures == 1


def test_a_conflict_at_the_destination_is_a_warning_and_the_rest_is_copied(store, tmp_path):
    mirror = Store.init(tmp_path / "mirror")
    theirs = mirror.save(make_tiny_bert(9), "run/step-1")
    manager = CheckpointManager(store, "run", replicate_to=mirror, save_on_signal=False)
    with pytest.warns(ReplicationWarning, match="conflict"):
        _train(manager, (1, 2), (0.5, 0.4))
        manager.close()
    mirror.refresh()
    assert mirror.info("run/step-1").id == theirs.id  # never overwritten
    assert mirror.info("run/step-2").id == store.info("run/step-2").id


def test_replicate_to_a_folder_that_is_not_a_store_fails_at_once(store, tmp_path):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("not a store")
    with pytest.raises(Exception) as exc:
        CheckpointManager(store, "run", replicate_to=tmp_path / "taken", save_on_signal=False)
    assert "taken" in str(exc.value)


@pytest.mark.slow
def test_trainer_run_with_replicate_to_ends_with_the_checkpoints_the_policy_keeps(tmp_path, tree_sha256):
    from integrations.test_transformers_callback import make_trainer

    from ckptstore.integrations.transformers import CheckpointCallback

    store = Store.init(tmp_path / "store")
    policy = RetentionPolicy(keep_last=2)
    callback = CheckpointCallback(store, "tiny", policy, replicate_to=tmp_path / "mirror")
    trainer = make_trainer(tmp_path / "out", [callback], max_steps=8, save_steps=2)
    trainer.train()

    mirror = Store.open(tmp_path / "mirror")
    kept = {(c.name, c.id) for c in store.list("tiny")}
    assert len(kept) >= 2 and {n for n, _ in kept} >= {"tiny/step-6", "tiny/step-8"}
    assert {(c.name, c.id) for c in mirror.list("tiny")} == kept
    assert mirror.get_policy("tiny") == policy
    assert callback.replicator.failures == 0
    assert callback.replicator.last_report is not None
    # Resumable from the mirror: the checkout is the very folder the store holds.
    mirror.checkout("tiny:latest", tmp_path / "resume")
    store.checkout("tiny:latest", tmp_path / "resume-local")
    assert tree_sha256(tmp_path / "resume") == tree_sha256(tmp_path / "resume-local")


EXIT_SCRIPT = """
import sys, torch
sys.path.insert(0, {tests!r})
from conftest import make_tiny_bert
from ckptstore import CheckpointManager, Store
manager = CheckpointManager(Store.open({store!r}, create=True), "run", async_save=True, replicate_to={mirror!r},
                            save_on_signal=False)
model = make_tiny_bert(0)
manager.save(1, model)
manager.save(2, model)
print("saved", flush=True)
# no wait(), no close(): the process's exit waits for the save in flight, then for its replication
"""


def test_the_process_exit_waits_for_the_replication_of_the_last_save(tmp_path):
    import subprocess
    import sys

    script = EXIT_SCRIPT.format(tests=str(Path(__file__).resolve().parent), store=str(tmp_path / "store"),
                                mirror=str(tmp_path / "mirror"))
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "saved" in done.stdout and "failed" not in done.stderr
    source, mirror = Store.open(tmp_path / "store"), Store.open(tmp_path / "mirror")
    assert {c.id for c in mirror.list()} == {c.id for c in source.list()} and len(source.list()) == 2
