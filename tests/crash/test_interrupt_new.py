"""Ctrl-C during `ckpt save`, in a real process: a failpoint stops the process at a chosen step of the save
(SIGSTOP), the test sends SIGINT and SIGCONT, and then looks at what the store holds.

What must hold: nothing half-saved is visible; tmp/ is empty; blobs already moved into objects/ are reported
("N MiB of unreferenced blobs: 'ckpt gc' reclaims them") and gc does reclaim them; a save whose manifest was
committed before the interrupt is reported as saved (exit 0), never as interrupted."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import run_ckpt_subprocess

pytestmark = pytest.mark.crash

MiB = 1 << 20


@pytest.fixture
def model_dir(tmp_path) -> Path:
    """A folder of random tensors (48 MiB: 12 tensors of 4 MiB, each one blob) with a config.json."""
    import numpy as np
    from safetensors.numpy import save_file

    path = tmp_path / "model"
    path.mkdir()
    rng = np.random.default_rng(7)
    save_file({f"layer.{i}.weight": rng.standard_normal((1024, 1024), dtype=np.float32) for i in range(12)},
              str(path / "model.safetensors"))
    (path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    return path


def _state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1][0]


def interrupted_save(src: Path, store: Path, name: str, failpoint: str) -> subprocess.CompletedProcess:
    """`ckpt save SRC NAME` stopped at `failpoint` (NAME:stop@N), then sent SIGINT, as Ctrl-C does."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "ckptstore", "save", str(src), name, "--store", str(store)],
        env={**os.environ, "CKPT_FAILPOINT": failpoint}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    deadline = time.monotonic() + 60
    while _state(proc.pid) != "T":
        assert proc.poll() is None, f"the save ended without reaching {failpoint}: {proc.communicate()}"
        assert time.monotonic() < deadline, f"{failpoint} never reached"
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGINT)  # pending while stopped; taken as soon as it runs again
    os.kill(proc.pid, signal.SIGCONT)
    out, err = proc.communicate(timeout=60)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _objects(store: Path) -> dict[str, int]:
    root = store / "objects"
    return {p.parent.name + p.name: p.stat().st_size for p in root.glob("*/*")} if root.is_dir() else {}


def _tmp_files(store: Path) -> list[str]:
    return sorted(p.name for p in (store / "tmp").iterdir()) if (store / "tmp").is_dir() else []


def _ls(store: Path) -> list[str]:
    res = run_ckpt_subprocess("ls", "--json", "--store", store)
    assert res.returncode == 0, res.stderr
    return [c["name"] for c in json.loads(res.stdout)]


@pytest.mark.parametrize("failpoint", [
    "blob.write:stop@3",     # hashing and writing into tmp/
    "blob.sync:stop",        # every blob staged in tmp/, none renamed
    "blob.rename:stop@5",    # some blobs renamed into objects/, the rest still in tmp/
    "manifest.rename:stop",  # every blob in objects/, the manifest not committed
    "index.update:stop",     # the manifest written; the save takes it back
])
def test_interrupted_save_leaves_no_tmp_file_and_reports_what_gc_reclaims(tmp_path, model_dir, failpoint):
    store = tmp_path / "store"
    assert run_ckpt_subprocess("init", store).returncode == 0
    res = interrupted_save(model_dir, store, "r/step-1", failpoint)

    assert res.returncode == 130, res.stderr
    assert res.stderr.strip().endswith("Interrupted.")
    assert "Saved" not in res.stderr
    assert _ls(store) == []
    assert _tmp_files(store) == [], "the interrupted save left its staged files in tmp/"
    left = _objects(store)
    if left:
        m = re.search(r"([\d.]+) MiB of unreferenced blobs \((\d+) blobs? this save had written\): 'ckpt gc' reclaims"
                      r" them", res.stderr)
        assert m, res.stderr
        assert int(m.group(2)) == len(left)
        assert float(m.group(1)) == pytest.approx(sum(left.values()) / MiB, abs=0.05)
    else:
        assert "unreferenced" not in res.stderr

    gc = run_ckpt_subprocess("gc", "--json", "--store", store)
    assert gc.returncode == 0, gc.stderr
    assert json.loads(gc.stdout)["blobs_removed"] == len(left)
    assert _objects(store) == {}
    again = run_ckpt_subprocess("save", model_dir, "r/step-1", "--store", store)
    assert again.returncode == 0, again.stderr
    assert run_ckpt_subprocess("verify", "--store", store).returncode == 0


def test_blobs_shared_with_a_stored_checkpoint_are_not_reported_or_lost(tmp_path, model_dir):
    store = tmp_path / "store"
    assert run_ckpt_subprocess("save", model_dir, "r/step-1", "--store", store).returncode == 0
    before = _objects(store)
    (model_dir / "config.json").write_text(json.dumps({"model_type": "bert", "note": "changed"}))
    res = interrupted_save(model_dir, store, "r/step-2", "manifest.rename:stop")
    assert res.returncode == 130
    # Only the new config.json was written; the 48 MiB of tensors belong to r/step-1.
    new = set(_objects(store)) - set(before)
    assert len(new) == 1
    assert "(1 blob this save had written)" in res.stderr
    assert run_ckpt_subprocess("gc", "--store", store).returncode == 0
    assert _objects(store) == before
    assert run_ckpt_subprocess("verify", "--store", store).returncode == 0


def test_interrupt_after_the_commit_reports_the_save_as_done(tmp_path, model_dir):
    store = tmp_path / "store"
    assert run_ckpt_subprocess("init", store).returncode == 0
    # With a policy, a save prunes after its commit (the run's tags move inside the commit): the third save of a
    # keep-last-1 run removes the first, and is stopped there, when its own checkpoint is already committed.
    assert run_ckpt_subprocess("policy", "r", "--keep-last", "1", "--store", store).returncode == 0
    assert run_ckpt_subprocess("save", model_dir, "r/step-1", "--store", store).returncode == 0
    res = interrupted_save(model_dir, store, "r/step-2", "delete.log:stop")

    assert res.returncode == 0, res.stderr
    assert "Interrupted." not in res.stderr
    assert re.search(r"Saved r/step-2 \([0-9a-f]{12}\) \(interrupted after the commit", res.stderr), res.stderr
    assert "r/step-2" in _ls(store)
    assert _tmp_files(store) == []
    assert run_ckpt_subprocess("verify", "--store", store).returncode == 0
    gc = run_ckpt_subprocess("gc", "--json", "--store", store)
    assert json.loads(gc.stdout)["blobs_removed"] == 0
