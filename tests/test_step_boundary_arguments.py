"""`CheckpointManager.step_boundary` takes the state as `save` does and hands it on when a signal comes: an
argument `save` would not take fails at the first call (not at the preemption, when it is too late to fix), and
what is given by keyword (metrics, extra) is what the checkpoint saved on the signal holds."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap

import pytest
import torch

from ckptstore import CheckpointManager, Store


@pytest.mark.parametrize("call", [
    lambda m, model: m.step_boundary(1, model, metric={"loss": 1.0}),  # a misspelt keyword
    lambda m, model: m.step_boundary(1, model, None, None, None, None, "one too many"),
])
def test_an_argument_save_would_refuse_fails_at_the_first_step_boundary(store, call):
    own = signal.getsignal(signal.SIGTERM)
    manager = CheckpointManager(store, "run")
    with pytest.raises(TypeError):
        call(manager, torch.nn.Linear(2, 2))
    assert signal.getsignal(signal.SIGTERM) is own  # nothing installed: the loop never got going
    assert store.list() == []


def test_the_state_given_by_keyword_is_saved_on_a_signal(tmp_path):
    code = f"""
        import os, signal, torch
        from ckptstore import CheckpointManager
        model = torch.nn.Linear(2, 2)
        manager = CheckpointManager({str(tmp_path / "store")!r}, "run")
        manager.step_boundary(6, model, metrics={{"eval_loss": 0.25}}, extra={{"seen": [1, 2]}})
        os.kill(os.getpid(), signal.SIGUSR1)
        manager.step_boundary(7, model, metrics={{"eval_loss": 0.125}}, extra={{"seen": [1, 2, 3]}})
        print("not reached")
    """
    child = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                           timeout=120)
    assert child.returncode == 128 + signal.SIGUSR1, child.stderr[-2000:]
    assert "not reached" not in child.stdout
    store = Store.open(tmp_path / "store")
    assert [c.name for c in store.list()] == ["run/step-7"]
    assert store.info("run/step-7").metrics == {"eval_loss": 0.125}
    step, extra = CheckpointManager(store, "run").restore(torch.nn.Linear(2, 2))
    assert (step, extra) == (7, {"seen": [1, 2, 3]})
