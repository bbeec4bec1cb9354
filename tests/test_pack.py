"""Packing: blobs stored zstd or as deltas keep their identity; exports stay byte-exact, loads decode, verify and
fsck follow chains, gc keeps the bases of live deltas, latest/best/tagged stay raw."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from ckptstore import Store
from ckptstore._format import encoding as enc
from ckptstore.policies import StoragePolicy


def _train(model, optimizer, steps: int) -> None:
    for _ in range(steps):
        ids = torch.randint(0, 99, (4, 8))
        model(input_ids=ids).last_hidden_state.pow(2).mean().backward()
        optimizer.step()
        optimizer.zero_grad()


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A real tiny BERT trained with AdamW, saved as 4 Trainer-like folders (weights + optimizer.pt); made once
    for the module, read only by the tests."""
    from tests.conftest import make_tiny_bert

    torch.manual_seed(0)
    model = make_tiny_bert(hidden_size=64, intermediate_size=128)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    folders = []
    root = tmp_path_factory.mktemp("trained")
    for k in range(4):
        _train(model, optimizer, 3)
        folder = root / f"checkpoint-{k + 1}"
        model.save_pretrained(folder)
        torch.save(optimizer.state_dict(), folder / "optimizer.pt")
        folders.append(folder)
    return folders


def _save_all(store: Store, folders: list[Path], run: str = "run") -> list[str]:
    return [store.save(f, f"{run}/step-{i + 1}").id for i, f in enumerate(folders)]


def _stored(store: Store) -> int:
    return sum(size for _, size, _ in store._repo.blobs.iter())


def _encodings(store: Store, ref: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for f in store.manifest(ref).files:
        for b in f.blobs:
            head = store._repo.blobs.header(b.digest)
            name = head.name if head is not None else "raw"
            out[name] = out.get(name, 0) + 1
    return out


def test_pack_keeps_every_checkpoint_byte_exact_and_smaller(store, trained_run, tmp_path, tree_sha256):
    _save_all(store, trained_run)
    before = _stored(store)
    expected = {i: store.load_state_dict(f"run/step-{i}") for i in (1, 2)}
    expected = {i: {k: v.clone() for k, v in sd.items()} for i, sd in expected.items()}
    report = store.pack("run")
    assert report.blobs_encoded > 0 and report.encodings.get("delta", 0) > 0 and report.encodings.get("zstd", 0) > 0
    assert report.stored_bytes < report.raw_bytes
    assert _stored(store) == before - report.saved_bytes
    for i, folder in enumerate(trained_run, start=1):
        out = tmp_path / f"out-{i}"
        store.export(f"run/step-{i}", out)
        assert tree_sha256(out) == tree_sha256(folder)
        store.export(f"run/step-{i}", tmp_path / f"verified-{i}", verify=True)
    for i, sd in expected.items():
        loaded = store.load_state_dict(f"run/step-{i}")
        assert loaded.keys() == sd.keys()
        assert all(torch.equal(loaded[k], sd[k]) for k in sd)
    assert store.verify().ok and store.fsck().ok
    # the latest stays raw (zero-copy), the first is packed
    assert set(_encodings(store, "run:latest")) == {"raw"}
    assert _encodings(store, "run/step-1").get("zstd", 0) > 0
    # packing again finds nothing new to encode
    assert store.pack("run").blobs_encoded == 0


def test_one_pack_of_many_checkpoints_keeps_chains_within_the_bound(store, trained_run, tmp_path, tree_sha256):
    from ckptstore._ops import pack as _pack

    ids = _save_all(store, trained_run)
    report = _pack.pack(store._repo, ids, max_chain=2)
    assert report.encodings.get("delta", 0) > 0
    depths = [len(store._repo.blobs.chain(b.digest)) for i in range(1, 5)
              for f in store.manifest(f"run/step-{i}").files for b in f.blobs]
    assert max(depths) == 2  # deltas were written, each at most 2 links from a full copy
    for i, folder in enumerate(trained_run, start=1):
        store.export(f"run/step-{i}", tmp_path / f"out-{i}", verify=True)
        assert tree_sha256(tmp_path / f"out-{i}") == tree_sha256(folder)


def test_dry_run_changes_nothing(store, trained_run):
    _save_all(store, trained_run)
    before = sorted(store._repo.blobs.iter())
    report = store.pack(dry_run=True)
    assert report.dry_run and report.candidates > 0 and report.blobs_encoded == 0
    assert [(d, s) for d, s, _ in sorted(store._repo.blobs.iter())] == [(d, s) for d, s, _ in before]


def test_explicit_ref_packs_a_tagged_checkpoint(store, trained_run):
    _save_all(store, trained_run)
    store.tag("run/step-2", "v1")
    store.pack("run")
    assert _encodings(store, "run/step-2") == {"raw": len([b for f in store.manifest("run/step-2").files
                                                            for b in f.blobs])}
    store.pack("run/step-2")
    assert _encodings(store, "run/step-2").get("zstd", 0) + _encodings(store, "run/step-2").get("delta", 0) > 0


def test_gc_keeps_bases_of_live_deltas(store, trained_run, tmp_path, tree_sha256):
    _save_all(store, trained_run)
    store.pack("run", keep_raw=False)
    assert _encodings(store, "run/step-2").get("delta", 0) > 0
    store.delete(["run/step-1"])
    plan = store.gc()
    out = tmp_path / "out"
    store.export("run/step-2", out, verify=True)
    assert tree_sha256(out) == tree_sha256(trained_run[1])
    assert store.verify().ok
    # the bases step-2's deltas need were kept although no checkpoint lists them
    listed = {b.digest for ref in ("run/step-2", "run/step-3", "run/step-4") for f in store.manifest(ref).files
              for b in f.blobs}
    stored = {d for d, _, _ in store._repo.blobs.iter()}
    assert stored - listed, "gc kept no delta base"
    assert not (set(d for d, _ in plan.blobs) & stored)


def _a_delta(store: Store, ref: str):
    for f in store.manifest(ref).files:
        for b in f.blobs:
            head = store._repo.blobs.header(b.digest)
            if head is not None and head.base is not None:
                return f, b, head
    raise AssertionError("no delta")


def test_damaged_base_is_reported_against_every_checkpoint_that_depends_on_it(store, trained_run):
    _save_all(store, trained_run)
    store.pack("run", keep_raw=False)
    entry, blob, head = _a_delta(store, "run/step-3")
    path = store._repo.blobs.local_path(head.base)
    data = bytearray(Path(path).read_bytes())
    data[-1] ^= 0xFF
    os.chmod(path, 0o644)
    Path(path).write_bytes(bytes(data))
    report = store.verify()
    damaged = {p.checkpoint for p in report.problems}
    # the base's own checkpoint and step-3, whose delta needs it, are both named
    assert "run/step-3" in damaged
    assert any(p.checkpoint == "run/step-3" and p.digest == blob.digest and "base" in p.detail
               for p in report.problems)
    with pytest.raises(Exception, match="base"):
        store.export("run/step-3", store.root.parent / "never")


def test_fsck_reports_a_chain_whose_base_is_missing(store, trained_run):
    _save_all(store, trained_run)
    store.pack("run", keep_raw=False)
    entry, blob, head = _a_delta(store, "run/step-4")
    os.unlink(store._repo.blobs.local_path(head.base))
    report = store.fsck()
    assert any(p.kind == "broken delta chain" and p.checkpoint == "run/step-4" for p in report.problems)


def test_raw_blob_that_looks_like_a_header_stays_raw(store, tiny_bert_dir, tmp_path, tree_sha256):
    src = tmp_path / "src"
    src.mkdir()
    for f in tiny_bert_dir.iterdir():
        (src / f.name).write_bytes(f.read_bytes())
    fake = enc.HEADER.pack(enc.MAGIC, 1, enc.ZSTD, 4, 0, 1 << 20, bytes(32), bytes(32)) + b"\x00" * 8000
    (src / "notes.bin").write_bytes(fake)
    store.save(src, "run/step-1")
    out = tmp_path / "out"
    store.export("run/step-1", out, verify=True)
    assert tree_sha256(out) == tree_sha256(src)


def test_packed_model_loads_through_from_pretrained(store, trained_run):
    _save_all(store, trained_run)
    store.pack("run/step-1")
    import transformers

    model = store.load("run/step-1")
    plain = transformers.AutoModel.from_pretrained(trained_run[0])
    for (k, a), (_, b) in zip(sorted(model.state_dict().items()), sorted(plain.state_dict().items())):
        assert torch.equal(a, b), k


def test_pack_after_packs_older_checkpoints_in_the_background(store, trained_run):
    store.save(trained_run[0], "run/step-1")
    store.set_storage("run", StoragePolicy(pack_after=1))
    assert store.get_storage("run") == StoragePolicy(pack_after=1)
    for i, folder in enumerate(trained_run[1:], start=2):
        store.save(folder, f"run/step-{i}")
    store.wait_packing(timeout=120)
    for i in (1, 2, 3):
        assert set(_encodings(store, f"run/step-{i}")) - {"raw"}, f"step-{i} was not packed"
    assert set(_encodings(store, "run/step-4")) == {"raw"}
    assert store.verify().ok


def test_storage_policy_survives_a_retention_policy_change(store, trained_run):
    from ckptstore.policies import RetentionPolicy

    store.save(trained_run[0], "run/step-1")
    store.set_storage("run", StoragePolicy(pack_after=2, keep_training_state=1))
    store.set_policy("run", RetentionPolicy(keep_last=3))
    assert store.get_storage("run") == StoragePolicy(pack_after=2, keep_training_state=1)


def test_pack_on_the_memory_backend(trained_run, tmp_path, tree_sha256):
    from tests.conformance.memory_backend import MemoryBackend

    backend = MemoryBackend()
    store = Store.on(backend, create=True)
    try:
        _save_all(store, trained_run)
        report = store.pack("run", keep_raw=False)
        assert report.encodings.get("delta", 0) > 0
        for i, folder in enumerate(trained_run, start=1):
            out = tmp_path / f"out-{i}"
            store.export(f"run/step-{i}", out)
            assert tree_sha256(out) == tree_sha256(folder)
        assert store.verify().ok
    finally:
        store.close()
        backend.close()


def test_cli_pack(ckpt, trained_run):
    for i, folder in enumerate(trained_run, start=1):
        assert ckpt("save", folder, f"run/step-{i}").code == 0
    dry = ckpt("pack", "run", "--dry-run")
    assert dry.code == 0 and "Would pack 4 checkpoints" in dry.err
    done = ckpt("pack", "run")
    assert done.code == 0 and "Packed 4 checkpoints" in done.err and "delta" in done.err
    again = ckpt("pack", "run", "--json")
    assert again.code == 0 and '"blobs_encoded": 0' in again.out
    assert ckpt("verify").code == 0
    assert ckpt("pack", "nosuch").code == 1


def test_du_and_show_report_what_packing_saved(ckpt, trained_run):
    import json

    for i, folder in enumerate(trained_run, start=1):
        assert ckpt("save", folder, f"run/step-{i}").code == 0
    before = json.loads(ckpt("du", "--json").out)["storage"]["runs"]["run"]
    assert before["zstd_saved_bytes"] == 0 and before["delta_saved_bytes"] == 0
    assert before["dedup_saved_bytes"] > 0  # the config and the unchanged blobs
    assert ckpt("pack", "run").code == 0
    after = json.loads(ckpt("du", "--json").out)["storage"]
    run = after["runs"]["run"]
    assert run["zstd_saved_bytes"] > 0 and run["delta_saved_bytes"] > 0
    assert run["stored_bytes"] == run["unique_bytes"] - run["zstd_saved_bytes"] - run["delta_saved_bytes"]
    human = ckpt("du")
    assert "DELTA SAVED" in human.out and "run" in human.out
    shown = ckpt("show", "run/step-2")  # step-1 has no checkpoint before it: zstd only
    assert "encodings" in shown.out and "delta" in shown.out and "zstd" in shown.out
