"""Preemption of a Trainer run: a real SIGTERM at a random step makes the callback have Trainer save that step and
stop, and the process exit 143 once the checkpoint is committed; a new process resumes with no path
(``callback.resume_dir()``) and ends bit-exact with an uninterrupted run. A second SIGTERM lands mid-save."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file

from ckptstore import Store
from ckptstore.integrations.transformers import CheckpointCallback

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

from test_transformers_callback import MAX_STEPS, losses_of, make_trainer  # noqa: E402

# One save, the one the signal asks for; no evaluation (faster, and nothing in it touches the training RNG).
SETTINGS = dict(save_steps=1000, eval_strategy="no")


class Report(transformers.TrainerCallback):
    """Prints each finished step, then pauses, so a signal sent on seeing step k lands mid-run."""

    def __init__(self, pause: float) -> None:
        self.pause = pause

    def on_step_end(self, args, state, control, **kwargs):
        print(f"step {state.global_step}", flush=True)
        time.sleep(self.pause)


def preemptible_trainer(store_path: str, run: str, out: str, *, async_save: bool = False, init_seed: int = 0,
                        pause: float = 0.1) -> None:
    """A restartable Trainer script: it resumes from whatever the store holds, no path given."""
    callback = CheckpointCallback(store_path, run, async_save=async_save)
    trainer = make_trainer(Path(out) / "trainer", [callback, Report(pause)], init_seed=init_seed, **SETTINGS)
    resume = callback.resume_dir()
    print(f"start {resume}", flush=True)
    trainer.train(resume_from_checkpoint=resume)
    Path(out, "losses.json").write_text(json.dumps(losses_of(trainer)))
    save_file({k: v.clone() for k, v in trainer.model.state_dict().items()}, str(Path(out, "weights.safetensors")))


def child(code: str, env: dict | None = None) -> subprocess.Popen:
    prelude = f"import sys; sys.path[:0] = [{str(HERE)!r}, {str(HERE.parent)!r}]\n"
    return subprocess.Popen([sys.executable, "-c", prelude + code], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, **(env or {})})


def run_code(store: Store, out: Path, **kwargs) -> str:
    args = "".join(f", {k}={v!r}" for k, v in kwargs.items())
    return ("import test_transformers_preemption_new as t\n"
            f"t.preemptible_trainer({str(store.root)!r}, 'run', {str(out)!r}{args})")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    trainer = make_trainer(tmp_path_factory.mktemp("full") / "out", [], **SETTINGS)
    trainer.train()
    return losses_of(trainer), {k: v.clone() for k, v in trainer.model.state_dict().items()}


@pytest.mark.slow
@pytest.mark.parametrize("async_save", [True], ids=["async"])  # sync saves take the path every Trainer save takes
def test_sigterm_stores_the_step_exits_143_and_resume_dir_resumes_bit_exact(tmp_path, uninterrupted, async_save):
    store = Store.init(tmp_path / "store")
    at = random.Random().randint(1, MAX_STEPS - 3)
    # The failpoint sends a second SIGTERM in the middle of the store's save of the checkpoint the first asked for.
    proc = child(run_code(store, tmp_path, async_save=async_save), {"CKPT_FAILPOINT": "manifest.write:term"})
    lines = []
    with proc.stdout, proc.stderr:
        for line in proc.stdout:
            lines.append(line.strip())
            if line.strip() == f"step {at}":
                proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)
        stderr = proc.stderr.read()
    assert proc.returncode == 128 + signal.SIGTERM, stderr[-3000:]
    assert lines[0] == "start None"  # a fresh run
    steps = [int(line.split()[1]) for line in lines if line.startswith("step ")]  # Trainer prints its logs too
    stopped = steps[-1]  # the step whose end saw the signal: Trainer saved it and stopped
    assert at < stopped < MAX_STEPS, lines
    fresh = Store.open(store.root)
    assert [c.step for c in fresh.list("run")] == [stopped] and fresh.verify().ok
    assert "again" in stderr  # the second SIGTERM was noted; the save went on to its commit

    resumed = child(run_code(store, tmp_path, async_save=async_save, init_seed=5, pause=0))
    out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err[-3000:]
    assert next(line for line in out.splitlines() if line.startswith("start ")) == f"start {tmp_path / 'trainer' / f'checkpoint-{stopped}'}"
    full_losses, full_weights = uninterrupted
    assert json.loads((tmp_path / "losses.json").read_text()) == full_losses
    resumed_weights = load_file(str(tmp_path / "weights.safetensors"))
    for name, tensor in full_weights.items():
        assert torch.equal(resumed_weights[name], tensor), name
