"""A store in object storage (s3:// on a real moto_server): the URL everywhere a path goes, the index as a local
cache synced in a few requests, loads through the local blob cache (parallel, hash-checked, then no network), and
a Trainer run saved to the bucket and resumed from it in a fresh process with a cache of its own."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import torch
from conftest import make_tiny_bert, run_ckpt_subprocess

from ckptstore import Store
from ckptstore.errors import CorruptObject


def _bump(model, param: str) -> None:
    with torch.no_grad():
        dict(model.named_parameters())[param].add_(1.0)


def test_store_open_at_a_url_saves_loads_and_exports_byte_exact(s3_url, tmp_path, tiny_bert_dir, tree_sha256):
    store = Store.init(s3_url)
    assert store.url == s3_url and Store.exists(s3_url)
    info = store.save(tiny_bert_dir, "bert/step-1", metrics={"eval_loss": 0.5}, tags=["v1"])
    store.export("bert:v1", tmp_path / "out")
    assert tree_sha256(tmp_path / "out") == tree_sha256(tiny_bert_dir)
    # A second Store (another process's view) sees it through the bucket alone.
    other = Store.open(s3_url)
    assert [i.name for i in other.list()] == ["bert/step-1"] and other.resolve("bert:latest") == info.id


def test_cli_takes_the_url_in_store_env_and_init(s3_url, tiny_bert_dir, ckpt, monkeypatch):
    r = ckpt("init", s3_url)
    assert r.code == 0 and f"Initialized empty store at {s3_url}" in r.err
    assert "Store already exists" in ckpt("init", s3_url).err
    r = ckpt("--store", s3_url, "save", str(tiny_bert_dir), "bert/step-1", "--metric", "eval_loss=0.3")
    assert r.code == 0, r.err
    proc = run_ckpt_subprocess("ls", "--json", env={"CKPT_STORE": s3_url})  # a real process, the store from env
    assert proc.returncode == 0 and [c["name"] for c in json.loads(proc.stdout)] == ["bert/step-1"], proc.stderr
    r = ckpt("ls", "--json", store=s3_url)
    assert [c["name"] for c in json.loads(r.out)] == ["bert/step-1"]
    r = ckpt("verify", store=s3_url)
    assert r.code == 0, r.err
    # A URL of a scheme no backend speaks is still a usage error.
    assert ckpt("ls", store="ftp://host/x").code == 2


def test_ls_with_nothing_new_costs_a_handful_of_requests(s3_url, tiny_bert_dir):
    store = Store.init(s3_url)
    for step in (1, 2, 3):
        store.save(tiny_bert_dir, f"bert/step-{step}", tags=[f"t{step}"], metrics={"eval_loss": 1.0 / step})
    store.close()
    first = Store.open(s3_url)  # the same machine later: its index is cached under XDG_CACHE_HOME
    assert len(first.list()) == 3
    warm = Store.open(s3_url)
    assert len(warm.list()) == 3 and len(warm.tags()) == 5
    # store.json, then one listing per kind of document (manifests, names, tags, annotations), no manifest read.
    assert sum(warm.requests.values()) <= 8, warm.requests
    assert warm.requests.get("GET", 0) <= 1, warm.requests


def test_a_second_load_reads_no_network_and_the_cache_is_capped(s3_url, tmp_path, monkeypatch, ckpt):
    store = Store.init(s3_url)
    model = make_tiny_bert()
    store.save(model, "bert/step-1")
    reader = Store.open(s3_url)
    before = dict(reader.requests)
    sd = reader.load_state_dict("bert/step-1")
    fetched = reader.requests.get("GET", 0) - before.get("GET", 0)
    assert fetched >= len(store.manifest("bert/step-1").blob_refs()) - 1  # the blobs, side by side
    for name, tensor in model.state_dict().items():
        assert torch.equal(sd[name], tensor)
    again = reader.requests
    sd2 = reader.load_state_dict("bert/step-1")
    assert reader.requests == again  # not one request
    assert all(torch.equal(sd2[k], v) for k, v in sd.items())
    loaded = reader.load("bert/step-1")
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in model.state_dict().items())

    usage = Store.cache_usage()
    assert usage.blobs >= len(store.manifest("bert/step-1").blob_refs()) - 1 and usage.bytes > 0
    r = ckpt("cache", "du", "--json")
    assert json.loads(r.out)["bytes"] == usage.bytes
    r = ckpt("cache", "prune", "--max-bytes", "0")
    assert r.code == 0 and "Removed" in r.err
    assert Store.cache_usage().bytes == 0
    # An emptied cache fills again from the store.
    sd3 = reader.load_state_dict("bert/step-1")
    assert all(torch.equal(sd3[k], v) for k, v in sd.items())


def test_large_blobs_go_in_parts_and_come_back_in_ranges(s3_url, tmp_path, monkeypatch):
    store = Store.init(s3_url, chunk_bytes=1 << 30)
    # 48 MiB each: blobs over the multipart threshold
    big = {"w": torch.arange(12 << 20, dtype=torch.float32), "v": -torch.arange(12 << 20, dtype=torch.float32)}
    from safetensors.torch import save_file

    folder = tmp_path / "big"
    folder.mkdir()
    save_file(big, folder / "model.safetensors")
    (folder / "config.json").write_text("{}")
    store.save(folder, "big/step-1")
    monkeypatch.setenv("CKPT_REMOTE_CONCURRENCY", "1")  # one worker: a blob's fetch must not wait on its own pool
    reader = Store.open(s3_url)
    sd = reader.load_state_dict("big/step-1")
    assert torch.equal(sd["w"], big["w"]) and torch.equal(sd["v"], big["v"])
    assert reader.requests["GET"] >= 12  # 2 x 48 MiB in 8 MiB ranges


def test_save_of_an_unchanged_model_uploads_nothing_and_a_fine_tune_only_changed_tensors(s3_url):
    store = Store.init(s3_url)
    model = make_tiny_bert()
    store.save(model, "bert/step-1")
    assert store.save(model, "bert/step-2").new_bytes == 0
    _bump(model, "pooler.dense.weight")
    report = store.save(model, "bert/step-3")
    assert report.new_bytes == model.pooler.dense.weight.numel() * 4  # that tensor's blob, nothing else


def test_trainer_callback_saves_to_the_bucket_and_resume_dir_checks_out_from_it(s3_url, tmp_path, monkeypatch):
    import transformers

    sys.path.insert(0, str(Path(__file__).parent / "integrations"))
    from test_transformers_callback import make_trainer

    from ckptstore.integrations.transformers import CheckpointCallback

    callback = CheckpointCallback(s3_url, "cb", async_save=True)
    trainer = make_trainer(tmp_path / "out", [callback], max_steps=4)
    trainer.train()
    store = Store.open(s3_url)
    assert [i.name for i in store.list()] == ["cb/step-4", "cb/step-2"]
    # Another machine: a cache and index of its own; resume_dir checks the newest checkpoint out of the bucket.
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "other-machine"))
    fresh = CheckpointCallback(s3_url, "cb")
    trainer2 = make_trainer(tmp_path / "out2", [fresh], max_steps=4)
    path = fresh.resume_dir(trainer2.args.output_dir)
    assert path is not None and Path(path).name == "checkpoint-4"
    state = json.loads((Path(path) / "trainer_state.json").read_text())
    assert state["global_step"] == 4
    assert isinstance(trainer2, transformers.Trainer)


def test_read_only_credentials_load_without_writing_and_refuse_writes_in_one_line(s3_url, tmp_path, monkeypatch):
    from ckptstore.errors import StoreReadOnly

    store = Store.init(s3_url)
    model = make_tiny_bert()
    store.save(model, "bert/step-1")
    monkeypatch.setenv("CKPT_REMOTE_READ_ONLY", "1")
    reader = Store.open(s3_url)
    assert reader.read_only
    loaded = reader.load("bert/step-1")  # no lease: a lease is a write
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in model.state_dict().items())
    assert reader.verify().ok
    assert "PUT" not in reader.requests and "DELETE" not in reader.requests
    with pytest.raises(StoreReadOnly):
        reader.save(model, "bert/step-2")
    with pytest.raises(StoreReadOnly):
        reader.tag("bert/step-1", "prod")


def test_blob_cache_takes_only_matching_bytes_and_drops_the_least_recently_used_first(tmp_path):
    from ckptstore._backend.blobcache import BlobCache
    from ckptstore._core.hashing import hash_bytes

    cache = BlobCache(tmp_path / "cache", max_bytes=1 << 40)
    blobs = [os.urandom(1000 + i) for i in range(4)]
    digests = [hash_bytes(b) for b in blobs]
    with pytest.raises(CorruptObject):
        cache.add(digests[0], blobs[1])  # bytes that are not the blob's: refused, nothing kept
    assert cache.path(digests[0]) is None and cache.usage().blobs == 0
    for i, (d, b) in enumerate(zip(digests, blobs)):
        Path(cache.add(d, b))
        os.utime(cache.path(d), (1000 + i, 1000 + i))  # used in this order, oldest first
    os.utime(cache.path(digests[0]), None)  # blob 0 used again just now
    removed, freed = cache.prune(sum(len(b) for b in blobs[2:]) + len(blobs[0]))
    assert removed == 1 and freed == len(blobs[1])  # the least recently used went, only it
    assert cache.path(digests[1]) is None and all(cache.path(d) for d in (digests[0], digests[2], digests[3]))
    # A cached file of the wrong size (damaged on the local disk) is dropped, not served.
    Path(cache.path(digests[2])).write_bytes(b"short")
    assert cache.path(digests[2], len(blobs[2])) is None and cache.path(digests[2]) is None


def test_a_store_made_again_at_the_same_url_gets_a_fresh_index(s3_url, moto_server, tiny_bert_dir):
    """The local index of a remote store is a cache of that store: after the prefix is emptied and a new store is
    made at the same URL, the old store's checkpoints are neither listed nor in the way of a save."""
    old = Store.init(s3_url)
    old.save(tiny_bert_dir, "bert/step-1", tags=["v1"])
    old.close()
    client = moto_server.client()
    bucket, prefix = s3_url[len("s3://"):].split("/", 1)
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=bucket, Prefix=prefix + "/").get("Contents", [])]
    client.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": k} for k in keys]})
    new = Store.init(s3_url)
    assert new.list() == []
    info = new.save(tiny_bert_dir, "bert/step-1")
    assert [i.name for i in Store.open(s3_url).list()] == ["bert/step-1"] and info.tags == ("latest",)
