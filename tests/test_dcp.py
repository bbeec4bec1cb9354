"""torch.distributed.checkpoint into the store with real processes: gloo on CPU, a tiny BERT sharded with FSDP2
across 4 ranks with AdamW state (tests/dcp_worker.py is one rank).

One module-scoped run: a save killed on one of 2 ranks, then the real save (4 ranks, two checkpoints), loads at world
sizes 2 and 1 (and an async save from 2 ranks); each test checks one outcome of it.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ckptstore import Store

WORKER = Path(__file__).with_name("dcp_worker.py")
pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn(world: int, job: dict, tmp: Path, *, env_of_rank: dict[int, dict] | None = None, timeout: float = 240):
    """Run `world` ranks of the worker as real processes; returns their (returncode, stderr tail) by rank."""
    job_file = tmp / f"job-{job['action']}-{world}-{len(list(tmp.glob('job-*')))}.json"
    job_file.write_text(json.dumps(job))
    port = _free_port()
    procs = []
    for rank in range(world):
        env = {**os.environ, "RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank),
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1",
               **((env_of_rank or {}).get(rank, {}))}
        procs.append(subprocess.Popen([sys.executable, str(WORKER), str(job_file)], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    results = []
    for p in procs:
        try:
            _, err = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            _, err = p.communicate()
        results.append((p.returncode, err[-3000:]))
    return results


def _ok(results) -> None:
    for rank, (code, err) in enumerate(results):
        assert code == 0, f"rank {rank} exited {code}:\n{err}"


@pytest.fixture(scope="module")
def run(tmp_path_factory, minilm_dir):
    tmp = tmp_path_factory.mktemp("dcp")
    store_path = tmp / "store"
    Store.init(store_path).close()
    out = tmp / "out"
    out.mkdir()
    job = {"action": "train", "store": str(store_path), "out": str(out), "name1": "fsdp/step-1",
           "name2": "fsdp/step-2", "tokenizer": str(minilm_dir), "timeout": 30}
    # Rank 1 of 2 is killed (SIGKILL) while it writes its first blob; rank 0 fails on the broken process group.
    t0 = time.monotonic()
    killed = spawn(2, {**job, "name2": None, "timeout": 10}, tmp, env_of_rank={1: {"CKPT_FAILPOINT": "blob.write:kill@1"}})
    with Store.open(store_path) as s:
        after_kill = [c.name for c in s.list()]
    t1 = time.monotonic()
    saved = spawn(4, job, tmp)
    _ok(saved)
    t2 = time.monotonic()
    loaded2 = spawn(2, {"action": "load", "store": str(store_path), "out": str(out),
                        "refs": ["fsdp/step-1", "fsdp:latest"], "async_name": "fsdp/async-2"}, tmp)
    loaded1 = spawn(1, {"action": "load", "store": str(store_path), "out": str(out),
                        "refs": ["fsdp/step-1", "fsdp/async-2"]}, tmp)
    print(f"dcp spawns: killed {t1 - t0:.1f}s, saved {t2 - t1:.1f}s, loads {time.monotonic() - t2:.1f}s")
    return {"store": store_path, "out": out, "tmp": tmp, "killed": killed, "after_kill": after_kill,
            "loaded2": loaded2, "loaded1": loaded1}


def _assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert sorted(a) == sorted(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
        assert torch.equal(a[k], b[k]), k


def test_killed_rank_leaves_no_checkpoint_and_a_resave_succeeds(run):
    assert run["killed"][1][0] == -signal.SIGKILL
    assert run["killed"][0][0] not in (0, None)  # the coordinator failed (did not commit, did not hang)
    assert run["after_kill"] == []
    with Store.open(run["store"]) as s:
        assert {c.name for c in s.list()} >= {"fsdp/step-1", "fsdp/step-2"}
        assert s.verify().ok


def test_saved_at_4_loads_at_2_and_1_with_equal_tensors(run):
    _ok(run["loaded2"])
    _ok(run["loaded1"])
    out = run["out"]
    saved1 = load_file(out / "fsdp~step-1.safetensors")
    saved2 = load_file(out / "fsdp~step-2.safetensors")
    assert any(k.endswith("exp_avg_sq") for k in saved1) and len(saved1) > 40
    _assert_same(load_file(out / "loaded-2-fsdp~step-1.safetensors"), saved1)
    _assert_same(load_file(out / "loaded-2-fsdp@latest.safetensors"), saved2)
    _assert_same(load_file(out / "loaded-1-fsdp~step-1.safetensors"), saved1)
    # the optimizer's plain values (param_groups) came back through the JSON-described bytes items
    assert json.loads((out / "loaded-1-fsdp~step-1.json").read_text())["lr"] == 1e-2


def test_async_save_from_2_ranks_loads_back(run):
    _ok(run["loaded2"])
    # saved asynchronously by 2 ranks after loading fsdp:latest, loaded at world size 1
    _assert_same(load_file(run["out"] / "loaded-1-fsdp~async-2.safetensors"),
                 load_file(run["out"] / "fsdp~step-2.safetensors"))
    with Store.open(run["store"]) as s:
        assert s.info("fsdp/async-2").file_count == 3  # metadata and one file per rank: committed once


def test_second_save_with_half_frozen_writes_only_changed_blobs(run):
    out = run["out"]
    saved1, saved2 = load_file(out / "fsdp~step-1.safetensors"), load_file(out / "fsdp~step-2.safetensors")
    changed = {k for k in saved1 if not torch.equal(saved1[k], saved2[k])}
    frozen = {k for k in saved1 if ".embeddings." in k or ".layer.0." in k}
    assert frozen and not changed & frozen and changed  # what the test relies on: frozen state did not move
    changed_bytes = sum(saved2[k].numel() * saved2[k].element_size() for k in changed)
    frozen_bytes = sum(saved2[k].numel() * saved2[k].element_size() for k in frozen)
    report = json.loads((out / "fsdp~step-2.json").read_text())
    with Store.open(run["store"]) as s:
        m1, m2 = s.manifest("fsdp/step-1"), s.manifest("fsdp/step-2")
    old = set(m1.blob_refs())
    new = {d: n for d, n in m2.blob_refs().items() if d not in old}
    # every new blob is a changed tensor's shard, a rank file's header, or the DCP metadata
    for f in m2.files:
        if not f.path.startswith("dcp/rank-"):
            continue
        parts = f.tensor_blobs()
        for t in f.tensors:
            fqn = t.name.split("@")[0]
            name = fqn if fqn.startswith("model.") else fqn.replace(".state.", ".", 1)
            if name in frozen:
                assert all(b.digest in old for b, _ in parts[t.name]), t.name
    # (two ranks may both write a blob neither saw stored yet, such as two equal step counters: counted twice)
    assert sum(new.values()) <= report["new_bytes"] <= sum(new.values()) + 256
    # beyond the changed shards: the DCP metadata (it names the checkpoint) and the rank files' headers
    overhead = m2.file("dcp/metadata.json").size + sum(f.blobs[0].size for f in m2.files if f.path.startswith("dcp/rank-"))
    assert changed_bytes <= report["new_bytes"] <= changed_bytes + overhead + 256
    assert frozen_bytes > changed_bytes / 2  # a real share of the state was not written again


def test_export_hf_loads_with_from_pretrained_and_gives_the_trained_outputs(run, ckpt):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from dcp_worker import INPUT_IDS

    dest = run["tmp"] / "hf"
    res = ckpt("export", "fsdp/step-2", dest, "--hf", "--max-shard-size", "40KB", "--verify", store=run["store"])
    assert res.code == 0, res.err
    names = sorted(p.name for p in dest.iterdir())
    assert "config.json" in names and "tokenizer.json" in names and "model.safetensors.index.json" in names
    assert not any(n.startswith("dcp") for n in names)
    assert len([n for n in names if n.startswith("model-")]) > 1
    assert json.loads((dest / "config.json").read_text())["architectures"] == ["BertForSequenceClassification"]
    model = AutoModelForSequenceClassification.from_pretrained(dest).eval()
    with torch.no_grad():
        got = model(input_ids=INPUT_IDS).logits
    expected = torch.load(run["out"] / "fsdp~step-2.logits.pt", weights_only=True)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    assert AutoTokenizer.from_pretrained(dest)("hello world")["input_ids"]


def test_export_hf_refuses_a_plain_checkpoint(ckpt, store, tiny_bert_dir, tmp_path):
    store.save(tiny_bert_dir, "plain/step-1")
    res = ckpt("export", "plain/step-1", tmp_path / "x", "--hf")
    assert res.code == 2 and "not a distributed (DCP) checkpoint" in res.err
    assert not (tmp_path / "x").exists()


def test_store_lists_the_dcp_checkpoint_with_its_model_facts(run):
    with Store.open(run["store"]) as s:
        info = s.info("fsdp/step-2")
        files = [f.path for f in s.manifest("fsdp/step-2").files]
    assert info.metrics == {"loss": 0.4} and info.step == 2
    assert {"dcp/metadata.json", "dcp/rank-00000.safetensors", "dcp/rank-00003.safetensors", "config.json"} <= set(files)
