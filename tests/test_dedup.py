"""Deduplication, measured on disk: what a second checkpoint costs is what it does not share with the first.

Stored bytes and blob counts are counted here from the files under objects/, not taken from the store's own figures
(which are checked against them).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from ckptstore import Store


def _objects(store: Store) -> dict[str, int]:
    """Every blob file under objects/ with its size."""
    objects = store.root / "objects"
    return {p.relative_to(objects).as_posix(): p.stat().st_size for p in objects.rglob("*") if p.is_file()}


def _stored_bytes(store: Store) -> int:
    return sum(_objects(store).values())


def _tensor_digests(state: dict[str, torch.Tensor]) -> dict[str, tuple[str, int]]:
    out = {}
    for name, t in state.items():
        raw = t.detach().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
        out[name] = (hashlib.sha256(raw).hexdigest(), len(raw))
    return out


def test_same_folder_under_a_second_name_adds_only_a_manifest(store, tiny_bert_dir):
    first = store.save(tiny_bert_dir, "bert/step-1")
    blobs_before = _objects(store)
    manifests_before = set((store.root / "checkpoints").iterdir())

    second = store.save(tiny_bert_dir, "copy/step-1")
    assert second.id != first.id
    assert _objects(store) == blobs_before  # not one blob written
    added = set((store.root / "checkpoints").iterdir()) - manifests_before
    assert added == {store.root / "checkpoints" / f"{second.id}.json"}
    assert list((store.root / "tmp").iterdir()) == []

    usage = store.du()
    assert usage.stored_bytes == _stored_bytes(store)
    assert usage.blobs == len(blobs_before)
    assert usage.logical_bytes == 2 * first.logical_bytes


def test_frozen_embeddings_cost_only_the_tensors_that_changed(store, tiny_bert):
    # Embeddings dominate this model, as in real ones; one training step with them frozen changes the rest.
    model = tiny_bert(vocab_size=3000)
    store.save(model, "ft/step-0")
    before_bytes, before_blobs = _stored_bytes(store), len(_objects(store))
    before = _tensor_digests(model.state_dict())

    model.train()
    model.embeddings.requires_grad_(False)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    ids = torch.randint(0, 3000, (4, 16), generator=torch.Generator().manual_seed(1))
    model(input_ids=ids).last_hidden_state.pow(2).mean().backward()
    opt.step()
    model.eval()
    after = _tensor_digests(model.state_dict())

    changed = {n for n in after if after[n] != before[n]}
    assert changed and not any(n.startswith("embeddings.") for n in changed)
    known = set(before.values())
    # Each new tensor content is one new blob (tensors here are smaller than a chunk); identical contents share one.
    new_contents = {after[n] for n in changed} - known
    expected_growth = sum(size for _, size in new_contents)

    store.save(model, "ft/step-1")
    growth = _stored_bytes(store) - before_bytes
    assert growth == expected_growth
    assert len(_objects(store)) - before_blobs == len(new_contents)
    model_bytes = sum(size for _, size in after.values())
    assert growth < 0.2 * model_bytes  # the embeddings (over 80% of the model) were not written again
    assert store.du().stored_bytes == _stored_bytes(store)


def test_a_few_changed_rows_cost_only_their_chunks(tmp_path, tiny_bert):
    # Large tensors are cut into chunk_bytes pieces, so changing a few rows of an embedding rewrites one chunk.
    model = tiny_bert(vocab_size=2000)
    with Store.init(tmp_path / "store", chunk_bytes=4096) as store:
        store.save(model, "emb/step-0")
        before = _stored_bytes(store)
        with torch.no_grad():
            model.embeddings.word_embeddings.weight[5:10] += 1.0  # 5 rows of 128 bytes, inside the first chunk
        store.save(model, "emb/step-1")
        assert _stored_bytes(store) - before == 4096
        emb = model.embeddings.word_embeddings.weight
        assert emb.numel() * emb.element_size() > 60 * 4096  # the other 60+ chunks of the tensor were shared


def test_checkpoints_in_different_runs_share_blobs_and_du_counts_run_unique_bytes(store, tiny_bert, tmp_path):
    a = tmp_path / "a"
    tiny_bert(seed=0).save_pretrained(a)
    b = tmp_path / "b"
    tiny_bert(seed=1).save_pretrained(b)
    store.save(a, "run-a/step-1")
    store.save(a, "run-b/step-1")  # same bytes, other run: shared
    only_b = store.save(b, "run-b/step-2")
    usage = store.du()
    runs = {r.run: r for r in usage.runs}
    assert runs["run-a"].unique_bytes == 0
    shared = set(store.manifest("run-a/step-1").blob_refs())
    b_blobs = store.manifest(only_b.id).blob_refs()
    assert runs["run-b"].unique_bytes == sum(s for d, s in b_blobs.items() if d not in shared)
    assert usage.stored_bytes == _stored_bytes(store)
    assert usage.saved_bytes == usage.logical_bytes - usage.stored_bytes > 0


def test_identical_blob_written_once_within_one_save(store, tmp_path):
    folder = tmp_path / "twins"
    folder.mkdir()
    payload = bytes(range(256)) * 1024
    (folder / "a.dat").write_bytes(payload)
    (folder / "b.dat").write_bytes(payload)
    (folder / "notes.txt").write_text("two identical files\n")
    store.save(folder, "twins/one")
    assert len(_objects(store)) == 2
    assert _stored_bytes(store) == len(payload) + len("two identical files\n")
    assert Path(store.root / "tmp").is_dir() and list((store.root / "tmp").iterdir()) == []
