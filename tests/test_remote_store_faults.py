"""Faults of a store in object storage, on a real moto_server with real processes: a save killed during its upload,
the server gone mid-upload, two writers at once, gc racing a save, a blob overwritten on the server, and a missing
bucket, a wrong endpoint and refused credentials (one line each, with a hint, no secret printed)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from conftest import make_tiny_bert, run_ckpt_subprocess
from s3server import TcpProxy, free_port, point_at, start_moto

from ckptstore import Store
from ckptstore.errors import CorruptObject



def _wait_stopped(pid: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with open(f"/proc/{pid}/stat") as f:
            if f.read().rsplit(")", 1)[1].split()[0] == "T":
                return
        time.sleep(0.05)
    raise AssertionError("the save never reached its failpoint")


@pytest.mark.crash
def test_sigkill_during_upload_leaves_nothing_visible_and_gc_after_grace_reclaims_it(
        s3_url, tiny_bert_dir, monkeypatch, tree_sha256, tmp_path):
    Store.init(s3_url).close()
    proc = run_ckpt_subprocess("save", tiny_bert_dir, "bert/step-1", "--store", s3_url,
                               env={"CKPT_FAILPOINT": "blob.write:kill@12"})
    assert proc.returncode == -signal.SIGKILL
    store = Store.open(s3_url)
    assert store.list() == []
    orphans = {d for d, _, _ in store._repo.backend.blobs.iter()}
    assert orphans  # uploaded before the kill, referenced by nothing
    # Within the grace period gc keeps them (a slow save may still reference them); it first waits for the dead
    # save's hold on the objects lock to expire (CKPT_REMOTE_LEASE_SECONDS=6 in the tests).
    assert store.gc().blobs == ()
    monkeypatch.setenv("CKPT_REMOTE_GC_GRACE_SECONDS", "0")
    later = Store.open(s3_url)
    assert {d for d, _ in later.gc().blobs} == orphans
    assert list(later._repo.backend.blobs.iter()) == []
    proc = run_ckpt_subprocess("save", tiny_bert_dir, "bert/step-1", "--store", s3_url)
    assert proc.returncode == 0, proc.stderr
    later.refresh()
    assert [i.name for i in later.list()] == ["bert/step-1"]
    later.export("bert/step-1", tmp_path / "out")
    assert tree_sha256(tmp_path / "out") == tree_sha256(tiny_bert_dir)


@pytest.mark.crash
def test_server_gone_mid_upload_is_one_line_naming_the_url_and_a_retry_succeeds(
        moto_server, s3_url, tiny_bert_dir, monkeypatch):
    Store.init(s3_url).close()
    proxy = TcpProxy(moto_server.port).start()
    try:
        env = {"AWS_ENDPOINT_URL": proxy.endpoint, "CKPT_FAILPOINT": "blob.write:stop@5"}
        proc = subprocess.Popen([sys.executable, "-m", "ckptstore", "save", str(tiny_bert_dir), "bert/step-1",
                                 "--store", s3_url], env={**os.environ, **env}, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        _wait_stopped(proc.pid)
        proxy.stop()  # the server goes away while the save is in its upload
        os.kill(proc.pid, signal.SIGCONT)
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 1, err
        lines = [line for line in err.splitlines() if line.strip()]
        errors = [line for line in lines if line.startswith("error:")]
        assert len(errors) == 1 and s3_url in errors[0] and "cannot reach the server" in errors[0], err
        assert any(line.startswith("hint:") for line in lines) and "Traceback" not in err
        assert "testing" not in err  # the credentials never appear
    finally:
        proxy.stop()
    proxy = TcpProxy(moto_server.port, port=proxy.port).start()  # the server is back
    try:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint)
        assert Store.open(s3_url).list() == []
        retry = run_ckpt_subprocess("save", tiny_bert_dir, "bert/step-1", "--store", s3_url)
        assert retry.returncode == 0, retry.stderr
        store = Store.open(s3_url)
        assert [i.name for i in store.list()] == ["bert/step-1"] and store.verify().ok
    finally:
        proxy.stop()


_WRITER = textwrap.dedent("""
    import sys, torch
    sys.path.insert(0, {tests!r})
    from conftest import make_tiny_bert
    from ckptstore import Store
    store = Store.open({url!r})
    for step in {steps!r}:
        model = make_tiny_bert(seed=step)
        store.save(model, f"shared/step-{{step}}", metrics={{"eval_loss": 1.0 / step}}, tags=["{tag}"])
""")


def _writer(url: str, steps: list[int], tag: str, cache: Path) -> subprocess.Popen:
    code = _WRITER.format(tests=str(Path(__file__).parent), url=url, steps=steps, tag=tag)
    env = {**os.environ, "XDG_CACHE_HOME": str(cache)}
    return subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def test_two_writers_with_separate_caches_save_into_one_run_at_once(s3_url, tmp_path):
    Store.init(s3_url).close()
    a = _writer(s3_url, [1, 3, 5, 7], "by-a", tmp_path / "cache-a")
    b = _writer(s3_url, [2, 4, 6, 8], "by-b", tmp_path / "cache-b")
    for p in (a, b):
        _, err = p.communicate(timeout=240)
        assert p.returncode == 0, err
    store = Store.open(s3_url)
    assert sorted(i.step for i in store.list("shared")) == list(range(1, 9))
    tags = store.tags("shared")
    assert tags["shared:latest"] == store.resolve("shared/step-8")  # no tag move lost between the writers
    assert tags["shared:best"] == store.resolve("shared/step-8")
    assert tags["shared:by-a"] == store.resolve("shared/step-7") and tags["shared:by-b"] == store.resolve(
        "shared/step-8")
    assert store.verify().ok
    for step in (1, 8):
        sd = store.load_state_dict(f"shared/step-{step}", verify=True)
        want = make_tiny_bert(seed=step).state_dict()
        assert all(torch.equal(sd[k], v) for k, v in want.items())


def test_gc_in_one_process_while_another_saves_loses_no_blob(s3_url, tmp_path, monkeypatch):
    monkeypatch.setenv("CKPT_REMOTE_GC_GRACE_SECONDS", "0")
    store = Store.init(s3_url)
    store.save(make_tiny_bert(seed=100), "other/step-1")
    store.delete("other/step-1")  # garbage for gc to find, so each pass deletes something at first
    writer = _writer(s3_url, [1, 2, 3, 4, 5], "w", tmp_path / "cache-w")
    passes = 0
    while writer.poll() is None:
        Store.open(s3_url).gc(timeout=120)
        passes += 1
    _, err = writer.communicate()
    assert writer.returncode == 0, err
    assert passes >= 1
    store = Store.open(s3_url)
    store.gc()
    assert sorted(i.step for i in store.list("shared")) == [1, 2, 3, 4, 5]
    assert store.verify().ok


def test_a_blob_overwritten_on_the_server_is_named_by_verify_and_never_enters_a_cache(
        s3_url, tmp_path, monkeypatch):
    import obstore

    store = Store.init(s3_url)
    model = make_tiny_bert()
    store.save(model, "bert/step-1")
    warm = Store.open(s3_url)
    good = warm.load_state_dict("bert/step-1")  # this machine's cache now holds the good bytes
    blob = store.manifest("bert/step-1").file("model.safetensors").blobs[-1]
    client = store._repo.backend.remote.client
    key = f"objects/{blob.digest[:2]}/{blob.digest[2:]}"
    original = bytes(obstore.get(client, key).bytes())
    obstore.put(client, key, bytes(b ^ 0xFF for b in original))  # same size, other bytes

    report = store.verify()
    assert [(p.checkpoint, p.file) for p in report.problems] == [("bert/step-1", "model.safetensors")]
    # Another machine (a cache of its own) refuses the bytes and keeps none of them.
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "machine-b"))
    other = Store.open(s3_url)
    with pytest.raises(CorruptObject) as exc:
        other.load_state_dict("bert/step-1", verify=True)
    assert "bert/step-1" in exc.value.message and "model.safetensors" in exc.value.message
    with pytest.raises(CorruptObject):
        other.load("bert/step-1")  # even unverified: every fetched blob is checked on arrival
    cache = other._repo.backend.cache
    assert cache.path(blob.digest) is None
    assert all(d != blob.digest for d, _, _ in cache.entries())
    with pytest.raises(CorruptObject):
        other.export("bert/step-1", tmp_path / "out")
    assert not (tmp_path / "out").exists()
    # The first machine's cache holds only what matched the hash: it still loads the saved weights.
    again = warm.load_state_dict("bert/step-1", verify=True)
    assert all(torch.equal(again[k], v) for k, v in good.items())
    obstore.put(client, key, original)
    assert store.verify().ok
    assert other.load_state_dict("bert/step-1", verify=True).keys() == good.keys()


def _one_error(proc: subprocess.CompletedProcess) -> tuple[str, str]:
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in lines if line.startswith("error:")]
    hints = [line for line in lines if line.startswith("hint:")]
    assert len(errors) == 1 and len(hints) == 1, proc.stderr
    return errors[0], hints[0]


def test_missing_bucket_and_wrong_endpoint_are_one_line_each_with_a_hint(s3_url, monkeypatch):
    error, hint = _one_error(run_ckpt_subprocess("ls", "--store", "s3://no-such-bucket-here/ckpts"))
    assert "s3://no-such-bucket-here/ckpts" in error and "does not exist" in error and "bucket" in hint
    dead = f"http://127.0.0.1:{free_port()}"
    error, hint = _one_error(run_ckpt_subprocess("ls", "--store", s3_url, env={"AWS_ENDPOINT_URL": dead}))
    assert s3_url in error and "cannot reach the server" in error and dead in error and "AWS_ENDPOINT_URL" in hint


@pytest.fixture
def authenticating_server(tmp_path, monkeypatch):
    """A moto_server that checks credentials (its first requests, which create the user, go unchecked)."""
    import boto3

    monkeypatch.setenv("INITIAL_NO_AUTH_ACTION_COUNT", "3")
    server = start_moto()
    monkeypatch.delenv("INITIAL_NO_AUTH_ACTION_COUNT")
    try:
        iam = boto3.client("iam", endpoint_url=server.endpoint, aws_access_key_id="x", aws_secret_access_key="x",
                           region_name="us-east-1")
        iam.create_user(UserName="trainer")
        key = iam.create_access_key(UserName="trainer")["AccessKey"]
        iam.put_user_policy(UserName="trainer", PolicyName="all", PolicyDocument=(
            '{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"*","Resource":"*"}]}'))
        boto3.client("s3", endpoint_url=server.endpoint, aws_access_key_id=key["AccessKeyId"],
                     aws_secret_access_key=key["SecretAccessKey"], region_name="us-east-1").create_bucket(
            Bucket="authbucket")
        point_at(monkeypatch, server.endpoint, tmp_path / "xdg-cache")
        yield server, key["AccessKeyId"], key["SecretAccessKey"]
    finally:
        server.stop()


def test_refused_credentials_are_one_line_with_a_hint_and_never_printed(authenticating_server, tiny_bert_dir):
    server, key_id, secret = authenticating_server
    url = "s3://authbucket/ckpts"
    good = {"AWS_ACCESS_KEY_ID": key_id, "AWS_SECRET_ACCESS_KEY": secret}
    assert run_ckpt_subprocess("init", url, env=good).returncode == 0
    assert run_ckpt_subprocess("save", tiny_bert_dir, "bert/step-1", "--store", url, env=good).returncode == 0
    for env in ({"AWS_ACCESS_KEY_ID": "AKIAWRONGWRONGWRONG1", "AWS_SECRET_ACCESS_KEY": "wrong-secret-value-1"},
                {"AWS_ACCESS_KEY_ID": key_id, "AWS_SECRET_ACCESS_KEY": "wrong-secret-value-2"}):
        proc = run_ckpt_subprocess("ls", "--store", url, env=env)
        error, hint = _one_error(proc)
        assert url in error and "refused the credentials" in error and "AWS_ACCESS_KEY_ID" in hint
        assert env["AWS_SECRET_ACCESS_KEY"] not in proc.stderr + proc.stdout and secret not in proc.stderr
