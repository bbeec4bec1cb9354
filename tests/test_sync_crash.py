"""Crash safety of `ckpt sync`: the real command, in a real process, killed with SIGKILL at each step of the copy
(CKPT_FAILPOINT, src/ckptstore/_core/failpoints.py): while blobs are read and sent, while the destination makes them
durable and visible, and around the manifest, the name claim (the commit point) and the tags.

After every kill the destination shows only whole checkpoints (each exports byte-exact and verifies), never one with
a missing blob; the same command run again completes (exit 0), the destination then holds every checkpoint of the
source with the same ids and tags, sends only what had not arrived, and after gc keeps no blob nothing references.
"""

from __future__ import annotations

import hashlib
import signal
from pathlib import Path

import pytest
import torch
from conftest import make_tiny_bert, run_ckpt_subprocess

from ckptstore import Store

pytestmark = pytest.mark.crash

# Three checkpoints of ~20 blobs each, all new (different seeds): the @N below land in the first, the middle of the
# transfer, and the second or third checkpoint.
KILLS = (
    "sync.blob:kill@1",
    "sync.blob:kill@12",
    "sync.blob:kill@30",
    "blob.write:kill@5",
    "blob.sync:kill@1",
    "blob.rename:kill@3",
    "sync.commit:kill@1",
    "manifest.write:kill@1",
    "manifest.rename:kill@2",
    "name.claim:kill@1",
    "name.claim:kill@2",
    "name.rename:kill@1",
    "ref.write:kill@1",
    "index.update:kill@2",
)


def _tree(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A local store with three checkpoints of one run (tags, metrics, lineage), and each one's exported files."""
    root = tmp_path_factory.mktemp("sync-crash")
    store = Store.init(root / "src")
    parent = None
    for i, seed in enumerate((0, 1, 2)):
        model = make_tiny_bert(seed)
        with torch.no_grad():
            model.pooler.dense.weight.add_(i)
        parent = store.save(model, f"r/step-{i + 1}", metrics={"eval_loss": 1.0 - i / 10}, parent=parent,
                            tags=["first"] if i == 0 else ()).id
    trees = {}
    for info in store.list():
        store.export(info.id, root / "exports" / info.id)
        trees[info.id] = _tree(root / "exports" / info.id)
    store.close()
    return root / "src", trees


def _check_whole(dst: Path, trees: dict[str, dict[str, str]], scratch: Path) -> set[str]:
    """Every checkpoint visible at `dst` is one of the source's, whole and byte-exact; returns their ids."""
    store = Store.open(dst)
    try:
        seen = set()
        for info in store.list():
            assert info.id in trees, info
            out = scratch / info.id
            store.export(info.id, out)
            assert _tree(out) == trees[info.id]
            seen.add(info.id)
        assert store.verify().ok
        return seen
    finally:
        store.close()


@pytest.mark.parametrize("kill", KILLS)
def test_sync_killed_at_each_step_leaves_only_whole_checkpoints_and_a_rerun_completes(source, tmp_path, kill):
    src, trees = source
    dst = tmp_path / "dst"

    killed = run_ckpt_subprocess("sync", src, dst, env={"CKPT_FAILPOINT": kill})
    assert killed.returncode == -signal.SIGKILL, (kill, killed.returncode, killed.stderr[-2000:])

    if (dst / "store.json").exists():
        visible = _check_whole(dst, trees, tmp_path / "after-kill")
        assert visible < set(trees)  # killed part way: not everything arrived

    again = run_ckpt_subprocess("sync", src, dst)
    assert again.returncode == 0, again.stderr

    store = Store.open(dst)
    try:
        assert {c.id for c in store.list()} == set(trees)
        assert store.tags("r")["r:first"] == store.info("r/step-1").id
        assert store.tags("r")["r:latest"] == store.info("r/step-3").id
        store.gc()
        referenced = set().union(*(store.manifest(i).blob_refs() for i in trees))
        assert {d for d, _, _ in store._repo.blobs.iter()} == referenced  # gc took the killed run's leftovers
        assert not any((dst / "tmp").iterdir())
    finally:
        store.close()
    assert _check_whole(dst, trees, tmp_path / "final") == set(trees)


def test_a_rerun_after_a_kill_sends_only_what_had_not_arrived(source, tmp_path):
    src, trees = source
    dst = tmp_path / "dst"
    killed = run_ckpt_subprocess("sync", src, dst, env={"CKPT_FAILPOINT": "name.claim:kill@3"})
    assert killed.returncode == -signal.SIGKILL

    again = run_ckpt_subprocess("sync", src, dst, "--json")
    assert again.returncode == 0, again.stderr
    import json

    report = json.loads(again.stdout)
    # The first two checkpoints were committed before the kill; the third's blobs were durable before its claim.
    assert sorted(report["present"]) == ["r/step-1", "r/step-2"]
    assert [c["name"] for c in report["copied"]] == ["r/step-3"]
    assert report["bytes_transferred"] == 0 and report["blobs_transferred"] == 0
