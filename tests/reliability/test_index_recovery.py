"""The index deleted, truncated, bit-flipped, or left with a stale WAL (an older copy of the index or of its
write-ahead log): the next command rebuilds what it needs from the manifests, and `ckpt ls` shows exactly what it
showed before; `verify` passes (no checkpoint deleted since is mistaken for a lost one)."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest

from ckptstore import Store

INDEX_FILES = ("index.sqlite", "index.sqlite-wal", "index.sqlite-shm")


def _snapshot(root: Path, dest: Path) -> Path:
    """Copy the index files as they are now (a connection may be open: the WAL then holds the newest pages)."""
    dest.mkdir(parents=True)
    for name in INDEX_FILES:
        if (root / name).exists():
            shutil.copy2(root / name, dest / name)
    return dest


def _restore(snapshot: Path, root: Path, only: tuple[str, ...] = INDEX_FILES) -> None:
    for name in only:
        (root / name).unlink(missing_ok=True)
        if (snapshot / name).exists():
            shutil.copy2(snapshot / name, root / name)


@pytest.fixture
def history(fast_path, sources):
    """A store with a past: index snapshots taken at an early state (S1) and at the final state (S2), each while a
    writer had the index open, so their WAL files hold pages the main file does not have yet."""
    root = fast_path / "store"
    s1 = s2 = None
    with Store.init(root, chunk_bytes=8192) as store:
        store.save(sources[0], "bert/step-100", metrics={"eval_loss": 0.7}, tags=["v1"])
        store.save(sources[1], "bert/step-200", metrics={"eval_loss": 0.5}, parent="bert/step-100")
        store.save(sources[2], "other/final", metadata={"note": "x"})
        store.tag("bert/step-200", "prod")
        s1 = _snapshot(root, fast_path / "s1")
        # Since S1: two saves, a delete, a tag moved and a tag removed.
        store.save(sources[3], "bert/step-300", metrics={"eval_loss": 0.4})
        store.save(sources[4], "bert/step-1000", metrics={"eval_loss": 0.3})
        store.delete("other/final")
        store.tag("bert/step-1000", "prod")
        store.untag("bert:v1")
        s2 = _snapshot(root, fast_path / "s2")
    return root, s1, s2


def _ls(ckpt, root: Path) -> list:
    result = ckpt("ls", "--json", store=root)
    assert result.code == 0, result.err
    return json.loads(result.out)


def _check(ckpt, root: Path, truth: list, what: str) -> None:
    assert _ls(ckpt, root) == truth, f"ls differs after {what}"
    with Store.open(root) as store:
        assert store.resolve("bert:prod") == store.resolve("bert/step-1000"), what
        report = store.verify(deep=False)
        assert report.ok, f"{what}: {report.problems}"


def test_index_damage_is_invisible_to_ls(history, ckpt, scale, figure):
    root, s1, s2 = history
    truth = _ls(ckpt, root)
    assert [c["name"] for c in truth] == ["bert/step-1000", "bert/step-300", "bert/step-200", "bert/step-100"]
    rng = random.Random(11)
    cases: list[tuple[str, object]] = [
        ("deleted", lambda: [(root / n).unlink(missing_ok=True) for n in INDEX_FILES]),
        ("stale copy of index + WAL (S1)", lambda: _restore(s1, root)),
        ("stale WAL (S1) beside the current index",
         lambda: _restore(s1, root, ("index.sqlite-wal", "index.sqlite-shm"))),
        ("index without its WAL (S2)", lambda: _restore(s2, root, ("index.sqlite",)) or
         [(root / n).unlink(missing_ok=True) for n in INDEX_FILES[1:]]),
        ("current index, WAL of S2 replayed", lambda: _restore(s2, root)),
    ]
    for i in range(scale.pick(6, 150)):
        snap = rng.choice([s1, s2])
        target = rng.choice(["index.sqlite", "index.sqlite-wal"])
        size = (snap / target).stat().st_size if (snap / target).exists() else 0
        if not size:
            continue
        cut = rng.randrange(size)
        pos = rng.randrange(size)

        def truncate(snap=snap, target=target, cut=cut):
            _restore(snap, root)
            (root / target).write_bytes((snap / target).read_bytes()[:cut])

        def flip(snap=snap, target=target, pos=pos, bit=rng.randrange(8)):
            _restore(snap, root)
            data = bytearray((snap / target).read_bytes())
            data[pos] ^= 1 << bit
            (root / target).write_bytes(bytes(data))

        cases.append((f"{target} of {snap.name} truncated to {cut} bytes", truncate))
        cases.append((f"{target} of {snap.name}: bit flipped at byte {pos}", flip))
    for what, damage in cases:
        damage()
        _check(ckpt, root, truth, what)
    figure("index recovery", f"{len(cases)} damaged, stale or missing indexes (deleted, truncated, bit-flipped, stale"
           " copy, stale WAL): ls identical every time, verify clean")


def test_a_lost_manifest_is_reported_and_gc_keeps_its_blobs(history, ckpt):
    """The other side of the deletion log: a manifest removed behind the store's back is named by verify, and gc
    refuses to run (its blobs are still needed once the manifest is restored) until the loss is accepted."""
    root, _, _ = history
    with Store.open(root) as store:
        cid = store.resolve("bert/step-300")
    manifest = root / "checkpoints" / f"{cid}.json"
    data = manifest.read_bytes()
    manifest.unlink()
    result = ckpt("verify", store=root)
    assert result.code == 1 and "bert/step-300" in result.out + result.err
    with Store.open(root) as store:
        assert "bert/step-300" not in {c.name for c in store.list()}
        problems = store.verify().problems
        assert [(p.kind, p.checkpoint) for p in problems] == [("missing manifest", "bert/step-300")]
        with pytest.raises(Exception, match="lost their manifest"):
            store.gc()
    manifest.write_bytes(data)  # restored from a backup: everything is back, blobs included
    with Store.open(root) as store:
        assert store.verify().ok
        assert "bert/step-300" in {c.name for c in store.list()}
        store.gc()
        assert store.verify().ok
    manifest.unlink()
    assert ckpt("fsck", "--reindex", store=root).code == 0  # the loss accepted
    with Store.open(root) as store:
        assert store.verify().ok
        store.gc()
