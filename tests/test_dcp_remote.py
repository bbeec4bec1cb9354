"""torch.distributed.checkpoint into a remote store: 2 real gloo ranks (tests/dcp_worker.py) save a sharded tiny
BERT with AdamW state into an s3:// store on a real S3 API server (moto_server), and one rank loads it back.

gc runs with no grace for young blobs (CKPT_REMOTE_GC_GRACE_SECONDS=0), so the only thing that keeps it from the
blobs the ranks have staged is the objects lock rank 0 holds, a lock document on the bucket kept alive by rank 0's
heartbeat while the other rank is paused for longer than the lease.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
import torch.distributed.checkpoint as dcp
from safetensors.torch import load_file
from test_dcp import WORKER, _assert_same, _free_port, _ok, spawn

from ckptstore import Store
from ckptstore.errors import StoreLocked
from ckptstore.integrations.dcp import StoreReader

pytestmark = pytest.mark.slow
NAME = "remote/step-1"
LEASE = 5  # seconds


def _blobs(moto_server, s3_url: str) -> set[str]:
    bucket, prefix = s3_url.removeprefix("s3://").split("/", 1)
    pages = moto_server.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"{prefix}/objects/")
    return {obj["Key"] for page in pages for obj in page.get("Contents", [])}


def _wait(what: str, check, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.1)


def _stopped(proc: subprocess.Popen) -> bool:
    assert proc.poll() is None, f"rank exited {proc.returncode} before its failpoint:\n{proc.stderr.read()[-3000:]}"
    state = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    return state == "T"


def test_two_ranks_save_into_s3_store_and_one_rank_loads(moto_server, s3_url, tmp_path, monkeypatch):
    monkeypatch.setenv("CKPT_REMOTE_GC_GRACE_SECONDS", "0")
    monkeypatch.setenv("CKPT_REMOTE_LEASE_SECONDS", str(LEASE))
    Store.init(s3_url).close()
    out = tmp_path / "out"
    out.mkdir()
    job = {"action": "train", "store": s3_url, "out": str(out), "name1": NAME, "name2": None, "timeout": 30}

    t0 = time.monotonic()
    # 1. Rank 1 is killed (SIGKILL) while it uploads its first blob: nothing becomes visible, and gc (another
    # process: this one) removes what rank 0 had uploaded.
    killed = spawn(2, {**job, "timeout": 10}, tmp_path, env_of_rank={1: {"CKPT_FAILPOINT": "blob.write:kill@1"}})
    assert killed[1][0] == -signal.SIGKILL
    assert killed[0][0] not in (0, None)
    with Store.open(s3_url) as store:
        assert store.list() == [] and not store.has(NAME)
        store.gc(timeout=20)
    assert _blobs(moto_server, s3_url) == set()

    t1 = time.monotonic()
    # 2. The save again, with rank 1 stopped (SIGSTOP) at its first upload, for longer than the lease.
    job_file = tmp_path / "job-resave.json"
    job_file.write_text(json.dumps(job))
    port = _free_port()
    procs = []
    for rank in range(2):
        env = {**os.environ, "RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_RANK": str(rank),
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1",
               **({"CKPT_FAILPOINT": "blob.write:stop@1"} if rank == 1 else {})}
        procs.append(subprocess.Popen([sys.executable, str(WORKER), str(job_file)], env=env,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
    gc_result: list = []

    def waiting_gc() -> None:
        with Store.open(s3_url) as store:
            try:
                gc_result.append(len(store.gc(timeout=90).blobs))
            except Exception as exc:  # noqa: BLE001 - reported by the assertion below
                gc_result.append(exc)

    gc_thread = threading.Thread(target=waiting_gc, daemon=True)
    try:
        _wait("rank 1 stops at its upload", lambda: _stopped(procs[1]))
        # Rank 0 uploads its own shard meanwhile (the ranks do not wait for each other to upload).
        _wait("rank 0 uploads its blob", lambda: _blobs(moto_server, s3_url), timeout=60)
        staged = _blobs(moto_server, s3_url)
        with Store.open(s3_url) as store:
            assert store.list() == [] and not store.has(NAME)  # invisible until rank 0's finish commits
            with pytest.raises(StoreLocked):  # rank 0's staging hold keeps gc out
                store.gc(timeout=2)
            plan = store.gc(dry_run=True)
            assert plan.saves_in_progress and not plan.executed
        # A gc that waits for the save: it must run only after the commit.
        gc_thread.start()
        time.sleep(LEASE + 1)  # longer than the lease: only rank 0's heartbeat keeps its hold alive
        assert gc_thread.is_alive() and not gc_result
        assert _blobs(moto_server, s3_url) >= staged
        with Store.open(s3_url) as store:
            assert not store.has(NAME)
        os.kill(procs[1].pid, signal.SIGCONT)
        results = []
        for p in procs:
            _, err = p.communicate(timeout=120)
            results.append((p.returncode, err[-3000:]))
        _ok(results)
        gc_thread.join(120)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()
    assert gc_result and gc_result[0] == 0, gc_result  # it ran, after the commit, and removed nothing

    with Store.open(s3_url) as store:
        assert [c.name for c in store.list()] == [NAME]
        assert store.verify(NAME).ok
        assert staged <= _blobs(moto_server, s3_url)
    # Each rank sent its own blob uploads to the bucket (none went through rank 0).
    for rank in range(2):
        sent = json.loads((out / f"requests-remote~step-1-{rank}.json").read_text())
        assert sent.get("PUT", 0) >= 1, (rank, sent)

    t2 = time.monotonic()
    # 3. Loaded at world size 1 (this process, no process group: DCP's planner reassembles the two ranks'
    # shards) through an empty blob cache, so every byte comes from the bucket: every tensor as saved.
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "load-cache"))
    saved = load_file(out / "remote~step-1.safetensors")
    assert any(k.endswith("exp_avg_sq") for k in saved) and len(saved) > 40
    state: dict = {"model": {}, "optim": {"state": {}}}
    for key, tensor in saved.items():
        if key.startswith("model."):
            state["model"][key.removeprefix("model.")] = torch.zeros_like(tensor)
        else:
            fqn, _, k = key.removeprefix("optim.").rpartition(".")
            state["optim"]["state"].setdefault(fqn, {})[k] = torch.zeros_like(tensor)
    with Store.open(s3_url) as store:
        dcp.load(state, storage_reader=StoreReader(store, NAME))
        assert store.requests.get("GET", 0) >= 2  # the metadata and the ranks' blobs
    loaded = {f"model.{k}": v for k, v in state["model"].items()}
    loaded.update({f"optim.{fqn}.{k}": v for fqn, d in state["optim"]["state"].items() for k, v in d.items()})
    _assert_same(loaded, saved)
    print(f"dcp remote: killed {t1 - t0:.1f}s, saved {t2 - t1:.1f}s, loaded {time.monotonic() - t2:.1f}s")
