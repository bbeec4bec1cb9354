"""Packed blobs decoded once, then kept in the local blob cache: a second load decodes nothing and maps them, an
export copies them, the store is never written by a read, a damaged cache file is never served, the cap holds."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ckptstore import Store
from ckptstore._backend.blobcache import BlobCache
from ckptstore._repo.encoded import decode_count
from tests.test_pack import _save_all, trained_run  # noqa: F401  (the module-scoped fixture)


@pytest.fixture
def cache_dir(tmp_path, monkeypatch) -> Path:
    path = tmp_path / "blob-cache"
    monkeypatch.setenv("CKPT_CACHE_DIR", str(path))
    return path


@pytest.fixture
def packed(store, trained_run):  # noqa: F811
    _save_all(store, trained_run)
    store.pack("run", keep_raw=False)  # every checkpoint packed, the newest at the end of its delta chains
    return store


def _objects(store: Store) -> dict[str, tuple[int, int]]:
    root = Path(store.root) / "objects"
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()}


def _packed_digests(store: Store, ref: str) -> list[tuple[str, int]]:
    return [(b.digest, b.size) for f in store.manifest(ref).files for b in f.blobs
            if store._repo.blobs.header(b.digest) is not None]


def _same(loaded: dict, folder: Path) -> bool:
    expected = load_file(folder / "model.safetensors")
    return loaded.keys() == expected.keys() and all(torch.equal(loaded[k], expected[k]) for k in expected)


def test_second_load_and_export_of_a_packed_checkpoint_decode_nothing(packed, trained_run, cache_dir, tmp_path,  # noqa: F811
                                                                      tree_sha256):
    store = packed
    assert _packed_digests(store, "run/step-4")
    objects = _objects(store)
    start = decode_count()
    assert _same(store.load_state_dict("run/step-4"), trained_run[3])
    first = decode_count()
    assert first > start  # the cold load decoded the packed weights
    assert _same(store.load_state_dict("run/step-4"), trained_run[3])
    assert decode_count() == first  # warm: mapped from the cache
    model = store.load("run/step-4")  # through from_pretrained too
    assert decode_count() == first
    assert torch.equal(model.state_dict()["embeddings.word_embeddings.weight"],
                       load_file(trained_run[3] / "model.safetensors")["embeddings.word_embeddings.weight"])
    store.export("run/step-4", tmp_path / "a")  # decodes the optimizer's storages, not the weights again
    second = decode_count()
    store.export("run/step-4", tmp_path / "b")
    store.export("run/step-4", tmp_path / "c", verify=True)
    assert decode_count() == second
    for name in "abc":
        assert tree_sha256(tmp_path / name) == tree_sha256(trained_run[3])
    assert _objects(store) == objects  # reads never write the store
    cached = {d for d, _, _ in BlobCache(cache_dir).entries()}
    assert {d for d, _ in _packed_digests(store, "run/step-4")} <= cached
    assert Store.cache_usage().blobs == len(cached)  # what `ckpt cache du` shows


def test_a_damaged_cache_file_is_never_served(packed, trained_run, cache_dir, tmp_path, tree_sha256):  # noqa: F811
    store = packed
    store.export("run/step-4", tmp_path / "warm")
    cache = BlobCache(cache_dir)
    digest, size = max(_packed_digests(store, "run/step-4"), key=lambda d: d[1])
    path = Path(cache.files.fspath(digest))
    assert path.stat().st_size == size
    # truncated: caught by its size on any read, decoded again from the store
    os.chmod(path, 0o644)
    path.write_bytes(path.read_bytes()[: size // 2])
    before = decode_count()
    store.export("run/step-4", tmp_path / "after-truncation")
    assert tree_sha256(tmp_path / "after-truncation") == tree_sha256(trained_run[3])
    assert decode_count() > before and path.stat().st_size == size
    # same size, one byte flipped: --verify hashes the cache file, drops it and decodes from the store
    data = bytearray(path.read_bytes())
    data[size // 3] ^= 0x01
    os.chmod(path, 0o644)
    path.write_bytes(bytes(data))
    store.export("run/step-4", tmp_path / "verified", verify=True)
    assert tree_sha256(tmp_path / "verified") == tree_sha256(trained_run[3])
    assert _same(store.load_state_dict("run/step-4", verify=True), trained_run[3])
    assert path.read_bytes() != bytes(data)  # replaced by the good bytes
    assert store.verify().ok  # the store itself was never touched


def test_the_cache_cap_holds(packed, trained_run, cache_dir, tmp_path, tree_sha256, monkeypatch):  # noqa: F811
    store = packed
    sizes = sorted(size for _, size in _packed_digests(store, "run/step-4"))
    cap = sum(sizes) // 3
    assert cap >= sizes[-1]  # the largest blob fits: the cache is used, and must evict to stay under the cap
    monkeypatch.setenv("CKPT_CACHE_MAX_BYTES", str(cap))
    for i in (4, 3, 2):
        reopened = Store.open(store.root)
        out = tmp_path / f"out-{i}"
        reopened.export(f"run/step-{i}", out)
        assert tree_sha256(out) == tree_sha256(trained_run[i - 1])
        assert _same(reopened.load_state_dict(f"run/step-{i}"), trained_run[i - 1])
        usage = BlobCache(cache_dir).usage()
        assert 0 < usage.bytes <= cap
        reopened.close()


def test_cap_zero_caches_nothing_and_prune_empties_the_cache(packed, trained_run, cache_dir, ckpt, monkeypatch):  # noqa: F811
    store = packed
    assert _same(store.load_state_dict("run/step-4"), trained_run[3])
    assert Store.cache_usage().bytes > 0
    r = ckpt("cache", "prune", "--max-bytes", "0")
    assert r.code == 0, r.err
    assert Store.cache_usage().bytes == 0
    before = decode_count()
    assert _same(store.load_state_dict("run/step-4"), trained_run[3])
    assert decode_count() > before  # decoded again once the cache was emptied
    monkeypatch.setenv("CKPT_CACHE_MAX_BYTES", "0")
    reopened = Store.open(store.root)
    r = ckpt("cache", "prune", "--max-bytes", "0")
    assert _same(reopened.load_state_dict("run/step-4"), trained_run[3])
    assert not any(BlobCache(cache_dir).entries())
    reopened.close()


def test_chunked_tensors_of_a_packed_checkpoint_map_from_the_cache(trained_run, cache_dir, tmp_path):  # noqa: F811
    with Store.init(tmp_path / "small-chunks", chunk_bytes=16384) as store:
        _save_all(store, trained_run)
        store.pack("run", keep_raw=False)
        chunked = [e for f in store.manifest("run/step-4").files if f.is_safetensors
                   for e, parts in f.tensor_blobs().items() if len(parts) > 1]
        assert chunked
        assert _same(store.load_state_dict("run/step-4"), trained_run[3])
        before = decode_count()
        loaded = store.load_state_dict("run/step-4")
        assert decode_count() == before
        assert _same(loaded, trained_run[3])
        loaded[chunked[0]].add_(1)  # private maps: writing to a loaded tensor never reaches the cache
        assert _same(store.load_state_dict("run/step-4", verify=True), trained_run[3])
