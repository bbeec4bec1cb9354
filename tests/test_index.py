"""The index is a cache: deleting or corrupting index.sqlite never loses a checkpoint, a tag or a field."""

from __future__ import annotations

import random
import sqlite3

import pytest
import torch

from ckptstore import Store

INDEX_FILES = ("index.sqlite", "index.sqlite-wal", "index.sqlite-shm", "index.sqlite-journal")


@pytest.fixture
def populated(tmp_path, tiny_bert, tiny_bert_dir):
    """A store with two runs, tags, metrics, metadata and lineage; returns (root, what list() said, state dicts)."""
    root = tmp_path / "store"
    model = tiny_bert(seed=3)
    with Store.init(root) as store:
        store.save(tiny_bert_dir, "bert/step-100", metrics={"eval_loss": 0.7}, tags=["v1"])
        store.save(model, "bert/step-200", metrics={"eval_loss": 0.5}, metadata={"lr": 1e-4}, parent="bert/step-100",
                   message="second")
        store.save(tiny_bert_dir, "other/final")  # bert:best is the store's: step-200, the lower eval_loss
        listed = store.list()
        usage = store.du()
    return root, (listed, usage), model.state_dict()


def _drop_index(root) -> None:
    for name in INDEX_FILES:
        (root / name).unlink(missing_ok=True)


def _assert_all_there(store: Store, expected, state) -> None:
    listed, usage = expected
    assert store.list() == listed
    assert store.du() == usage
    assert store.show("bert:best") == next(c for c in listed if c.name == "bert/step-200")
    assert store.resolve("bert:v1") == next(c.id for c in listed if c.name == "bert/step-100")
    assert store.resolve(listed[0].id[:6]) == listed[0].id
    loaded = store.load("bert/step-200").state_dict()
    assert loaded.keys() == state.keys() and all(torch.equal(loaded[k], state[k]) for k in state)
    assert store.verify().ok


def test_deleted_index_is_rebuilt_automatically(populated):
    root, expected, state = populated
    _drop_index(root)
    with Store.open(root) as store:
        _assert_all_there(store, expected, state)
    assert (root / "index.sqlite").is_file()


def test_fsck_reindex_rebuilds_everything(populated):
    root, expected, state = populated
    _drop_index(root)
    with Store.open(root) as store:
        report = store.fsck(reindex=True)
        assert report.ok and report.checkpoints == 3
        _assert_all_there(store, expected, state)
        assert store.reindex() == 3  # and again, on a live index
        _assert_all_there(store, expected, state)


@pytest.mark.parametrize(
    "damage",
    ["garbage", "truncated", "other-schema", "unreadable-schema", "empty-tables", "damaged-tags", "damaged-blob_refs"],
)
def test_damaged_index_is_rebuilt(populated, damage):
    root, expected, state = populated
    index = root / "index.sqlite"
    if damage == "garbage":
        index.write_bytes(b"this is not a database " * 100)
    elif damage == "truncated":
        index.write_bytes(index.read_bytes()[:1000])
    elif damage in ("other-schema", "unreadable-schema"):
        db = sqlite3.connect(index)
        db.execute("UPDATE meta SET value = ? WHERE key = 'schema'", ("999" if damage == "other-schema" else "x",))
        db.commit()
        db.close()
    elif damage.startswith("damaged-"):
        # Bit rot inside the file: one table's page is noise, the rest is fine. SQLite notices only when a query
        # reaches that page, which may be long after the index was opened.
        db = sqlite3.connect(index)
        page_size = db.execute("PRAGMA page_size").fetchone()[0]
        (page,) = db.execute("SELECT rootpage FROM sqlite_master WHERE name = ?", (damage[8:],)).fetchone()
        db.close()
        data = bytearray(index.read_bytes())
        rng = random.Random(page)
        data[(page - 1) * page_size : page * page_size] = rng.randbytes(page_size)
        index.write_bytes(bytes(data))
    else:
        db = sqlite3.connect(index)
        db.executescript("DELETE FROM checkpoints; DELETE FROM tags; DELETE FROM blob_refs;")
        db.close()
    with Store.open(root) as store:
        _assert_all_there(store, expected, state)


def test_index_follows_manifests_changed_behind_its_back(populated):
    root, (listed, _), _ = populated
    gone = next(c for c in listed if c.name == "other/final")
    manifest = root / "checkpoints" / f"{gone.id}.json"
    data = manifest.read_bytes()
    manifest.unlink()
    with Store.open(root) as store:
        assert [c.name for c in store.list()] == [c.name for c in listed if c.id != gone.id]
    manifest.write_bytes(data)  # restored from a backup
    with Store.open(root) as store:
        assert store.list() == listed


def test_cli_works_after_the_index_is_deleted(populated, ckpt, tmp_path):
    import json

    root, (listed, _), _ = populated
    _drop_index(root)
    assert [c["name"] for c in json.loads(ckpt("ls", "--json", store=root).out)] == [c.name for c in listed]
    _drop_index(root)
    result = ckpt("fsck", "--reindex", "--json", store=root)
    assert result.code == 0 and json.loads(result.out)["reindexed"] is True
    shown = json.loads(ckpt("show", "bert:best", "--json", store=root).out)
    assert shown["name"] == "bert/step-200" and shown["metrics"] == {"eval_loss": 0.5}
    assert ckpt("export", "bert:v1", tmp_path / "out", store=root).code == 0
