"""Preemption of a plain loop (CheckpointManager), with real processes and real signals: SIGTERM at a random step
saves that step and exits 143; a new process resumes with no path and ends bit-exact with an uninterrupted run.
Also async saves, a second SIGTERM during the save (failpoint action ``term``), SIGUSR1, chained handlers, and
a verified resume that passes over a damaged newest checkpoint."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from ckptstore import CheckpointManager, Store
from ckptstore.errors import CorruptObject

TESTS = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS))

from test_manager import TOTAL_STEPS, make_training, seed_all, train  # noqa: E402

STEP_PAUSE = 0.1  # seconds between steps in the child, so a signal sent on seeing step k lands mid-run


# -- the loop under test (run by the subprocesses, which import this module) ---------------------------------------


def preemptible_loop(store_path: str, run: str, out: str, *, async_save: bool = False, seed: int = 0,
                     pause: float = STEP_PAUSE) -> None:
    """A restartable training script: no path, no step given; it resumes from whatever the store holds."""
    seed_all(seed)
    model, optimizer, scheduler = make_training(seed=seed)
    manager = CheckpointManager(store_path, run, async_save=async_save)
    restored, extra = manager.restore(model, optimizer, scheduler)
    losses = extra["losses"] if extra else []
    print(f"start {restored or 0}", flush=True)
    for step in range((restored or 0) + 1, TOTAL_STEPS + 1):
        losses = losses + train(model, optimizer, scheduler, [step])
        manager.step_boundary(step, model, optimizer, scheduler, extra={"losses": losses})
        print(f"step {step}", flush=True)
        time.sleep(pause)
    manager.close()
    print("finished", flush=True)
    Path(out, "losses.json").write_text(json.dumps(losses))
    save_file({k: v.clone() for k, v in model.state_dict().items()}, str(Path(out, "weights.safetensors")))


def child(code: str, env: dict | None = None) -> subprocess.Popen:
    prelude = f"import sys; sys.path.insert(0, {str(TESTS)!r})\n"
    return subprocess.Popen([sys.executable, "-c", prelude + textwrap.dedent(code)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})})


def loop_code(store: Store, run: str, out: Path, **kwargs) -> str:
    args = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
    return (f"import test_preemption_new as t\n"
            f"t.preemptible_loop({str(store.root)!r}, {run!r}, {str(out)!r}{', ' + args if args else ''})")


def signal_at(proc: subprocess.Popen, step: int, sig: int = signal.SIGTERM) -> tuple[list[str], str]:
    """Send `sig` once the child reports `step`; return the lines it printed and its stderr."""
    lines = []
    assert proc.stdout is not None and proc.stderr is not None
    with proc.stdout, proc.stderr:
        for line in proc.stdout:
            lines.append(line.strip())
            if line.strip() == f"step {step}":
                proc.send_signal(sig)
        proc.wait(timeout=60)
        lines.append(f"exited {proc.returncode}")
        return lines, proc.stderr.read()


@pytest.fixture(scope="module")
def uninterrupted():
    seed_all(0)
    model, optimizer, scheduler = make_training(seed=0)
    losses = train(model, optimizer, scheduler, range(1, TOTAL_STEPS + 1))
    return losses, {k: v.clone() for k, v in model.state_dict().items()}


def assert_bit_exact(out: Path, uninterrupted) -> None:
    full_losses, full_weights = uninterrupted
    assert json.loads((out / "losses.json").read_text()) == full_losses
    resumed = load_file(str(out / "weights.safetensors"))
    assert resumed.keys() == full_weights.keys()
    for name, tensor in full_weights.items():
        assert torch.equal(resumed[name], tensor), name


# -- a real SIGTERM at a random step -------------------------------------------------------------------------------


# The async case also sends SIGUSR1 (SLURM's --signal) to a process with a handler of its own for it, which must
# run after the commit, and a second signal (the failpoint sends SIGTERM) lands in the middle of the save.
PREVIOUS_HANDLER = """
import signal
from pathlib import Path
from ckptstore import Store
def previous(signum, frame):
    Path(MARKER).write_text(str([c.step for c in Store.open(STORE).list("loop")]))
signal.signal(signal.SIGUSR1, previous)
"""


@pytest.mark.parametrize("async_save", [False, True], ids=["sync-sigterm", "async-sigusr1-then-sigterm-mid-save"])
def test_a_signal_saves_the_step_exits_128_plus_signum_and_a_new_process_resumes_bit_exact(
        store, tmp_path, uninterrupted, async_save):
    at = random.Random().randint(1, TOTAL_STEPS - 3)
    sig, env, code = signal.SIGTERM, None, loop_code(store, "loop", tmp_path, async_save=async_save)
    marker = tmp_path / "previous-handler"
    if async_save:
        sig, env = signal.SIGUSR1, {"CKPT_FAILPOINT": "manifest.write:term"}
        code = PREVIOUS_HANDLER.replace("MARKER", repr(str(marker))).replace("STORE", repr(str(store.root))) + code
    lines, stderr = signal_at(child(code, env), at, sig)
    assert f"exited {128 + sig}" in lines, stderr[-2000:]
    stopped = int(lines[-2].split()[1]) + 1  # the next boundary saw the signal, saved its step and exited there
    assert at < stopped <= TOTAL_STEPS, lines
    fresh = Store.open(store.root)
    assert [c.step for c in fresh.list("loop")] == [stopped]
    assert fresh.verify().ok
    if async_save:
        assert "again" in stderr, stderr[-2000:]  # the second signal was noted, and the save went on to its commit
        assert json.loads(marker.read_text()) == [stopped]  # the process's own handler ran after the commit

    resumed = child(loop_code(store, "loop", tmp_path, async_save=async_save, seed=7, pause=0))
    out, err = resumed.communicate(timeout=120)
    assert resumed.returncode == 0, err[-2000:]
    assert out.splitlines()[0] == f"start {stopped}"
    assert_bit_exact(tmp_path, uninterrupted)


def test_handlers_are_installed_by_the_first_step_boundary_and_put_back_by_close(store):
    """A loop that never calls step_boundary keeps the default SIGTERM (which kills it): a handler that only
    records would leave such a process running until the SIGKILL."""
    own = signal.getsignal(signal.SIGTERM)
    model = torch.nn.Linear(2, 2)
    off = CheckpointManager(store, "off", save_on_signal=False)
    off.step_boundary(1, model)
    on = CheckpointManager(store, "on")
    assert signal.getsignal(signal.SIGTERM) is own and on.preempted is None
    on.step_boundary(1, model)
    assert signal.getsignal(signal.SIGTERM) is not own and signal.getsignal(signal.SIGUSR1) is not own
    on.close()
    assert signal.getsignal(signal.SIGTERM) is own
    assert store.list() == []  # no signal, no save


# -- a verified resume passes over damage -------------------------------------------------------------------------


def damage(store: Store, ref: str, path: str = "optimizer.safetensors") -> None:
    """Flip a byte of a blob only this checkpoint has (a disk error under one checkpoint)."""
    others = {b.digest for c in store.list() if c.id != store.resolve(ref)
              for f in store.manifest(c.id).files for b in f.blobs}
    blob = next(b.digest for b in store.manifest(ref).file(path).blobs if b.digest not in others)
    obj = store.root / "objects" / blob[:2] / blob[2:]
    os.chmod(obj, 0o644)
    data = bytearray(obj.read_bytes())
    data[len(data) // 2] ^= 0xFF
    obj.write_bytes(bytes(data))


def saved_steps(store: Store, run: str, steps) -> tuple:
    seed_all(0)
    model, optimizer, scheduler = make_training()
    manager = CheckpointManager(store, run)
    states = {}
    for step in steps:
        train(model, optimizer, scheduler, [step])
        manager.save(step, model, optimizer, scheduler, extra={"step": step})
        states[step] = {k: v.clone() for k, v in model.state_dict().items()}
    return states


def test_restore_with_no_ref_passes_over_a_damaged_newest_checkpoint_and_says_so(store, caplog):
    states = saved_steps(store, "r", (1, 2, 3))
    damage(store, "r/step-3")
    model, optimizer, scheduler = make_training(seed=9)
    manager = CheckpointManager(store, "r")
    assert manager.restore(model, optimizer, scheduler) == (2, {"step": 2})
    assert all(torch.equal(model.state_dict()[k], v) for k, v in states[2].items())
    assert "'r/step-3' is damaged" in caplog.text and "resuming from 'r/step-2'" in caplog.text
    assert manager.resumed_from.skipped[0][0] == "r/step-3"
    assert CheckpointManager(store, "fresh").restore(model) == (None, None)  # nothing stored yet: a fresh run


def test_every_checkpoint_damaged_is_a_clear_error(store):
    saved_steps(store, "r", (1, 2))
    damage(store, "r/step-1", "model.safetensors")
    damage(store, "r/step-2", "model.safetensors")
    with pytest.raises(CorruptObject, match=r"No checkpoint of run 'r' can be resumed from.*'r/step-2', 'r/step-1'"):
        CheckpointManager(store, "r").restore(make_training()[0])
    try:
        store.resume_point("r")
    except CorruptObject as exc:
        assert "\n" not in str(exc) and "ckpt verify" in exc.hint


def test_checkout_latest_verify_falls_back_naming_both_but_an_explicit_name_fails(store, tmp_path, ckpt):
    saved_steps(store, "r", (1, 2, 3))
    damage(store, "r/step-3")
    res = ckpt("checkout", "r:latest", tmp_path / "a", "--verify", store=store.root)
    assert res.code == 0, res.err
    assert "'r/step-3' is damaged" in res.err and "r/step-2" in res.err and "Checked out r/step-2" in res.err
    assert json.loads((tmp_path / "a" / "training_state.json").read_text())["step"] == 2
    res = ckpt("checkout", "r/step-3", tmp_path / "b", "--verify", store=store.root)
    assert res.code == 1 and "r/step-3" in res.err and not (tmp_path / "b").exists()
    res = ckpt("checkout", "r:latest", tmp_path / "c", store=store.root)  # no --verify: no re-hash, no fallback
    assert res.code == 0
