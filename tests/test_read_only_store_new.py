"""A store this process cannot write: a real read-only mount (tmpfs remounted ro) and a store owned by another user.
Every reading command works, with a note on stderr and an index kept in the user's cache folder (or in memory);
every writing command fails with StoreReadOnly in one line and a hint, never a traceback, and writes nothing."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import torch

import ckptstore
from ckptstore import CheckpointManager, Store
from ckptstore.errors import StoreReadOnly

SRC = Path(ckptstore.__file__).resolve().parents[1]  # the code under test, for the other user's process


def _mount(cmd: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True)


@pytest.fixture
def ro_store(tmp_path, tiny_bert):
    """A store with two checkpoints of a tiny BERT (and a tag) on a tmpfs, then remounted read-only."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a filesystem needs root")
    mnt = tmp_path / "ro-mount"
    mnt.mkdir()
    proc = _mount(["mount", "-t", "tmpfs", "-o", "size=64m", f"ckpt-ro-{uuid.uuid4().hex[:8]}", str(mnt)])
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
    try:
        root = mnt / "store"
        with Store.init(root) as store:
            store.save(tiny_bert(seed=0), "bert/step-1", tags=["v1"])
            store.save(tiny_bert(seed=1), "bert/step-2")
            model = tiny_bert(seed=2)
            CheckpointManager(store, "loop").save(1, model, torch.optim.SGD(model.parameters(), lr=0.1))
        proc = _mount(["mount", "-o", "remount,ro", str(mnt)])
        assert proc.returncode == 0, proc.stderr
        with pytest.raises(OSError):
            (root / "probe").write_bytes(b"x")  # really read-only, even for root
        yield root
    finally:
        _mount(["umount", "-l", str(mnt)])


@pytest.fixture
def cache_home(tmp_path, monkeypatch):
    home = tmp_path / "cache-home"
    monkeypatch.setenv("XDG_CACHE_HOME", str(home))
    return home


def _files(root: Path) -> dict[str, int]:
    return {p.relative_to(root).as_posix(): p.stat().st_mtime_ns for p in root.rglob("*")}


def test_every_reading_command_works_on_a_read_only_mount(ro_store, ckpt, cache_home, tmp_path):
    before = _files(ro_store)
    r = ckpt("ls", "--store", ro_store)
    assert r.code == 0, r.err
    assert "bert/step-1" in r.out and "bert/step-2" in r.out
    assert "read-only" in r.err and r.err.count("\n") == 1  # one line of note, nothing else
    for args in (
        ("show", "bert:v1"),
        ("export", "bert/step-1", tmp_path / "exported"),
        ("checkout", "loop/step-1", tmp_path / "checked-out"),
        ("verify",),
        ("fsck",),
        ("du",),
        ("log", "bert"),
        ("diff", "bert/step-1", "bert/step-2"),
        ("validate", "bert/step-1"),
    ):
        r = ckpt(*args, "--store", ro_store)
        assert r.code == 0, (args, r.err)
        assert "Traceback" not in r.err and "read-only" in r.err, (args, r.err)
    assert (tmp_path / "exported" / "model.safetensors").is_file()
    # The reader's index lives in its cache folder (kept for the next command), and the store was not touched.
    assert list(cache_home.glob("ckptstore/*/index.sqlite"))
    assert _files(ro_store) == before


def test_every_writing_command_fails_clearly_on_a_read_only_mount(ro_store, ckpt, cache_home, tiny_bert_dir):
    before = _files(ro_store)
    for args in (
        ("save", tiny_bert_dir, "bert/step-3"),
        ("tag", "bert/step-2", "prod"),
        ("untag", "bert:v1"),
        ("rm", "bert/step-2"),
        ("gc",),
        ("prune", "bert", "--keep-last", "1"),
        ("policy", "bert", "--keep-last", "1"),
        ("fsck", "--reindex"),
    ):
        r = ckpt(*args, "--store", ro_store)
        assert r.code == 1, (args, r.code, r.err)
        assert "Traceback" not in r.err and "report it" not in r.err, (args, r.err)
        assert "is read-only for this process" in r.err and "hint:" in r.err, (args, r.err)
    assert _files(ro_store) == before


def test_the_library_reads_and_refuses_writes_with_store_read_only(ro_store, cache_home, tiny_bert):
    with Store.open(ro_store) as store:
        assert store.read_only
        assert [c.name for c in store.list("bert")] == ["bert/step-2", "bert/step-1"]
        assert store.load_state_dict("bert:v1")
        assert not store.verify().problems
        with pytest.raises(StoreReadOnly) as info:
            store.save(tiny_bert(seed=3), "bert/step-3")
        assert isinstance(info.value, OSError) and info.value.hint
        with pytest.raises(StoreReadOnly):
            store.tag("bert/step-2", "prod")


def test_an_unwritable_cache_folder_falls_back_to_an_index_in_memory(ro_store, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(ro_store / "cache"))  # on the read-only mount: cannot be created
    with Store.open(ro_store) as store:
        assert store.resolve("bert:v1") == store.resolve("bert/step-1")
        assert str(store._repo.catalog.path) == ":memory:"


@pytest.fixture
def other_users_store(tiny_bert):
    """A store owned by root with ordinary permissions (dirs 755, files 644), in a folder other users can reach."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("running as another user needs root and setpriv")
    base = Path(os.environ.get("TMPDIR", "/tmp")) / f"ckpt-other-{uuid.uuid4().hex[:8]}"
    base.mkdir(mode=0o755)
    try:
        root = base / "store"
        with Store.init(root) as store:
            store.save(tiny_bert(seed=0), "bert/step-1", tags=["v1"])
        for p in [root, *root.rglob("*")]:
            p.chmod(0o755 if p.is_dir() else 0o644)
        os.chmod(base, 0o755)
        yield root
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _as_nobody(*args: str, code: str | None = None) -> subprocess.CompletedProcess:
    env = {"PATH": os.environ["PATH"], "HOME": "/nonexistent", "PYTHONPATH": str(SRC),
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    return subprocess.run(
        ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", sys.executable,
         *(["-c", code] if code is not None else ["-m", "ckptstore", *map(str, args)])], env=env, capture_output=True, text=True, timeout=120, cwd="/",
    )


def test_another_users_store_can_be_read_but_not_written(other_users_store):
    probe = _as_nobody(code="import ckptstore")
    if probe.returncode != 0:
        pytest.skip(f"user nobody cannot run this Python: {probe.stderr.strip()[-200:]}")
    before = _files(other_users_store)
    r = _as_nobody("--store", other_users_store, "ls")
    assert r.returncode == 0, r.stderr
    assert "bert/step-1" in r.stdout and "read-only" in r.stderr and "Traceback" not in r.stderr
    r = _as_nobody("--store", other_users_store, "tag", "bert/step-1", "prod")
    assert r.returncode == 1 and "is read-only for this process" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert _files(other_users_store) == before
