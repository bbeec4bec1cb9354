"""Store.staging / stage_files / commit_staged, the staged save that multi-process writers (torch.distributed.
checkpoint) use: blobs written by several processes, one commit; nothing visible before it."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import pytest
import torch

from ckptstore import CorruptObject, InvalidArgument, NameExists, StoreLocked


def test_files_staged_in_other_processes_become_one_checkpoint_at_the_commit(store):
    code = (
        "import json, sys, torch; from ckptstore import Store; s = Store.open(sys.argv[1]); r = int(sys.argv[2]);"
        " e, n = s.stage_files({f'part-{r}.safetensors': {'w': torch.full((1000,), float(r))}, f'note-{r}.txt': b'x'});"
        " print(json.dumps([e, n]))"
    )
    import json

    with store.staging():
        outs = [subprocess.run([sys.executable, "-c", code, str(store.root), str(r)], capture_output=True, text=True,
                               check=True).stdout for r in range(2)]
        staged = [json.loads(o) for o in outs]
        assert store.list() == []  # staged blobs are not a checkpoint
        entries = [e for es, _ in staged for e in es]
        report = store.commit_staged("multi/step-3", entries, extra_files={"meta.json": b"{}"},
                                     staged_bytes=sum(n for _, n in staged), metrics={"loss": 1.0})
    assert report.step == 3 and report.file_count == 5
    assert report.new_bytes >= 2 * 4000 + len(b"{}")  # the processes' writes are counted with the commit's
    assert torch.equal(store.load_tensors("multi:latest", "part-1.safetensors")["w"], torch.full((1000,), 1.0))
    assert store.read_file("multi/step-3", "note-0.txt") == b"x"
    assert store.verify().ok


def test_commit_refuses_missing_blobs_repeated_paths_and_taken_names(store, tiny_bert_dir):
    with store.staging():
        entries, _ = store.stage_files({"a.bin": b"hello"})
    broken = [{**entries[0], "blobs": [["0" * 64, 5]]}]
    with pytest.raises(CorruptObject) as exc:
        store.commit_staged("run/step-1", broken)
    assert "staging()" in exc.value.hint
    with pytest.raises(InvalidArgument):
        store.commit_staged("run/step-1", [entries[0], {**entries[0], "size": 6}])
    with pytest.raises(InvalidArgument):
        store.commit_staged("run/step-1", entries, extra_files={"a.bin": b"other"})
    assert store.list() == []
    store.save(tiny_bert_dir, "run/step-2")
    with pytest.raises(NameExists):
        store.commit_staged("run/step-2", entries)


def test_commit_inside_staging_does_not_wait_for_a_waiting_gc(store):
    """gc waits for the staging hold with the gate held; the commit inside the hold must not queue behind it."""
    result = {}

    def run_gc():
        try:
            result["gc"] = store.reopen().gc(timeout=20)
        except StoreLocked as exc:  # pragma: no cover - only when the commit deadlocked
            result["gc"] = exc

    with store.staging():
        entries, _ = store.stage_files({"w.bin": b"w" * 100})
        gc_thread = threading.Thread(target=run_gc)
        gc_thread.start()
        time.sleep(0.5)  # gc now holds the gate and waits for the objects lock
        t0 = time.monotonic()
        store.commit_staged("run/step-1", entries)
        assert time.monotonic() - t0 < 10
    gc_thread.join()
    assert not isinstance(result["gc"], Exception) and result["gc"].executed
    assert store.read_file("run/step-1", "w.bin") == b"w" * 100  # gc ran after the commit: the blob is kept
