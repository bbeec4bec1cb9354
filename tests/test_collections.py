"""Collections (`ckpt collection ...`, Store.collection_*): named, ordered groups of checkpoints across runs, kept
in the store's documents, surviving prune and gc, guarding deletes; on tiny real BERT checkpoints."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from conftest import make_tiny_bert
from storefiles import blob_path

from ckptstore import Store
from ckptstore.errors import CollectionExists, CollectionNotFound, InCollection, InvalidName
from ckptstore.policies import RetentionPolicy


@pytest.fixture
def folders(tmp_path):
    """Four save_pretrained folders of one tiny BERT whose classifier changes at every step."""
    model = make_tiny_bert(cls_name="BertForSequenceClassification")
    out = {}
    for step in range(1, 5):
        with torch.no_grad():
            model.classifier.weight.add_(torch.randn_like(model.classifier.weight))
        out[step] = tmp_path / f"src-{step}"
        model.save_pretrained(out[step])
    return out


def _unique_blobs(store, ref) -> set[str]:
    """Blobs of `ref` that no other checkpoint holds (what gc would delete if it went)."""
    mine = set(store.manifest(ref).blob_refs())
    for c in store.list():
        if c.id != store.resolve(ref):
            mine -= set(store.manifest(c.id).blob_refs())
    return mine


def test_a_collected_checkpoint_survives_prune_and_gc(store, folders, ckpt, tree_sha256):
    store.save(folders[1], "run/step-1", metrics={"eval_loss": 0.9})
    store.collection_create("release", "what ships")
    store.collection_add("release", "run/step-1", note="first good one")
    unique = _unique_blobs(store, "run/step-1")
    assert unique  # its classifier is its own: gc would reclaim it if the checkpoint went
    store.set_policy("run", RetentionPolicy(keep_last=1))
    for step in (2, 3, 4):  # the policy is applied after every save; eval_loss improves, so best is the latest
        store.save(folders[step], f"run/step-{step}", metrics={"eval_loss": 0.9 - step / 10})
    assert {c.name for c in store.list("run")} == {"run/step-1", "run/step-4"}

    r = ckpt("prune", "run", "--keep-last", "1", "--dry-run", store=store.root)
    assert r.code == 0
    line = next(x for x in r.out.splitlines() if "run/step-1" in x)
    assert line.startswith("kept") and "in collection release" in line
    plan = store.prune("run", RetentionPolicy(keep_last=1), dry_run=True).plan
    assert [d.reasons for d in plan.keep if d.checkpoint.name == "run/step-1"] == [("in collection release",)]

    store.gc()
    assert all(blob_path(store, d).exists() for d in unique)
    store.export("run/step-1", store.root.parent / "out")
    assert tree_sha256(store.root.parent / "out") == tree_sha256(folders[1])

    # Without the collection, retention removes it like any other.
    store.collection_delete("release")
    assert [d.checkpoint.name for d in store.prune("run").plan.remove] == ["run/step-1"]
    assert not store.has("run/step-1")


def test_rm_refuses_a_collected_checkpoint_and_force_takes_it_out(store, folders, ckpt):
    for step in (1, 2):
        store.save(folders[step], f"run/step-{step}")
    store.save(folders[3], "other/step-1")
    for name in ("release", "ablation"):
        store.collection_create(name)
        store.collection_add(name, "run/step-1")
    store.collection_add("ablation", "other/step-1")
    before = {c.name for c in store.list()}

    for args in (("rm", "run/step-1"), ("rm", "run/step-1", "--dry-run"), ("rm", "run", "--yes")):
        r = ckpt(*args, store=store.root)
        assert r.code == 1, args
        assert r.err.splitlines() == [
            "error: Not removed: run/step-1 is in ablation, release.",
            "hint: Take it out first ('ckpt collection rm ablation run/step-1'), or pass --force (force=True) to"
            " take it out of its collections and delete it."]
        assert {c.name for c in store.list()} == before
    with pytest.raises(InCollection) as exc:
        store.delete(["run/step-2", "other/step-1"])
    assert set(exc.value.members) == {store.resolve("other/step-1")}
    assert {c.name for c in store.list()} == before

    r = ckpt("rm", "run/step-1", "--force", store=store.root)
    assert r.code == 0, r.err
    assert "Took run/step-1 out of collection ablation" in r.err
    assert "Took run/step-1 out of collection release" in r.err
    assert "Removed run/step-1" in r.err
    assert [i.name for i in store.collection("ablation").items] == ["other/step-1"]
    assert store.collection("release").items == ()
    plan = store.delete("other/step-1", force=True)
    assert plan.executed and plan.collections == (("other/step-1", "ablation"),)
    assert {c.name for c in store.list()} == {"run/step-2"}


def test_collection_commands(store, folders, ckpt):
    for step in (1, 2):
        store.save(folders[step], f"run/step-{step}")
    store.save(folders[3], "other/final", tags=["v1"])
    root = store.root
    assert ckpt("collection", "create", "release-1", "-m", "what ships in 1.0", store=root).code == 0
    r = ckpt("collection", "add", "release-1", "other:v1", "run/step-1", "--note", "ship it", store=root)
    assert r.code == 0 and "Added other/final" in r.err and "Added run/step-1" in r.err
    r = ckpt("collection", "add", "release-1", "run/step-2", store=root)
    assert r.code == 0
    again = ckpt("collection", "add", "release-1", "other/final", store=root)
    assert again.code == 0 and "already in release-1" in again.err
    note = ckpt("collection", "add", "release-1", "run/step-2", "--note", "baseline", store=root)
    assert "Updated the note of run/step-2" in note.err

    shown = json.loads(ckpt("collection", "show", "release-1", "--json", store=root).out)
    assert shown["description"] == "what ships in 1.0"
    assert [(i["name"], i["note"]) for i in shown["items"]] == [
        ("other/final", "ship it"), ("run/step-1", "ship it"), ("run/step-2", "baseline")]
    text = ckpt("collection", "show", "release-1", store=root).out.splitlines()
    assert text[0] == "release-1: what ships in 1.0" and text[1].split()[:2] == ["1.", "other/final"]

    assert ckpt("mv", "run/step-1", "run/kept", store=root).code == 0  # a rename keeps the id, so the membership
    items = store.collection("release-1").items
    assert [(i.name, i.saved_name) for i in items][1] == ("run/kept", "run/step-1")
    assert "(added as run/step-1)" in ckpt("collection", "show", "release-1", store=root).out

    r = ckpt("collection", "rm", "release-1", "run/kept", store=root)
    assert r.code == 0 and "Took run/kept out of release-1" in r.err
    assert [i.name for i in store.collection("release-1").items] == ["other/final", "run/step-2"]
    assert store.has("run/kept")  # the checkpoint stays
    listed = ckpt("collection", "ls", store=root).out
    assert "release-1" in listed and "2 checkpoints" in listed and "what ships in 1.0" in listed

    exists = ckpt("collection", "create", "release-1", store=root)
    assert exists.code == 1 and "already exists" in exists.err
    typo = ckpt("collection", "show", "relase-1", store=root)
    assert typo.code == 1 and "Unknown collection 'relase-1'. Did you mean 'release-1'?" in typo.err
    bad = ckpt("collection", "create", "a/b", store=root)
    assert bad.code == 2 and "Invalid collection name 'a/b'" in bad.err
    not_in = ckpt("collection", "rm", "release-1", "run/kept", store=root)
    assert not_in.code == 1 and "'run/kept' is not in collection 'release-1'" in not_in.err
    unknown = ckpt("collection", "add", "release-1", "run/step-9", store=root)
    assert unknown.code == 1 and "Unknown reference 'run/step-9'" in unknown.err

    r = ckpt("collection", "delete", "release-1", store=root)
    assert r.code == 0 and "2 checkpoints left in the store" in r.err
    assert store.collections() == [] and len(store.list()) == 3
    with pytest.raises(CollectionNotFound):
        store.collection("release-1")
    with pytest.raises(InvalidName):
        store.collection_create("..")
    store.collection_create("x")
    with pytest.raises(CollectionExists):
        store.collection_create("x")


def test_an_entry_whose_checkpoint_went_behind_the_stores_back(store, folders, ckpt):
    """A checkpoint deleted by a ckptstore that knows no collections: shown as gone, and taken out by the name
    it was added under."""
    from ckptstore._ops.delete import remove_locked

    store.save(folders[1], "run/step-1")
    store.save(folders[2], "run/step-2")
    store.collection_create("c")
    store.collection_add("c", "run/step-1")
    store.collection_add("c", "run/step-2")
    repo = store._repo
    with repo.writing(), repo.commit_lock():
        remove_locked(repo, [store.resolve("run/step-1")])
    items = store.collection("c").items
    assert [(i.name, i.exists) for i in items] == [("run/step-1", False), ("run/step-2", True)]
    assert "(no longer stored)" in ckpt("collection", "show", "c", store=store.root).out
    assert store.prune("run", RetentionPolicy(keep_last=1)).plan.remove == ()  # step-2 is collected: stays
    assert ckpt("collection", "rm", "c", "run/step-1", store=store.root).code == 0
    assert [i.name for i in store.collection("c").items] == ["run/step-2"]


def test_concurrent_adds_from_two_processes_all_land(store, folders, tmp_path):
    """Two processes append to one collection at once: compare-and-swap keeps every add."""
    refs = []
    for run in ("a", "b"):
        for step in range(1, 5):
            store.save(folders[step], f"{run}/step-{step}")
            refs.append(f"{run}/step-{step}")
    store.collection_create("both")
    procs = [subprocess.Popen([sys.executable, "-m", "ckptstore", "collection", "add", "both",
                               *[r for r in refs if r.startswith(run)], "--store", str(store.root)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for run in ("a", "b")]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    items = store.collection("both").items
    assert sorted(i.name for i in items) == sorted(refs)
    for run in ("a", "b"):  # each process's adds keep their order
        mine = [i.name for i in items if i.name.startswith(run)]
        assert mine == [r for r in refs if r.startswith(run)]


def test_collections_of_a_checkpoint_and_json(store, folders):
    store.save(folders[1], "run/step-1")
    store.collection_create("a")
    store.collection_create("b")
    store.collection_add("b", "run/step-1")
    assert [c.name for c in store.collections()] == ["a", "b"]
    assert [c.name for c in store.collections("run/step-1")] == ["b"]
    doc = json.loads((store.root / "collections" / "b.json").read_text())
    assert doc["format"] == 1 and doc["items"][0]["id"] == store.resolve("run/step-1")
    reopened = Store.open(store.root)
    assert reopened.collection("b").ids == (store.resolve("run/step-1"),)
    reopened.close()


@pytest.mark.crash
@pytest.mark.parametrize("point, still_stored, still_held", [
    ("write.rename:kill@1", True, True),      # killed writing the collection: nothing changed yet
    ("delete.log:kill@1", True, False),       # out of its collection, not yet deleted
    ("delete.manifest:kill@1", True, False),   # deletion recorded, the checkpoint still whole
    ("name.release:kill@1", False, False),     # manifest removed, the claim not yet: deleted
])
def test_a_forced_rm_killed_midway_never_leaves_a_collection_holding_a_deleted_checkpoint(
        store, folders, point, still_stored, still_held):
    from conftest import run_ckpt_subprocess

    store.save(folders[1], "run/step-1")
    store.save(folders[2], "run/step-2")
    store.collection_create("c")
    store.collection_add("c", "run/step-1")
    store.close()
    killed = run_ckpt_subprocess("rm", "run/step-1", "--force", "--store", store.root,
                                 env={"CKPT_FAILPOINT": point})
    assert killed.returncode == -9, killed.stderr
    after = Store.open(store.root)
    assert after.has("run/step-1") is still_stored
    assert (after.collection("c").ids != ()) is still_held
    assert all(i.exists for i in after.collection("c").items)
    assert after.verify().ok
    done = run_ckpt_subprocess("rm", "run/step-1", "--force", "--store", store.root)
    assert done.returncode == 0 or not still_stored, done.stderr
    after.refresh()
    assert not after.has("run/step-1") and after.collection("c").items == () and after.has("run/step-2")
    after.close()


def test_a_damaged_collection_document_stops_prune_and_rm_and_is_named(store, folders, ckpt):
    """A prune or delete that cannot read a collection cannot know what it protects: it fails, deleting nothing."""
    from ckptstore.errors import CorruptObject

    for step in (1, 2, 3):
        store.save(folders[step], f"run/step-{step}")
    (store.root / "collections").mkdir(exist_ok=True)
    (store.root / "collections" / "broken.json").write_text('{"format": 1, "name": "broken", "items": [')
    with pytest.raises(CorruptObject, match="collections/broken.json"):
        store.prune("run", RetentionPolicy(keep_last=1))
    with pytest.raises(CorruptObject):
        store.delete("run/step-1")
    assert len(store.list()) == 3
    r = ckpt("collection", "show", "broken", store=store.root)
    assert r.code == 1 and "Collection document collections/broken.json is damaged" in r.err
