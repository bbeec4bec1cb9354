"""verify finds damage and names it; gc reclaims exactly the blobs nothing references any more."""

from __future__ import annotations

import random

import pytest
import torch

from ckptstore import CorruptObject, Store
from storefiles import blob_path, iter_blobs


def _flip(path, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0x01]))


def _users(store: Store) -> dict[str, set[tuple[str, str]]]:
    """digest -> {(checkpoint name, file path)} for every blob some checkpoint references."""
    out: dict[str, set[tuple[str, str]]] = {}
    for info in store.list():
        for entry in store.manifest(info.id).files:
            for blob in entry.blobs:
                out.setdefault(blob.digest, set()).add((info.name, entry.path))
    return out


@pytest.fixture
def two_checkpoints(store, tiny_bert, minilm_dir):
    """bert/step-1 (model + tokenizer files) and bert/step-2 (same, with the encoder changed): shared and own blobs."""
    from transformers import AutoTokenizer

    model = tiny_bert()
    tok = AutoTokenizer.from_pretrained(minilm_dir)
    store.save(model, "bert/step-1", tokenizer=tok)
    with torch.no_grad():
        for p in model.encoder.parameters():
            p.add_(0.5)
    store.save(model, "bert/step-2", tokenizer=tok)
    return store


def test_verify_names_checkpoint_and_file_for_a_flipped_byte_in_any_blob(two_checkpoints):
    store = two_checkpoints
    users = _users(store)
    assert any(len({n for n, _ in u}) == 2 for u in users.values())  # some blobs are shared
    assert any(len({n for n, _ in u}) == 1 for u in users.values())  # some are not
    rng = random.Random(0)
    assert store.verify().ok
    for digest, expected in sorted(users.items()):
        path = blob_path(store, digest)
        offset = rng.randrange(path.stat().st_size)
        _flip(path, offset)
        try:
            report = store.verify()
            assert not report.ok, (digest, offset)
            found = {(p.checkpoint, p.file) for p in report.problems}
            assert found == expected, digest
            assert all(p.kind == "corrupt blob" and p.digest == digest for p in report.problems)
            assert set(report.damaged) == {n for n, _ in expected}
            text = str(report.problems[0])
            assert report.problems[0].checkpoint in text and report.problems[0].file in text
        finally:
            _flip(path, offset)
    assert store.verify().ok


def test_verify_of_one_checkpoint_checks_only_that_one(two_checkpoints):
    store = two_checkpoints
    users = _users(store)
    own_2 = next(d for d, u in sorted(users.items()) if {n for n, _ in u} == {"bert/step-2"})
    _flip(blob_path(store, own_2), 0)
    assert store.verify("bert/step-1").ok
    report = store.verify("bert/step-2")
    assert report.damaged == ("bert/step-2",)


def test_load_and_export_with_verification_refuse_a_corrupt_blob(two_checkpoints, tmp_path):
    store = two_checkpoints
    entry = store.manifest("bert/step-1").file("model.safetensors")
    tensor_blob = entry.blobs[-1]
    _flip(blob_path(store, tensor_blob.digest), tensor_blob.size // 2)
    with pytest.raises(CorruptObject) as exc:
        store.load_state_dict("bert/step-1", verify=True)
    assert "bert/step-1" in exc.value.message and "model.safetensors" in exc.value.message
    with pytest.raises(CorruptObject):
        store.export("bert/step-1", tmp_path / "out", verify=True)
    assert not (tmp_path / "out").exists()  # a failed export leaves nothing behind


def test_verify_reports_missing_and_truncated_blobs_and_corrupt_manifests(two_checkpoints):
    store = two_checkpoints
    users = _users(store)
    own = sorted(d for d, u in users.items() if {n for n, _ in u} == {"bert/step-2"})
    missing, truncated = own[0], own[1]
    blob_path(store, missing).unlink()
    with open(blob_path(store, truncated), "r+b") as f:
        f.truncate(1)
    step1 = store.resolve("bert/step-1")
    _flip(store.root / "checkpoints" / f"{step1}.json", 10)
    report = store.verify()
    kinds = {(p.kind, p.checkpoint) for p in report.problems}
    assert ("missing blob", "bert/step-2") in kinds
    assert ("wrong size", "bert/step-2") in kinds
    assert ("corrupt manifest", step1[:12]) in kinds
    assert {p.file for p in report.problems if p.digest == missing} == {f for _, f in users[missing]}
    assert not store.fsck().ok  # the structural check finds all three without re-hashing


def test_gc_after_rm_reclaims_exactly_the_unshared_blobs(two_checkpoints, tmp_path, tree_sha256):
    store = two_checkpoints
    store.export("bert/step-1", tmp_path / "step-1-before")
    users = _users(store)
    only_2 = {d for d, u in users.items() if {n for n, _ in u} == {"bert/step-2"}}
    sizes = {d: blob_path(store, d).stat().st_size for d in users}
    assert only_2 and len(only_2) < len(users)

    plan = store.delete("bert/step-2")
    assert plan.reclaimable_bytes == sum(sizes[d] for d in only_2)
    dry = store.gc(dry_run=True)
    assert not dry.executed and {d for d, _ in dry.blobs} == only_2
    assert all(blob_path(store, d).exists() for d in only_2)  # a dry run deletes nothing

    done = store.gc()
    assert done.executed and {d for d, _ in done.blobs} == only_2
    assert done.bytes_freed == plan.reclaimable_bytes
    assert {d for d, _, _ in iter_blobs(store)} == set(users) - only_2
    assert store.verify().ok
    store.export("bert/step-1", tmp_path / "step-1-after")
    assert tree_sha256(tmp_path / "step-1-after") == tree_sha256(tmp_path / "step-1-before")
    assert store.gc().blobs == ()


def test_gc_dry_run_during_a_save_reports_without_waiting_and_says_so(store, tiny_bert_dir, ckpt):
    """A save holds the objects lock shared for its whole length; gc waits for it (its new blobs are referenced by
    nothing yet), a dry run does not: it reports and flags the count as including the save's blobs."""
    from ckptstore._backend.local import file_lock
    from ckptstore.errors import StoreLocked

    store.save(tiny_bert_dir, "m/step-1")
    assert store.gc(dry_run=True).saves_in_progress is False
    with file_lock(store.root / "locks" / "objects", shared=True, timeout=1, what="objects"):  # as a save holds it
        plan = store.gc(dry_run=True, timeout=1)
        assert plan.saves_in_progress and not plan.executed
        result = ckpt("gc", "--dry-run", store=store.root)
        assert result.code == 0 and "A save is in progress" in result.err
        with pytest.raises(StoreLocked):
            store.gc(timeout=0.2)


def test_gc_never_takes_a_blob_the_remaining_checkpoint_shares(two_checkpoints):
    store = two_checkpoints
    users = _users(store)
    store.delete("bert/step-1")
    done = store.gc()
    freed = {d for d, _ in done.blobs}
    assert freed == {d for d, u in users.items() if {n for n, _ in u} == {"bert/step-1"}}
    assert store.verify().ok
    model = store.load("bert/step-2")
    assert model.config.model_type == "bert"


def test_gc_removes_leftovers_of_interrupted_writes(store, tiny_bert_dir):
    store.save(tiny_bert_dir, "bert/step-1")
    leftover = store.root / "tmp" / "12345-deadbeef.blob"
    leftover.write_bytes(b"half a blob")
    orphan = blob_path(store, "ab" * 32)
    orphan.parent.mkdir(parents=True, exist_ok=True)
    orphan.write_bytes(b"a blob no manifest references")
    plan = store.gc()
    assert plan.tmp_files == (str(leftover),) and not leftover.exists()
    assert [d for d, _ in plan.blobs] == ["ab" * 32] and not orphan.exists()
    assert store.verify().ok


def test_gc_stops_without_deleting_when_a_manifest_is_unreadable(store, tiny_bert_dir):
    info = store.save(tiny_bert_dir, "bert/step-1")
    orphan = blob_path(store, "cd" * 32)
    orphan.parent.mkdir(parents=True, exist_ok=True)
    orphan.write_bytes(b"garbage gc would otherwise delete")
    manifest = store.root / "checkpoints" / f"{info.id}.json"
    manifest.write_bytes(manifest.read_bytes()[:-5])
    blobs = sorted(iter_blobs(store))
    with pytest.raises(CorruptObject, match="gc stops"):
        store.gc()
    assert sorted(iter_blobs(store)) == blobs
