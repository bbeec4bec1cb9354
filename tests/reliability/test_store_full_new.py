"""A store on a real small filesystem that fills up (a tmpfs mounted for the test): a save that cannot fit is
refused with StoreFull before it writes anything, a save that deduplicates is not refused, a disk that fills
during a save or an index update is StoreFull too (errno ENOSPC kept), and the gc a training save runs
afterwards only warns."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

from ckptstore import Store
from ckptstore._training.manager import housekeeping_gc
from ckptstore.errors import RetentionWarning, StoreFull


@pytest.fixture
def tiny_fs(tmp_path):
    """A function: size -> the mount point of a fresh tmpfs of that size (unmounted after the test)."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a size-limited tmpfs needs root")
    mounted: list[Path] = []

    def mount(size: str) -> Path:
        mnt = tmp_path / f"fs-{len(mounted)}"
        mnt.mkdir()
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", f"ckpt-full-{uuid.uuid4().hex[:8]}",
                               str(mnt)], capture_output=True, text=True)
        if proc.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
        mounted.append(mnt)
        return mnt

    yield mount
    for mnt in mounted:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def fill(mnt: Path, leave: int = 0) -> Path:
    """Fill the filesystem with a ballast file, then give back `leave` bytes (whole pages on tmpfs)."""
    ballast = mnt / f"ballast-{uuid.uuid4().hex[:6]}"
    with open(ballast, "wb", buffering=0) as f:
        for block in (1 << 20, 4096):
            try:
                while True:
                    f.write(b"\0" * block)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
        f.truncate(max(0, f.tell() - leave))
    return ballast


def folder(path: Path, size: int) -> Path:
    path.mkdir(parents=True)
    (path / "config.json").write_text('{"model_type": "bert"}')
    (path / "big.bin").write_bytes(os.urandom(size))
    return path


def _blobs(root: Path) -> int:
    return sum(1 for p in (root / "objects").rglob("*") if p.is_file())


def _assert_store_full(exc: BaseException) -> None:
    assert isinstance(exc, StoreFull) and isinstance(exc, OSError)
    assert exc.errno == errno.ENOSPC and os.strerror(errno.ENOSPC) in str(exc)
    assert "ckpt prune" in exc.hint and "max_bytes" in exc.hint


def test_a_save_that_cannot_fit_is_refused_before_it_writes(tiny_fs, tmp_path, ckpt):
    root = tiny_fs("2m") / "store"
    src = folder(tmp_path / "big", 3_000_000)
    with Store.init(root) as store:
        with pytest.raises(StoreFull) as info:
            store.save(src, "r/step-1")
        _assert_store_full(info.value)
        assert "r/step-1" not in {c.name for c in store.list()}
    assert _blobs(root) == 0 and list((root / "tmp").iterdir()) == []  # refused up front: not a byte written
    r = ckpt("save", src, "r/step-1", "--store", root)
    assert r.code == 1
    assert "error: No space left on device" in r.err and "hint:" in r.err and "ckpt prune" in r.err
    assert "report it" not in r.err and "Traceback" not in r.err


def test_a_save_that_deduplicates_is_not_refused(tiny_fs, tmp_path):
    mnt = tiny_fs("4m")
    src = folder(tmp_path / "a", 1_500_000)
    with Store.init(mnt / "store") as store:
        store.save(src, "r/step-1")
        fill(mnt, leave=300_000)  # less than the folder, more than what is not stored yet
        info = store.save(src, "r/step-2")
        assert store.last_save.new_bytes < 10_000
        assert info.name == "r/step-2" and not store.verify().problems


def test_a_disk_that_fills_during_a_save_gives_store_full(tiny_fs, tmp_path):
    mnt = tiny_fs("4m")
    with Store.init(mnt / "store") as store:
        store.save(folder(tmp_path / "b", 1_500_000), "r/step-1")
        fill(mnt, leave=1_000_000)
        # 2 MB of new bytes: the up-front rule lets it try (1.5 MB stored might have been reused), the disk fills.
        with pytest.raises(StoreFull) as info:
            store.save(folder(tmp_path / "c", 2_000_000), "r/step-2")
        _assert_store_full(info.value)
        assert isinstance(info.value.__cause__, OSError)  # the real ENOSPC, kept as the cause
        assert [c.name for c in store.list()] == ["r/step-1"]
        assert list((store.root / "tmp").iterdir()) == []
        assert not store.verify().problems


def test_a_full_index_is_store_full_and_a_training_gc_only_warns(tiny_fs, tmp_path):
    mnt = tiny_fs("4m")
    root = mnt / "store"
    with Store.init(root) as store:
        info = store.save(folder(tmp_path / "d", 300_000), "r/step-1")
    for suffix in ("", "-wal", "-shm"):  # the index is a cache: it may be gone, and must then be rebuilt
        Path(f"{root}/index.sqlite{suffix}").unlink(missing_ok=True)
    fill(mnt)
    with Store.open(root) as store:
        with pytest.raises(StoreFull) as exc:  # SQLite's "database or disk is full", as StoreFull
            store.list()
        assert exc.value.errno == errno.ENOSPC
    with Store.open(root) as store, pytest.warns(RetentionWarning, match="gc after it failed"):
        housekeeping_gc(store, info)  # what CheckpointManager and CheckpointCallback run after a save
