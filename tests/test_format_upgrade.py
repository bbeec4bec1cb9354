"""The upgrade of a format-1 store (tests/fixtures/format1-store, written by the code of the first release) to format 2.

Each test works on a copy of the fixture and compares what today's code finds with tests/fixtures/format1-expected.json,
written by the same old code: names, ids, tags, metrics, and the sha256 of every exported file. Opened writable, the
store is upgraded in place; read-only, it is read as it is; killed at any step, the upgrade completes on the next open;
and the old code refuses the upgraded store.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

import ckptstore
from ckptstore import Store
from ckptstore._core import failpoints
from ckptstore.policies import RetentionPolicy
from mounts import mount_tmpfs, remount_read_only, unmount

HERE = Path(__file__).resolve().parent
FIXTURE = HERE / "fixtures" / "format1-store"
EXPECTED = json.loads((HERE / "fixtures" / "format1-expected.json").read_text())
SRC = Path(ckptstore.__file__).resolve().parents[1]
REPO = HERE.parent
FORMAT1_COMMIT = "7e4c910"  # the last commit of format 1, whose code wrote the fixture

OPEN = "import sys; from ckptstore import Store; Store.open(sys.argv[1]).close()"


@pytest.fixture
def f1(tmp_path) -> Path:
    """A copy of the format-1 fixture store."""
    root = tmp_path / "store"
    shutil.copytree(FIXTURE, root)
    return root


@pytest.fixture(scope="session")
def old_src(tmp_path_factory) -> Path:
    """The source of the first release (format 1), from this repository's history."""
    dest = tmp_path_factory.mktemp("ckptstore-format1")
    archive = subprocess.run(["git", "-C", str(REPO), "archive", FORMAT1_COMMIT, "src"], capture_output=True)
    if archive.returncode != 0:
        pytest.skip(f"commit {FORMAT1_COMMIT} is not in this checkout: {archive.stderr.decode().strip()}")
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True)
    return dest / "src"


def run_python(code: str, *args: object, env: dict[str, str] | None = None, src: Path = SRC):
    full_env = {**os.environ, "PYTHONPATH": str(src), **(env or {})}
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], env=full_env, capture_output=True,
                          text=True, timeout=120)


def snapshot(root: Path) -> dict[str, tuple[int, bytes]]:
    """Every file of the store but the caches and scratch (index, locks, tmp): mtime and bytes."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if p.is_file() and not rel.startswith(("index.sqlite", "locks/", "tmp/")):
            out[rel] = (p.stat().st_mtime_ns, p.read_bytes())
    return out


def expected_tags() -> dict[str, str]:
    return {f"{c['run']}:{t}": c["id"] for c in EXPECTED["checkpoints"] for t in c["tags"]}


def check_holds_what_format1_held(store: Store, tmp_path: Path, tree_sha256) -> None:
    """list, show, tags and metrics as the old code listed them, and every checkpoint exports byte-exact."""
    assert sorted(store.runs()) == EXPECTED["runs"]
    assert sorted(c.name for c in store.list()) == [c["name"] for c in EXPECTED["checkpoints"]]
    for want in EXPECTED["checkpoints"]:
        got = store.show(want["name"])
        assert (got.id, got.run, got.step, sorted(got.tags), got.metrics, got.metadata, got.message, got.parent) == (
            want["id"], want["run"], want["step"], want["tags"], want["metrics"], want["metadata"], want["message"],
            want["parent"]), want["name"]
        dest = tmp_path / f"export-{uuid.uuid4().hex[:8]}"
        store.export(want["name"], dest)
        assert tree_sha256(dest) == want["files"], want["name"]
        shutil.rmtree(dest)
    assert store.tags() == expected_tags()
    for run, policy in EXPECTED["policies"].items():
        assert store.get_policy(run).keep_last == policy["keep_last"]
    for deleted in EXPECTED["deleted"]:
        assert not store.has(deleted["name"])


def check_is_format2(root: Path) -> None:
    assert json.loads((root / "store.json").read_text())["format"] == 2
    claims = {p.relative_to(root / "names").as_posix(): p.read_text().strip() for p in (root / "names").rglob("*")
              if p.is_file()}
    assert claims == {f"{c['run']}/{c['name'].replace('/', '~')}": c["id"] for c in EXPECTED["checkpoints"]}
    records = {p.name: p.read_text().strip() for p in (root / "deleted").iterdir()}
    assert records == {d["id"]: d["name"] for d in EXPECTED["deleted"]}
    assert not (root / "checkpoints" / "deleted.log").exists()


@pytest.mark.parametrize("index", ["none", "format1"])
def test_opening_writable_upgrades_in_place_and_everything_works_after(f1, tmp_path, tree_sha256, tiny_bert, index,
                                                                        request):
    if index == "format1":  # the index a format-1 user has, written by the old code, is read as it is
        r = run_python("import sys; from ckptstore import Store; print(len(Store.open(sys.argv[1]).list()))", f1,
                       src=request.getfixturevalue("old_src"))
        assert r.returncode == 0 and r.stdout.strip() == str(len(EXPECTED["checkpoints"])), r.stderr
        assert (f1 / "index.sqlite").is_file()
    with Store.open(f1) as store:
        assert store.upgraded_from == 1 and store.config.format == 2
        check_is_format2(f1)
        check_holds_what_format1_held(store, tmp_path, tree_sha256)
        assert store.verify(deep=True).ok
    upgraded = snapshot(f1)
    with Store.open(f1) as store:  # a second open is a no-op
        assert store.upgraded_from is None
        assert not store.fsck(upgrade_format=True).problems and store.upgraded_from is None
        assert snapshot(f1) == upgraded

        # gc frees the blobs of the checkpoints format 1 deleted, and nothing a checkpoint needs.
        plan = store.gc()
        assert plan.blobs and not plan.manifests
        check_holds_what_format1_held(store, tmp_path, tree_sha256)
        assert store.verify(deep=True).ok

        # Saving, deleting, pruning and tagging work on the upgraded store, names format 1 deleted included.
        report = store.save(tiny_bert(seed=5), "tiny/step-5", step=5, metrics={"eval_loss": 0.2})
        assert report.pruned == ("tiny/step-3",)  # the run's format-1 policy, keep_last=2
        store.save(tiny_bert(seed=6), "bert/scratch/copy-of-10")
        sweep = store.resolve("bert/sweep/lr-1e-4")
        store.delete("bert/sweep/lr-1e-4")
        step10 = store.resolve("bert/step-10")
        pruned = store.prune("bert", RetentionPolicy(keep_last=2))
        assert [d.checkpoint.name for d in pruned.plan.remove] == ["bert/step-10"]
        store.tag("bert/step-30", "keep")
        assert store.gc().blobs
    with Store.open(f1) as store:
        assert [c.name for c in store.list("tiny")] == ["tiny/step-5", "tiny/step-4"]
        assert sorted(c.name for c in store.list("bert")) == ["bert/scratch/copy-of-10", "bert/step-20", "bert/step-30"]
        assert store.tags()["bert:keep"] == store.resolve("bert/step-30")
        assert store.tags()["bert:prod"] == store.resolve("bert/step-20")
        assert (f1 / "deleted" / sweep).is_file() and (f1 / "deleted" / step10).is_file()
        assert not (f1 / "names" / "bert" / "bert~step-10").exists()
        assert store.verify(deep=True).ok


@pytest.fixture
def ro_f1(tmp_path, monkeypatch):
    """The format-1 fixture on a tmpfs remounted read-only (tests run as root: permissions alone stop nothing)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache-home"))
    mnt = tmp_path / "ro-mount"
    mount_tmpfs(mnt)
    try:
        root = mnt / "store"
        shutil.copytree(FIXTURE, root)
        remount_read_only(mnt)
        with pytest.raises(OSError):
            (root / "probe").write_bytes(b"x")
        yield root
    finally:
        unmount(mnt)


def test_a_read_only_format1_store_is_read_as_it_is(ro_f1, tmp_path, tree_sha256, ckpt):
    before = snapshot(ro_f1)
    with Store.open(ro_f1) as store:
        assert store.read_only and store.config.format == 1 and store.upgraded_from is None
        check_holds_what_format1_held(store, tmp_path, tree_sha256)
        assert store.verify(deep=True).ok
    r = ckpt("ls", "--store", ro_f1)
    assert r.code == 0 and "bert/step-20" in r.out, r.err
    r = ckpt("fsck", "--upgrade", "--store", ro_f1)  # cannot upgrade what it cannot write: says so, in one line
    assert r.code == 1 and "is read-only for this process" in r.err and "Traceback" not in r.err, r.err
    assert snapshot(ro_f1) == before
    assert (ro_f1 / "store.json").read_text() == (FIXTURE / "store.json").read_text()


def test_the_upgrade_reaches_only_failpoints_the_kill_test_kills(f1):
    """Every failpoint the upgrade passes is killed at least once below; a new step of the upgrade fails this."""
    failpoints.configure("*:trace")
    try:
        Store.open(f1).close()
        reached = failpoints.seen()
    finally:
        failpoints.configure(None)
    assert reached["upgrade.claim"] == len(EXPECTED["checkpoints"])
    assert set(reached) == {spec.split(":")[0] for spec, _ in KILLS}


# (CKPT_FAILPOINT, whether store.json says format 2 after the kill). The claims are written in name order, one
# create each (name.claim, then name.write/fsync/rename of the file); then one deletion record per line of
# deleted.log (delete.*); then store.json (write.*); then the log is removed (manifest.remove: checkpoints/).
KILLS = [
    ("index.update:kill@1", False),  # the format-1 index, synced before anything is written
    ("index.tags:kill@1", False),
    ("upgrade.claim:kill@1", False),
    ("upgrade.claim:kill@2", False),
    ("upgrade.claim:kill@7", False),
    ("name.claim:kill@4", False),
    ("name.write:kill@1", False),
    ("name.fsync:kill@3", False),
    ("name.rename:kill@1", False),
    ("name.rename:kill@7", False),
    ("delete.log:kill@1", False),
    ("delete.write:kill@2", False),
    ("delete.fsync:kill@1", False),
    ("delete.rename:kill@3", False),
    ("upgrade.config:kill@1", False),
    ("write.write:kill@1", False),
    ("write.fsync:kill@1", False),
    ("write.rename:kill@1", False),
    ("manifest.remove:kill@1", True),  # format 2 already, the log left behind
]


@pytest.mark.crash
@pytest.mark.parametrize("spec,format2", KILLS, ids=[k for k, _ in KILLS])
def test_a_kill_during_the_upgrade_is_completed_by_the_next_open(f1, tmp_path, tree_sha256, ckpt, spec, format2):
    r = run_python(OPEN, f1, env={"CKPT_FAILPOINT": spec})
    assert r.returncode == -signal.SIGKILL, (r.returncode, r.stderr)
    assert json.loads((f1 / "store.json").read_text())["format"] == (2 if format2 else 1)
    with Store.open(f1) as store:
        assert store.config.format == 2
        assert store.upgraded_from == (None if format2 else 1)
        check_holds_what_format1_held(store, tmp_path, tree_sha256)
        assert store.verify(deep=True).ok
    if format2:  # inert (format 2 never reads it); fsck --upgrade finishes the job
        assert (f1 / "checkpoints" / "deleted.log").exists()
        r = ckpt("fsck", "--upgrade", "--store", f1)
        assert r.code == 0 and "Upgraded the store to format 2" in r.err, r.err
    check_is_format2(f1)


def test_fsck_upgrade_says_what_it_did(f1, ckpt):
    r = ckpt("fsck", "--upgrade", "--store", f1)
    assert r.code == 0, r.err
    assert "Upgraded the store to format 2 (from format 1)." in r.err and "OK" in r.err
    check_is_format2(f1)
    r = ckpt("fsck", "--upgrade", "--store", f1)
    assert r.code == 0 and "already format 2" in r.err and "Upgraded" not in r.err, r.err
    r = ckpt("fsck", "--upgrade", "--json", "--store", f1)
    assert r.code == 0 and json.loads(r.out)["upgraded_from"] is None and json.loads(r.out)["format"] == 2


def test_an_upgrade_waited_for_leaves_the_waiter_reading_format2(f1, tiny_bert):
    """Two processes open a format-1 store for writing at once: the second waits for the first's upgrade, then
    must read the store as format 2 (claims commit), not as the format 1 it read before it waited."""
    first = subprocess.Popen([sys.executable, "-c", OPEN, str(f1)], env={
        **os.environ, "PYTHONPATH": str(SRC), "CKPT_FAILPOINT": "upgrade.config:stop"})
    try:
        deadline = time.monotonic() + 60
        while Path(f"/proc/{first.pid}/stat").read_text().split(") ")[1][0] != "T":  # stopped, holding the lock
            assert first.poll() is None and time.monotonic() < deadline
            time.sleep(0.01)
        threading.Timer(1.0, os.kill, (first.pid, signal.SIGCONT)).start()
        with Store.open(f1) as store:  # reads format 1, waits for the commit lock, finds format 2
            assert first.wait(timeout=60) == 0
            assert store.config.format == 2 and store.upgraded_from is None
            store.list()
            # A save that died before its commit: a manifest nobody claims. Format 2 does not list it.
            import dataclasses

            manifest = dataclasses.replace(store.manifest("bert/step-10"), name="bert/uncommitted",
                                           created_at=time.time())
            cid = store._repo.write_manifest(manifest)
            store.refresh()
            assert not store.has("bert/uncommitted")
            assert cid in store.gc().manifests
    finally:
        if first.poll() is None:
            os.kill(first.pid, signal.SIGCONT)
            first.kill()
            first.wait()


def test_an_interrupted_upgrade_then_a_format1_writer(f1, tmp_path, old_src, tree_sha256):
    """Killed half way, the store is still format 1, so the first release may write to it before today's code
    opens it again: the claims the first attempt wrote must follow what that writer did."""
    r = run_python(OPEN, f1, env={"CKPT_FAILPOINT": "upgrade.claim:kill@5"})  # bert/* claimed, the rest not
    assert r.returncode == -signal.SIGKILL, r.stderr
    assert (f1 / "names" / "bert" / "bert~sweep~lr-1e-4").is_file()
    old_step10 = next(c["id"] for c in EXPECTED["checkpoints"] if c["name"] == "bert/step-10")
    sweep = next(c["id"] for c in EXPECTED["checkpoints"] if c["name"] == "bert/sweep/lr-1e-4")
    writer = """if True:
        import hashlib, json, sys, torch, transformers
        from pathlib import Path
        from ckptstore import Store
        store = Store.open(sys.argv[1])
        store.delete(["bert/step-10", "bert/sweep/lr-1e-4"])
        torch.manual_seed(99)
        config = transformers.BertConfig(vocab_size=99, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                         intermediate_size=20, max_position_embeddings=32)
        info = store.save(transformers.BertModel(config).eval(), "bert/step-10", step=10)
        dest = store.export("bert/step-10", sys.argv[2])
        files = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in Path(dest).iterdir()}
        print(json.dumps({"id": info.id, "files": files}))
    """
    r = run_python(writer, f1, tmp_path / "old-export", src=old_src)
    assert r.returncode == 0, r.stderr
    new_step10 = json.loads(r.stdout)
    with Store.open(f1) as store:
        assert store.upgraded_from == 1
        assert store.resolve("bert/step-10") == new_step10["id"] != old_step10
        # The claim itself, not only this process's index: a rebuilt index reads the claims alone.
        assert (f1 / "names" / "bert" / "bert~step-10").read_text().strip() == new_step10["id"]
        store.reindex()
        assert store.resolve("bert/step-10") == new_step10["id"]
        assert not store.has("bert/sweep/lr-1e-4")
        assert not (f1 / "names" / "bert" / "bert~sweep~lr-1e-4").exists()
        assert (f1 / "deleted" / old_step10).is_file() and (f1 / "deleted" / sweep).is_file()
        assert store.verify(deep=True).ok
        store.gc()
        store.export("bert/step-10", tmp_path / "new-export")
        assert tree_sha256(tmp_path / "new-export") == new_step10["files"]
        assert store.verify(deep=True).ok


def test_the_first_release_refuses_an_upgraded_store(f1, old_src):
    Store.open(f1).close()
    r = run_python("from ckptstore.cli import main; main()", "ls", "--store", f1, src=old_src)
    assert r.returncode == 1, (r.returncode, r.stderr)
    assert "format 2" in r.stderr and "Traceback" not in r.stderr, r.stderr
