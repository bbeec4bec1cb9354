"""Async save (CheckpointManager(async_save=True)): an error in the background writer surfaces at `wait()` or at
the next `save`, never swallowed, and leaves nothing visible; a load while a save is in flight (paused in another
process before its blobs are durable, or right before its manifest) sees the last committed checkpoint."""

from __future__ import annotations

import errno
import os
import signal
from pathlib import Path

import pytest
import torch

from ckptstore import CheckpointManager, Store
from ckptstore._core import failpoints as _failpoints
from ckptstore.errors import CheckpointNotFound

from ._harness import wait_until_stopped


def _names(root) -> set[str]:
    with Store.open(root) as store:
        return {c.name for c in store.list()}


def test_background_error_surfaces_at_wait_and_at_the_next_save(fast_path):
    root = fast_path / "store"
    model = torch.nn.Linear(32, 32)
    with Store.init(root) as store:
        manager = CheckpointManager(store, "r", async_save=True)
        manager.save(1, model)
        assert manager.wait().name == "r/step-1"
        for action, code in (("eio", errno.EIO), ("enospc", errno.ENOSPC)):
            with torch.no_grad():
                model.weight.add_(1.0)
            _failpoints.configure(f"blob.write:{action}@1")
            try:
                assert manager.save(2, model) is None  # returns at once; the write fails in the background
                with pytest.raises(OSError) as exc_info:
                    manager.wait()
            finally:
                _failpoints.configure("")
            assert exc_info.value.errno == code
            manager.wait()  # raised once, not again
            assert _names(root) == {"r/step-1"}
            assert [p for p in (root / "tmp").iterdir() if p.is_file()] == []
        # The next save raises the error of the one before, before it takes anything.
        _failpoints.configure("manifest.fsync:eio@1")
        try:
            manager.save(2, model)
            with pytest.raises(OSError) as exc_info:
                manager.save(3, model)
        finally:
            _failpoints.configure("")
        assert exc_info.value.errno == errno.EIO
        assert _names(root) == {"r/step-1"}
        manager.save(3, model)
        assert manager.wait().name == "r/step-3"
        stored = store.load_state_dict("r/step-3")
        assert torch.equal(stored["weight"], model.weight.detach())
        manager.close()


@pytest.mark.crash
@pytest.mark.parametrize("pause_at", ["blob.sync:stop@2", "manifest.write:stop@3"])
def test_a_load_during_an_in_flight_save_sees_the_last_committed(pause_at, forkserver, fast_path):
    """Another process's background save is paused (SIGSTOP) with its blobs not yet durable, or just before its
    manifest; a reader sees step 1 as the latest, whole, and no step 2. Resumed, the save commits step 2."""
    root = fast_path / "store"
    Store.init(root).close()
    torch.manual_seed(0)
    base = torch.nn.Linear(64, 64).weight.detach().clone()
    child = forkserver.spawn("manager_async", failpoint=pause_at, store=str(root), steps=[1, 2])
    pid = child[0]
    try:
        wait_until_stopped(pid)
        with Store.open(root) as store:
            assert [c.name for c in store.list()] == ["r/step-1"], Path(child[2]).read_text()
            assert store.info("r:latest").name == "r/step-1"
            assert torch.equal(store.load_state_dict("r:latest", verify=True)["weight"], base + 1)
            with pytest.raises(CheckpointNotFound):
                store.resolve("r/step-2")
            assert store.verify().ok
    finally:
        os.kill(pid, signal.SIGCONT)
    out = forkserver.wait(child, timeout=60)
    assert out.code == 0 and out.value == "r/step-2", out.error
    with Store.open(root) as store:
        assert store.info("r:latest").name == "r/step-2"
        # (base + 1) + 1, not base + 2: the child added one per step, and float addition does not associate.
        assert torch.equal(store.load_state_dict("r:latest", verify=True)["weight"], (base + 1) + 1)
