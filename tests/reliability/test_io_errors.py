"""I/O errors during a save: EIO and ENOSPC injected at the N-th I/O step for N = 1, 2, ... until the save
completes, and a real filesystem that fills up. Each failure is a clear error (the errno, never a false success),
leaves no partial checkpoint visible and no temporary file behind, and leaves every earlier checkpoint whole.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

from ckptstore import Store
from ckptstore._core import failpoints as _failpoints
from ckptstore.errors import CheckpointNotFound

from ._harness import check_store, sha256_tree
from .conftest import copy_store

BASE = {"r/step-1": 0, "r/step-2": 1, "other/step-1": 2}


@pytest.fixture(scope="session")
def io_base(fast_tmp, sources) -> Path:
    root = fast_tmp / "io-base"
    with Store.init(root, chunk_bytes=4096) as store:
        for name, i in BASE.items():
            store.save(sources[i], name, tags=["v1"] if i == 0 else ())
    return root


def _tmp_files(root: Path) -> list[str]:
    return sorted(p.name for p in (root / "tmp").iterdir())


def _steps(store_root: Path, src, long: bool) -> tuple[list[int], int]:
    """The I/O steps to break: every one in long mode, else the first and last of each failpoint's run (the
    failpoints of a save are reached in runs: blob writes, the sync, the renames, the manifest, tags, index)."""
    with Store.open(store_root) as store:
        store.list()  # the index opened
        _failpoints.configure("*:trace")
        try:
            store.save(src, "trace/step-1", tags=["v2"], metrics={"eval_loss": 0.5})
        finally:
            seen = _failpoints.seen()
            _failpoints.configure("")
    total = sum(seen.values())
    if long:
        return list(range(1, total + 1)), total
    steps, first = set(), 1
    for count in seen.values():  # in the order first reached
        steps |= {first, first + count - 1}
        first += count
    return sorted(steps), total


@pytest.mark.parametrize("action", ["eio", "enospc"])
def test_error_at_every_io_step_of_a_save(action, io_base, sources, source_digests, fast_path, figure, tiny_bert,
                                          scale):
    code = errno.EIO if action == "eio" else errno.ENOSPC
    expected = {n: source_digests[sources[i]] for n, i in BASE.items()}
    failed = 0
    model = tiny_bert(seed=7)
    for source, src in (("folder", sources[4]), ("model", model)):
        steps, total = _steps(copy_store(io_base, fast_path / f"trace-{source}"), src, scale.long)
        assert total > 10, f"the {source} save reached only {total} I/O steps"
        for n in [*steps, total + 1]:
            root = copy_store(io_base, fast_path / f"{source}-{n}")
            name = f"r/step-{100 + n}"
            with Store.open(root) as store:
                store.list()  # opened before the failpoints are armed: what fails is the save itself
                _failpoints.configure(f"*:{action}@{n}")
                try:
                    store.save(src, name, tags=["v2"], metrics={"eval_loss": 0.5})
                except OSError as exc:
                    error = exc
                else:
                    error = None
                finally:
                    reached = sum(_failpoints.seen().values()) >= n
                    _failpoints.configure("")
            if n > total:
                assert error is None and not reached, f"the {source} save failed with no error injected: {error!r}"
                break
            # Never a false success, always the errno of the failure.
            assert error is not None, f"{source} save with {action} at I/O step {n} returned success"
            assert error.errno == code and os.strerror(code) in str(error), f"unclear error at step {n}: {error!r}"
            failed += 1
            assert _tmp_files(root) == [], f"step {n}: temporary files left behind"
            with Store.open(root) as store:
                assert name not in {c.name for c in store.list()}, f"step {n}: a failed save is visible"
                with pytest.raises(CheckpointNotFound):
                    store.resolve("r:v2")
            result = check_store(root, expected, scratch=fast_path)
            assert not result.problems, (n, result.problems)
            shutil.rmtree(root)
    figure(f"I/O errors ({action})", f"{failed} saves (folder and live model) failed at I/O steps 1..N: each a clear"
           " error, none visible, no temporary file left, earlier checkpoints whole")


@pytest.fixture
def small_fs(tmp_path):
    """A real 6 MiB tmpfs, mounted for the test (root and a sandbox that allows mounts), else skipped."""
    mnt = tmp_path / "small-fs"
    mnt.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a size-limited tmpfs needs root")
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m", f"ckpt-test-{uuid.uuid4().hex[:8]}", str(mnt)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_a_real_filesystem_filling_up(small_fs, sources, tmp_path, figure):
    """Saves until the disk is full: the failing save says so, leaves nothing behind, and after rm + gc the
    store saves again. Every acknowledged checkpoint exports byte-exact throughout."""
    root = small_fs / "store"
    saved: dict[str, dict[str, str]] = {}
    error: BaseException | None = None
    with Store.init(root, chunk_bytes=1 << 20) as store:
        for i in range(40):
            src = tmp_path / f"src-{i}"
            shutil.copytree(sources[i % len(sources)], src)
            (src / "big.bin").write_bytes(os.urandom(700_000))
            try:
                store.save(src, f"fill/step-{i + 1}")
            except Exception as exc:  # noqa: BLE001 - asserted below
                error, full_src = exc, src
                break
            saved[f"fill/step-{i + 1}"] = sha256_tree(src)
        assert error is not None, "a 6 MiB filesystem never filled up"
        assert len(saved) >= 3
        full_name = f"fill/step-{len(saved) + 1}"
        assert isinstance(error, OSError) and error.errno == errno.ENOSPC, f"unclear error: {error!r}"
        assert _tmp_files(root) == []
    with Store.open(root) as store:
        assert full_name not in {c.name for c in store.list()}
    result = check_store(root, saved, scratch=tmp_path, after_gc=False)
    assert not result.problems, result.problems
    with Store.open(root) as store:
        first, second = sorted(saved)[:2]
        store.delete([first, second])
        store.gc()
        del saved[first], saved[second]
        store.save(full_src, full_name)
        saved[full_name] = sha256_tree(full_src)
    result = check_store(root, saved, scratch=tmp_path)
    assert not result.problems, result.problems
    figure("full filesystem", f"a 6 MiB tmpfs took {len(saved)} saves, the next failed with ENOSPC cleanly; after"
           " rm + gc it saved again")
