"""Sync and replication with a store in a bucket, end to end as users run them, on the real moto_server:
`ckpt sync ./local s3://BUCKET/PREFIX` and back (real `ckpt` processes, the pull on another machine's cache), and a
real Trainer run whose CheckpointCallback replicates to an s3:// URL."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_sync import fine_tuned

from ckptstore import Store
from ckptstore.policies import RetentionPolicy


def ckpt_in(cwd: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    """The `ckpt` command as a real process started in `cwd` (so './local' means what it says)."""
    return subprocess.run([sys.executable, "-m", "ckptstore", *args], cwd=cwd, env={**os.environ, **env}, check=False,
                          capture_output=True, text=True, timeout=300)


def test_ckpt_sync_pushes_a_local_store_to_a_bucket_and_pulls_it_back_on_another_machine(
        s3_url, tmp_path, tiny_bert_dir, tree_sha256):
    local = Store.init(tmp_path / "local")
    first = local.save(tiny_bert_dir, "bert/step-1", metrics={"eval_loss": 0.9}, tags=["v1"])
    second = local.save(fine_tuned(0, 2), "bert/step-2", metrics={"eval_loss": 0.5}, parent=first.id)
    local.close()

    push = ckpt_in(tmp_path, "sync", "./local", s3_url)
    assert push.returncode == 0, push.stderr
    assert "Copied 2 checkpoints" in push.stderr and "Tags set: bert:v1" in push.stderr
    assert "Traceback" not in push.stderr and os.environ["AWS_SECRET_ACCESS_KEY"] not in push.stderr + push.stdout
    bucket = Store.open(s3_url)
    assert {(c.name, c.id) for c in bucket.list()} == {("bert/step-1", first.id), ("bert/step-2", second.id)}
    assert bucket.tags("bert")["bert:v1"] == first.id and bucket.verify().ok

    again = ckpt_in(tmp_path, "sync", "./local", s3_url, "--json")
    assert again.returncode == 0, again.stderr
    data = json.loads(again.stdout)
    assert data["copied"] == [] and data["bytes_transferred"] == 0  # nothing new: nothing sent

    # Another machine (a blob cache and index of its own) pulls the run back from the bucket into a new store.
    pull = ckpt_in(tmp_path, "sync", s3_url, "./back", "bert", XDG_CACHE_HOME=str(tmp_path / "machine-b"))
    assert pull.returncode == 0, pull.stderr
    back = Store.open(tmp_path / "back")
    assert {(c.name, c.id) for c in back.list()} == {("bert/step-1", first.id), ("bert/step-2", second.id)}
    assert back.info("bert/step-2").parent == first.id and back.info("bert/step-1").metrics["eval_loss"] == 0.9
    assert back.tags("bert")["bert:v1"] == first.id
    back.export("bert:v1", tmp_path / "out")
    assert tree_sha256(tmp_path / "out") == tree_sha256(tiny_bert_dir)
    assert back.verify().ok

    # The API takes the URL as the CLI does.
    report = Store.init(tmp_path / "api").sync_from(s3_url, "bert:v1")
    assert [c.id for c in report.copied] == [first.id]
    report = Store.open(tmp_path / "local").sync(s3_url, dry_run=True)
    assert report.copied == () and sorted(report.present) == ["bert/step-1", "bert/step-2"]


@pytest.mark.slow
def test_trainer_run_replicating_to_a_bucket_ends_with_what_the_policy_keeps_on_both_sides(
        s3_url, tmp_path, monkeypatch, tree_sha256):
    sys.path.insert(0, str(Path(__file__).parent / "integrations"))
    from test_transformers_callback import make_trainer

    from ckptstore.integrations.transformers import CheckpointCallback

    store = Store.init(tmp_path / "store")
    policy = RetentionPolicy(keep_last=2)
    callback = CheckpointCallback(store, "tiny", policy, replicate_to=s3_url)
    trainer = make_trainer(tmp_path / "out", [callback], max_steps=8, save_steps=2)
    trainer.train()

    kept = {(c.name, c.id) for c in store.list("tiny")}
    assert {n for n, _ in kept} >= {"tiny/step-6", "tiny/step-8"} and len(kept) <= 3  # last two, and the best
    assert callback.replicator.failures == 0 and callback.replicator.last_report is not None
    # Another machine sees in the bucket what the training store keeps, and resumes from it bit for bit.
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "machine-b"))
    mirror = Store.open(s3_url)
    assert {(c.name, c.id) for c in mirror.list("tiny")} == kept
    assert mirror.get_policy("tiny") == policy
    assert mirror.tags("tiny")["tiny:latest"] == store.tags("tiny")["tiny:latest"]
    mirror.checkout("tiny:latest", tmp_path / "resume")
    store.checkout("tiny:latest", tmp_path / "resume-local")
    assert tree_sha256(tmp_path / "resume") == tree_sha256(tmp_path / "resume-local")
    assert mirror.verify().ok
