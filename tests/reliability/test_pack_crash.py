"""SIGKILL inside `ckpt pack` (a real process): at every pack failpoint (first, middle and last hit), and at random
moments. After each kill every checkpoint must export byte-exact, verify must pass (decoding every packed blob),
gc must keep what the packed blobs need, and packing again must finish the job."""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from ckptstore import Store

from .conftest import copy_store

pytestmark = pytest.mark.crash

PACK_FAILPOINTS = ("pack.write", "pack.fsync", "pack.rename")


def _tree(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="session")
def packable(fast_tmp, tmp_path_factory) -> tuple[Path, dict[str, dict[str, str]]]:
    """A store holding 4 checkpoints of a tiny BERT trained with AdamW (weights + optimizer.pt), none packed,
    and the sha256 of every file of each."""
    from conftest import make_tiny_bert

    torch.manual_seed(0)
    model = make_tiny_bert(hidden_size=64, intermediate_size=128)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    folders = tmp_path_factory.mktemp("pack-src")
    root = fast_tmp / "pack-base"
    digests = {}
    with Store.init(root) as store:
        for k in range(1, 5):
            for _ in range(2):
                model(input_ids=torch.randint(0, 99, (4, 8))).last_hidden_state.pow(2).mean().backward()
                optimizer.step()
                optimizer.zero_grad()
            folder = folders / f"checkpoint-{k}"
            model.save_pretrained(folder)
            torch.save(optimizer.state_dict(), folder / "optimizer.pt")
            store.save(folder, f"r/step-{k}")
            digests[f"r/step-{k}"] = _tree(folder)
    return root, digests


def _pack(store: Path, *, failpoint: str | None = None, wait=True):
    env = {**os.environ, "CKPT_FAILPOINT": failpoint or ""}
    args = [sys.executable, "-m", "ckptstore", "pack", "r", "--include-tagged", "--store", str(store)]
    if not wait:
        return subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)


def _check(store_path: Path, digests: dict[str, dict[str, str]], work: Path) -> None:
    with Store.open(store_path) as store:
        report = store.verify()
        assert report.ok, report.problems
        for name, files in digests.items():
            out = work / f"export-{name.replace('/', '-')}-{time.monotonic_ns()}"
            store.export(name, out)
            assert _tree(out) == files, name
            shutil.rmtree(out)
        store.gc()
        assert store.verify().ok
    # the next pack finishes the job and leaves everything whole
    proc = _pack(store_path)
    assert proc.returncode == 0, proc.stderr
    with Store.open(store_path) as store:
        assert store.verify().ok
        for name, files in digests.items():
            out = work / f"after-{name.replace('/', '-')}-{time.monotonic_ns()}"
            store.export(name, out)
            assert _tree(out) == files, name
            shutil.rmtree(out)


def test_sigkill_at_every_pack_failpoint_and_random_moments(packable, tmp_path, figure):
    base, digests = packable
    # How many times each failpoint is hit by a full pack: one per blob encoded.
    probe = copy_store(base, tmp_path / "probe")
    done = _pack(probe)
    assert done.returncode == 0, done.stderr
    with Store.open(probe) as store:
        encoded = sum(1 for d, _, _ in store._repo.blobs.iter() if store._repo.blobs.header(d) is not None)
    assert encoded > 10
    kills = finished = 0
    phases: dict[str, int] = {}
    for name in PACK_FAILPOINTS:
        for hit in sorted({1, encoded // 2, encoded}):
            store = copy_store(base, tmp_path / f"{name}-{hit}")
            proc = _pack(store, failpoint=f"{name}:kill@{hit}")
            if proc.returncode == -signal.SIGKILL:
                kills += 1
                phases[name] = phases.get(name, 0) + 1
            else:
                assert proc.returncode == 0, proc.stderr
                finished += 1
            _check(store, digests, tmp_path)
            shutil.rmtree(store)
    rng = random.Random(13)
    random_kills = random_finished = 0
    for trial in range(6):
        store = copy_store(base, tmp_path / f"random-{trial}")
        proc = _pack(store, wait=False)
        time.sleep(rng.uniform(0.3, 3.0))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            random_kills += 1
        else:
            random_finished += 1
        proc.wait(timeout=60)
        _check(store, digests, tmp_path)
        shutil.rmtree(store)
    assert kills >= 6
    figure(
        "Crash (SIGKILL) in ckpt pack",
        f"{kills} kills at pack failpoints ({', '.join(f'{k} {v}' for k, v in sorted(phases.items()))}; first, middle"
        f" and last of {encoded} blobs encoded), {random_kills} at random moments ({random_finished} finished"
        f" first): every checkpoint byte-exact, verify clean, gc kept every delta base, the next pack completed.",
        {"failpoint_kills": kills, "random_kills": random_kills, "blobs_encoded": encoded, "phases": phases},
    )
