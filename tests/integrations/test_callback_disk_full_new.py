"""A real Trainer with CheckpointCallback whose store's disk fills up right after a checkpoint is stored: the
housekeeping that follows (the policy's prune, the tags, the gc and its index update) fails, and training goes on
with a RetentionWarning instead of dying. Once space is back, the next checkpoint is stored and the store is clean."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import pytest
import transformers

from ckptstore import Store
from ckptstore._ops import retention as _retention
from ckptstore.errors import RetentionWarning
from ckptstore.integrations.transformers import CheckpointCallback
from ckptstore.policies import RetentionPolicy

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "reliability"))
from test_store_full_new import fill  # noqa: E402

sys.path.pop(0)
from test_transformers_callback import make_trainer  # noqa: E402
from mounts import mount_tmpfs, unmount  # noqa: E402


@pytest.fixture
def small_fs(tmp_path):
    mnt = tmp_path / "small-fs"
    mount_tmpfs(mnt, "16m")
    yield mnt
    unmount(mnt)


class FreeSpaceAt(transformers.TrainerCallback):
    """Removes the ballast at a step: the user freeing space while training runs."""

    def __init__(self, step: int, ballast: list[Path]) -> None:
        self.step, self.ballast = step, ballast

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            for path in self.ballast:
                path.unlink(missing_ok=True)


def test_training_survives_a_full_disk_after_a_save(small_fs, tmp_path, monkeypatch):
    root = small_fs / "store"
    store = Store.init(root)
    store.save(None, "scratch/x", extra_files={"a.txt": b"a"})
    store.delete("scratch/x")  # a store that has deleted before (its deletion log exists)
    ballast: list[Path] = []
    real_after_save = _retention.after_save

    def disk_fills_after_the_commit(store_, run):
        # Another process fills the disk the moment checkpoint step-4 is committed, and again after the prune
        # (which frees a few pages as it goes): all the housekeeping after the save meets a full disk.
        if store_.catalog.infos(run=run)[0].step != 4:
            return real_after_save(store_, run)
        ballast.append(fill(small_fs))
        try:
            return real_after_save(store_, run)
        finally:
            # And the index is lost (a cache may be deleted at any time), so the gc that follows must rebuild it
            # on the full disk, as the gc of the report failed in its index update.
            store_.close()
            for suffix in ("", "-wal", "-shm"):
                Path(f"{root}/index.sqlite{suffix}").unlink(missing_ok=True)
            ballast.append(fill(small_fs))

    monkeypatch.setattr(_retention, "after_save", disk_fills_after_the_commit)
    callback = CheckpointCallback(store, "run", RetentionPolicy(keep_last=1), keep_local=1)
    trainer = make_trainer(tmp_path / "out", [callback, FreeSpaceAt(5, ballast)], max_steps=6, save_steps=2,
                           eval_steps=2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.train()  # must not raise
    messages = [str(w.message) for w in caught if issubclass(w.category, RetentionWarning)]
    assert any("No space left on device" in m for m in messages), messages
    assert any("gc after it failed" in m for m in messages), messages
    assert trainer.state.global_step == 6
    with Store.open(root) as check:
        assert "run/step-6" in {c.name for c in check.list("run")}
        assert check.resolve("run:latest") == check.resolve("run/step-6")
        assert not check.verify().problems
