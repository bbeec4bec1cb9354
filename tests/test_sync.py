"""Sync between stores (`Store.sync`, `Store.pull`, `ckpt sync`): checkpoints copied with their tags, metrics,
annotations, lineage and run settings, only missing blobs sent, each re-hashed on arrival, names never overwritten,
deletions never undone, retention applied at the destination.

Every test runs on pairs of real stores of the storage seam: local folders in tmp_path and the in-memory backend
(tests/conformance/memory_backend.py). STORES maps a backend's name to a factory; another backend (object storage)
joins every test by adding its factory there and its pairs to PAIRS.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from conformance.memory_backend import MemoryBackend
from conftest import make_tiny_bert
from s3server import flip_object_bit
from storefiles import blob_path

from ckptstore import CorruptObject, Store
from ckptstore._backend.objectstore import ObjectStoreBackend
from ckptstore.errors import StoreNotFound, SyncConflict
from ckptstore.policies import RetentionPolicy


def _local(tmp_path: Path, label: str) -> Store:
    return Store.init(tmp_path / label)


def _memory(tmp_path: Path, label: str) -> Store:
    return Store.on(MemoryBackend(), create=True)


def _s3(tmp_path: Path, label: str) -> Store:
    # the pair fixture has made a bucket on the session's moto server and pointed the AWS variables at it
    return Store.init(f"{os.environ['CKPT_TEST_S3_URL']}-{label}")


STORES: dict[str, Callable[[Path, str], Store]] = {"local": _local, "memory": _memory, "s3": _s3}
PAIRS = [("local", "local"), ("local", "memory"), ("memory", "local"), ("memory", "memory"), ("local", "s3"),
         ("s3", "local")]


@pytest.fixture(params=PAIRS, ids=lambda p: f"{p[0]}-to-{p[1]}")
def pair(request, tmp_path):
    """(source, destination): two empty stores on the backends of this parameter."""
    if "s3" in request.param:
        monkeypatch = request.getfixturevalue("monkeypatch")
        monkeypatch.setenv("CKPT_TEST_S3_URL", request.getfixturevalue("s3_url"))
        # gc's grace period for remote blobs is tested in test_remote_store_faults; here gc sweeps at once
        monkeypatch.setenv("CKPT_REMOTE_GC_GRACE_SECONDS", "0")
    made = [STORES[request.param[0]](tmp_path, "src"), STORES[request.param[1]](tmp_path, "dst")]
    yield made
    for s in made:
        backend = s._repo.backend
        s.close()
        if isinstance(backend, MemoryBackend):
            backend.close()


# -- helpers ------------------------------------------------------------------------------------------------------


def stored_blobs(store: Store) -> dict[str, int]:
    """digest -> size of every blob the store holds (through the seam: any backend)."""
    return {d: s for d, s, _ in store._repo.blobs.iter()}


DOCUMENT_PREFIXES = ("store.json", "checkpoints/", "names/", "refs/", "policies/", "deleted/", "annotations/")


def documents(store: Store) -> dict[str, bytes]:
    """Every document of the store's format (docs/format.md), key -> bytes (not its index or lock files)."""
    docs = store._repo.docs
    out = {}
    for prefix in DOCUMENT_PREFIXES:
        for key in docs.list(prefix):
            got = docs.get(key)
            if got is not None:
                out[key] = got[0]
    return out


def damage_blob(store: Store, digest: str, request: pytest.FixtureRequest) -> None:
    """Flip one bit of a stored blob where the store keeps it, keeping its size (bit rot): in the bucket for a
    remote store (not in this machine's blob cache of it), in its dict for a memory store, in its file otherwise."""
    backend = store._repo.backend
    if isinstance(backend, MemoryBackend):
        data, mtime = backend.blobs.data[digest]
        backend.blobs.data[digest] = (bytes([data[0] ^ 1]) + data[1:], mtime)
    elif isinstance(backend, ObjectStoreBackend):
        key = f"objects/{digest[:2]}/{digest[2:]}"
        flip_object_bit(request.getfixturevalue("moto_server").client(), backend.url, key)
    else:
        path = blob_path(store, digest)
        raw = bytearray(path.read_bytes())
        raw[0] ^= 1
        path.write_bytes(bytes(raw))


def fine_tuned(seed: int, step: int):
    """The tiny BERT of `seed` with only its pooler changed by `step`: it shares every other tensor's blob."""
    model = make_tiny_bert(seed)
    with torch.no_grad():
        model.pooler.dense.weight.add_(0.01 * step)
    return model


def run_history(src: Store, run: str = "r", steps=(100, 200, 300)) -> list[str]:
    """Checkpoints of one run, each the child of the one before, with metrics; returns their ids."""
    ids, parent = [], None
    for i, step in enumerate(steps):
        info = src.save(fine_tuned(0, step), f"{run}/step-{step}", metrics={"eval_loss": 1.0 - 0.1 * i},
                        parent=parent)
        ids.append(info.id)
        parent = info.id
    return ids


# -- what a sync copies ---------------------------------------------------------------------------------------------


def test_checkpoints_arrive_byte_exact_with_tags_metrics_annotations_and_lineage(pair, tiny_bert_dir, tmp_path,
                                                                                   tree_sha256):
    src, dst = pair
    first = src.save(tiny_bert_dir, "bert/step-1", metrics={"eval_loss": 0.9}, metadata={"lr": 3e-4},
                     message="first", tags=["v1"])
    second = src.save(fine_tuned(0, 2), "bert/step-2", metrics={"eval_loss": 0.5}, parent=first.id)
    src.annotate("bert/step-1", metrics={"test_accuracy": 0.75}, message="reviewed")
    src.tag("bert/step-2", "prod")

    report = src.sync(dst)

    assert [c.name for c in report.copied] == ["bert/step-1", "bert/step-2"]
    assert report.ok and report.conflicts == ()
    assert sorted(report.tags) == ["bert:prod", "bert:v1"]
    got = {c.name: c for c in dst.list()}
    assert got["bert/step-1"].id == first.id and got["bert/step-2"].id == second.id  # the very manifests
    assert got["bert/step-1"].metrics == {"eval_loss": 0.9, "test_accuracy": 0.75}
    assert got["bert/step-1"].message == "reviewed" and got["bert/step-1"].metadata["lr"] == 3e-4
    assert got["bert/step-2"].parent == first.id
    assert [x if isinstance(x, str) else x.id for x in dst.lineage("bert:prod")] == [second.id, first.id]
    assert dst.tags("bert") == {"bert:best": second.id, "bert:latest": second.id, "bert:prod": second.id,
                                "bert:v1": first.id}
    dst.export("bert/step-1", tmp_path / "out1")
    assert tree_sha256(tmp_path / "out1") == tree_sha256(tiny_bert_dir)
    src.export("bert/step-2", tmp_path / "src2")
    dst.export("bert:prod", tmp_path / "out2")
    assert tree_sha256(tmp_path / "out2") == tree_sha256(tmp_path / "src2")
    assert dst.verify().ok


def test_only_blobs_the_destination_lacks_are_sent(pair):
    src, dst = pair
    base = src.save(fine_tuned(0, 0), "r/step-0")
    src.sync(dst)
    before = stored_blobs(dst)
    child = src.save(fine_tuned(0, 1), "r/step-1", parent=base.id)  # only the pooler changed

    report = src.sync(dst, "r/step-1")

    need = src.manifest(child.id).blob_refs()
    new = {d: s for d, s in need.items() if d not in before}
    assert 0 < len(new) < len(need)
    assert report.blobs_transferred == len(new) and report.bytes_transferred == sum(new.values())
    assert report.blobs_present == len(need) - len(new)
    assert report.bytes_present == sum(need.values()) - sum(new.values())
    after = stored_blobs(dst)
    assert set(after) - set(before) == set(new)  # exactly what was reported, and nothing else, arrived
    assert sum(after.values()) - sum(before.values()) == report.bytes_transferred
    assert report.copied[0].bytes == report.bytes_transferred


def test_a_second_sync_changes_nothing(pair, tiny_bert_dir):
    src, dst = pair
    run_history(src)
    src.save(tiny_bert_dir, "other/x", tags=["keep"])
    first = src.sync(dst)
    assert len(first.copied) == 4
    docs, blobs = documents(dst), stored_blobs(dst)

    again = src.sync(dst)

    assert again.copied == () and again.bytes_transferred == 0 and again.blobs_transferred == 0
    assert sorted(again.present) == sorted(c.name for c in src.list())
    assert again.tags == () and again.settings == ()
    assert documents(dst) == docs and stored_blobs(dst) == blobs


def test_a_name_held_for_another_checkpoint_is_a_conflict_never_overwritten(pair, tmp_path, tree_sha256):
    src, dst = pair
    src.save(fine_tuned(0, 1), "r/step-1")
    src.save(fine_tuned(0, 2), "r/step-2")
    theirs = dst.save(fine_tuned(7, 2), "r/step-2")  # another checkpoint under the same name
    dst.export("r/step-2", tmp_path / "before")

    report = src.sync(dst)

    assert [c.name for c in report.copied] == ["r/step-1"]  # the rest is copied
    assert [(c.kind, c.key, c.destination_id) for c in report.conflicts] == [("name", "r/step-2", theirs.id)]
    assert not report.ok
    assert dst.info("r/step-2").id == theirs.id
    dst.export("r/step-2", tmp_path / "after")
    assert tree_sha256(tmp_path / "after") == tree_sha256(tmp_path / "before")
    with pytest.raises(SyncConflict, match="r/step-2") as exc:
        report.raise_for_conflicts()
    assert exc.value.hint


def test_a_user_tag_pointing_elsewhere_moves_only_when_asked(pair):
    src, dst = pair
    a = src.save(fine_tuned(0, 1), "r/step-1")
    b = src.save(fine_tuned(0, 2), "r/step-2")
    src.sync(dst)
    dst.tag("r/step-1", "prod")
    src.tag("r/step-2", "prod")

    report = src.sync(dst)
    assert [(c.kind, c.key, c.source_id, c.destination_id) for c in report.conflicts] == \
        [("tag", "r:prod", b.id, a.id)]
    assert dst.resolve("r:prod") == a.id

    moved = src.sync(dst, move_tags=True)
    assert moved.ok and moved.tags == ("r:prod",)
    assert dst.resolve("r:prod") == b.id


def test_a_checkpoint_deleted_at_the_destination_is_not_brought_back(pair):
    src, dst = pair
    run_history(src)
    src.sync(dst)
    dst.delete("r/step-200")

    report = src.sync(dst)

    assert report.deleted == ("r/step-200",) and report.copied == ()
    assert not dst.has("r/step-200")
    assert {c.name for c in dst.list()} == {"r/step-100", "r/step-300"}


def test_latest_and_best_follow_the_destinations_checkpoints(pair):
    src, dst = pair
    src.register_run("r", metric="eval_acc", mode="max")
    low = src.save(fine_tuned(0, 1), "r/step-1", metrics={"eval_acc": 0.9})
    high = src.save(fine_tuned(0, 2), "r/step-2", metrics={"eval_acc": 0.5})
    older = dst.save(fine_tuned(3, 1), "r/step-9", metrics={"eval_acc": 0.1})  # the destination's own, newer step

    report = src.sync(dst)

    assert report.settings == ("r",)  # the destination had no settings for the run: best follows eval_acc there too
    assert dst.best_metric("r") == ("eval_acc", "max")
    tags = dst.tags("r")
    assert tags["r:latest"] == older.id  # the highest step at the destination, not the source's latest
    assert tags["r:best"] == low.id
    assert high.id in {c.id for c in dst.list("r")}


def test_the_runs_policy_applies_at_the_destination_and_what_it_drops_is_not_sent(pair):
    src, dst = pair
    ids = run_history(src, steps=(100, 200, 300, 400))  # the last is also the best (eval_loss falls)
    src.set_policy("r", RetentionPolicy(keep_last=2))  # set afterwards: the source still holds all four

    plan = src.sync(dst, dry_run=True)
    assert sorted(plan.not_kept) == ["r/step-100", "r/step-200"] and plan.settings == ("r",)
    report = src.sync(dst)
    assert report.bytes_transferred == plan.bytes_transferred

    assert report.settings == ("r",)
    assert sorted(report.not_kept) == ["r/step-100", "r/step-200"]
    assert [c.name for c in report.copied] == ["r/step-300", "r/step-400"]
    assert {c.id for c in dst.list("r")} == set(ids[2:])
    assert dst.get_policy("r") == RetentionPolicy(keep_last=2)
    sent = set().union(*(src.manifest(i).blob_refs() for i in ids[2:]))
    assert set(stored_blobs(dst)) == sent  # nothing of the dropped checkpoints was sent

    # A later save at the source prunes there and at the destination alike.
    src.save(fine_tuned(0, 500), "r/step-500", metrics={"eval_loss": 0.1}, parent=ids[-1])
    later = src.sync(dst)
    assert later.pruned == ("r/step-300",)
    assert {c.name for c in dst.list("r")} == {c.name for c in src.list("r")} == {"r/step-400", "r/step-500"}


def test_a_destination_with_its_own_settings_keeps_them(pair):
    src, dst = pair
    src.set_policy("r", RetentionPolicy(keep_last=1))
    dst.set_policy("r", RetentionPolicy(keep_last=3))
    run_history(src)
    report = src.sync(dst)
    assert report.settings == ()
    assert dst.get_policy("r") == RetentionPolicy(keep_last=3)


def test_refs_select_checkpoints_and_runs(pair, tiny_bert_dir):
    src, dst = pair
    run_history(src)
    src.save(tiny_bert_dir, "other/a", tags=["t"])
    src.save(fine_tuned(1, 1), "third/b")

    report = src.sync(dst, "r:latest", "other")

    assert sorted(c.name for c in report.copied) == ["other/a", "r/step-300"]
    assert sorted(c.name for c in dst.list()) == ["other/a", "r/step-300"]


def test_a_dry_run_reports_and_writes_nothing(pair):
    src, dst = pair
    run_history(src)
    docs, blobs = documents(dst), stored_blobs(dst)

    plan = src.sync(dst, dry_run=True)

    assert plan.dry_run and [c.name for c in plan.copied] == ["r/step-100", "r/step-200", "r/step-300"]
    union = {}
    for c in src.list():
        union.update(src.manifest(c.id).blob_refs())
    assert plan.blobs_transferred == len(union) and plan.bytes_transferred == sum(union.values())
    assert documents(dst) == docs and stored_blobs(dst) == blobs
    real = src.sync(dst)
    assert (real.blobs_transferred, real.bytes_transferred) == (plan.blobs_transferred, plan.bytes_transferred)


def test_a_damaged_source_blob_is_refused_and_nothing_becomes_visible(pair, request):
    src, dst = pair
    info = src.save(fine_tuned(0, 1), "r/step-1")
    manifest = src.manifest(info.id)
    weights = manifest.file("model.safetensors")
    damage_blob(src, weights.blobs[3].digest, request)

    with pytest.raises(CorruptObject, match=r"r/step-1 \(model.safetensors\)"):
        src.sync(dst)

    dst.refresh()
    assert dst.list() == []
    assert weights.blobs[3].digest not in stored_blobs(dst)
    dst.gc()
    assert stored_blobs(dst) == {}


def test_pull_copies_the_other_way(pair):
    src, dst = pair
    ids = run_history(src)
    report = dst.sync_from(src, "r")
    assert [c.id for c in report.copied] == ids
    assert {c.id for c in dst.list()} == set(ids)


def test_a_store_cannot_be_synced_with_itself(tmp_path):
    store = Store.init(tmp_path / "s")
    again = Store.open(tmp_path / "s")
    with pytest.raises(ValueError, match="same store"):
        store.sync(again)


def test_a_renamed_checkpoint_arrives_under_its_current_name(pair):
    src, dst = pair
    info = src.save(fine_tuned(0, 1), "r/step-1")
    src.rename("r/step-1", "r/chosen")
    src.sync(dst)
    assert dst.info("r/chosen").id == info.id
    assert not dst.has("r/step-1")
    assert dst.manifest("r/chosen").name == "r/chosen"


# -- the command ------------------------------------------------------------------------------------------------------


@pytest.fixture
def ckpt(capsys):
    """The real CLI in-process, as conftest's `ckpt` but without its --store (sync names both stores itself)."""
    from conftest import CliResult, run_cli

    def run(*args) -> CliResult:
        return run_cli(capsys, [str(a) for a in args])

    return run


def test_ckpt_sync_copies_reports_and_exits_1_on_a_conflict(tmp_path, ckpt, tiny_bert_dir):
    src = Store.init(tmp_path / "a")
    src.save(tiny_bert_dir, "r/step-1", tags=["v1"])
    src.save(fine_tuned(0, 2), "r/step-2")
    src.close()

    dry = ckpt("sync", tmp_path / "a", tmp_path / "b", "--dry-run")
    assert dry.code == 1 and "No checkpoint store" in dry.err  # a dry run creates nothing

    first = ckpt("sync", tmp_path / "a", tmp_path / "b")
    assert first.code == 0, first.err
    assert "copied" in first.out and "r/step-1" in first.out and "r/step-2" in first.out
    assert "Copied 2 checkpoints" in first.err and "Tags set: r:v1" in first.err

    again = ckpt("sync", tmp_path / "a", tmp_path / "b", "--json")
    assert again.code == 0
    import json

    data = json.loads(again.out)
    assert data["copied"] == [] and sorted(data["present"]) == ["r/step-1", "r/step-2"]
    assert data["bytes_transferred"] == 0

    other = Store.init(tmp_path / "c")
    other.save(fine_tuned(5, 2), "r/step-2")
    other.close()
    clash = ckpt("sync", tmp_path / "a", tmp_path / "c")
    assert clash.code == 1
    assert "conflict" in clash.out and "error: 1 conflict(s)" in clash.err and "hint:" in clash.err
    assert "Traceback" not in clash.err
    assert Store.open(tmp_path / "c").has("r/step-1")


def test_ckpt_sync_of_a_missing_source_is_one_line(tmp_path, ckpt):
    result = ckpt("sync", tmp_path / "nothing", tmp_path / "b")
    assert result.code == 1
    assert result.err.startswith("error: No checkpoint store at") and "Traceback" not in result.err
    assert not (tmp_path / "b").exists()


def test_store_not_found_for_a_dry_run_to_a_missing_store(tmp_path):
    src = Store.init(tmp_path / "a")
    with pytest.raises(StoreNotFound):
        src.sync(tmp_path / "missing", dry_run=True)
    assert not (tmp_path / "missing").exists()


def test_report_to_json_is_plain_data(pair):
    src, dst = pair
    run_history(src, steps=(1,))
    data = src.sync(dst).to_json()
    assert data["copied"][0]["name"] == "r/step-1" and isinstance(data["copied"][0]["bytes"], int)
    assert dataclasses.is_dataclass(src.sync(dst)) and data["conflicts"] == []


def test_a_sync_between_two_memory_stores_stays_above_the_seam(tmp_path, tree_sha256):
    """Under the conformance suite's path guard, a sync between two memory stores touches no file but their scratch
    folders and the test's own: everything it reads and writes goes through the backends' blobs and documents."""
    import os

    from conformance.test_store_conformance import PathGuard

    a, b = MemoryBackend(), MemoryBackend()
    guard = PathGuard([a.scratch, b.scratch, str(tmp_path), os.environ["HF_HOME"]])
    try:
        src, dst = Store.on(a, create=True), Store.on(b, create=True)
        ids = run_history(src)
        src.tag("r/step-200", "prod")
        src.set_policy("r", RetentionPolicy(keep_last=3))
        with pytest.MonkeyPatch.context() as mp:
            guard.install(mp)
            report = src.sync(dst)
            again = src.sync(dst)
            back = Store.on(MemoryBackend(), create=True)
            guard.allowed.append(back._repo.backend.scratch)
            dst.sync(back, "r:prod")
        assert guard.outside == [], guard.outside
        assert [c.id for c in report.copied] == ids and again.copied == ()
        assert [c.name for c in back.list()] == ["r/step-200"] and back.tags("r")["r:prod"] == ids[1]
        src.export("r:prod", tmp_path / "a")
        back.export("r:prod", tmp_path / "b")
        assert tree_sha256(tmp_path / "a") == tree_sha256(tmp_path / "b")
        for s in (src, dst, back):
            s.close()
        back._repo.backend.close()
    finally:
        a.close()
        b.close()
