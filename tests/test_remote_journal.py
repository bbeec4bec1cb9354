"""The change journal of a remote store (real moto_server): `ls` with nothing new costs the same few requests
however many checkpoints the store holds; what another process changed (save, tag move, rename, delete,
annotation) shows up at the next sync; an entry from a clock minutes behind is still seen; what the journal cannot
promise (an entry past the skew window, a writer killed before its entry, a reader idle past the retention) is
caught by the full listing sync it falls back to."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from conftest import make_tiny_bert, run_ckpt_subprocess
from s3server import point_at

from ckptstore import Store
from ckptstore._format.manifest import manifest_id
from ckptstore._repo import journal


def _as(monkeypatch, moto_server, tmp_path, who: str) -> None:
    """Act as machine `who`: its own index and blob cache (XDG_CACHE_HOME)."""
    point_at(monkeypatch, moto_server.endpoint, tmp_path / f"xdg-{who}")


def _env(moto_server, tmp_path, who: str) -> dict[str, str]:
    return {"AWS_ENDPOINT_URL": moto_server.endpoint, "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1", "HF_HUB_OFFLINE": "1",
            "XDG_CACHE_HOME": str(tmp_path / f"xdg-{who}")}


def _ls_cost(url: str) -> tuple[dict[str, int], list[str]]:
    """What a fresh `ckpt ls` sends (open, sync, list), and the names it shows."""
    store = Store.open(url)
    names = [i.name for i in store.list()]
    cost = {k: v for k, v in store.requests.items() if v}
    store.close()
    return cost, names


def _bucket_keys(moto_server, url: str, prefix: str) -> list[str]:
    bucket, _, root = url.split("://", 1)[1].partition("/")
    pages = moto_server.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"{root}/{prefix}")
    return [o["Key"][len(root) + 1:] for page in pages for o in page.get("Contents", [])]


def _fill(moto_server, url: str, template, count: int) -> None:
    """`count` more checkpoints of run `many`, written straight into the bucket (manifest, then name claim) from
    one saved manifest with other names: a store of that size without saving that many models."""
    bucket, _, root = url.split("://", 1)[1].partition("/")
    client = moto_server.client()

    def put(i: int) -> None:
        name = f"many/step-{i}"
        raw = json.loads(template)
        raw["name"], raw["run"], raw["step"] = name, "many", i
        data = json.dumps(raw, sort_keys=True).encode()
        cid = manifest_id(data)
        client.put_object(Bucket=bucket, Key=f"{root}/checkpoints/{cid}.json", Body=data)
        client.put_object(Bucket=bucket, Key=f"{root}/names/many/{name.replace('/', '~')}", Body=f"{cid}\n".encode())

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(put, range(count)))


def test_ls_with_nothing_new_costs_two_requests_with_10_and_with_1200_checkpoints(s3_url, moto_server):
    store = Store.init(s3_url)
    model = make_tiny_bert()
    for step in range(10):
        store.save(model, f"bert/step-{step}")
    template = store._repo.docs.get(f"checkpoints/{store.resolve('bert/step-0')}.json")[0]
    store.close()
    _ls_cost(s3_url)  # this machine's index catches up (it saved them: a few GETs of its own entries)
    small, names = _ls_cost(s3_url)
    assert len(names) == 10
    assert small == {"GET": 1, "LIST": 1}  # store.json, one LIST of the journal's tail

    _fill(moto_server, s3_url, template, 1190)
    # Written behind the store's back (no journal entries): a full sync, every CKPT_JOURNAL_FULL_SYNC_SECONDS,
    # is what finds them; then nothing new is as cheap as before, with 1200 checkpoints.
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CKPT_JOURNAL_FULL_SYNC_SECONDS", "0")
        full, names = _ls_cost(s3_url)
    assert len(names) == 1200 and full["LIST"] >= 5  # the listing sync: more than one page of manifests
    large, names = _ls_cost(s3_url)
    assert len(names) == 1200
    assert large == small


def test_changes_of_another_process_show_up_at_the_next_sync(s3_url, moto_server, tmp_path, monkeypatch,
                                                              tiny_bert_dir):
    store = Store.init(s3_url)
    model = make_tiny_bert()
    for step in (1, 2, 3):
        store.save(model, f"bert/step-{step}", metrics={"eval_loss": 1.0 / step})
    store.tag("bert/step-1", "prod")
    store.close()
    _ls_cost(s3_url)  # the first machine's index is in line; what follows is done by another process
    other = _env(moto_server, tmp_path, "other")

    def ckpt(*args: str) -> None:
        r = run_ckpt_subprocess("--store", s3_url, *args, env=other)
        assert r.returncode == 0, r.stderr

    ckpt("save", str(tiny_bert_dir), "bert/step-4")
    ckpt("tag", "bert/step-2", "prod")
    ckpt("mv", "bert/step-3", "bert/step-30")
    ckpt("rm", "bert/step-1", "--yes")
    ckpt("annotate", "bert/step-2", "--metric", "test_acc=0.91", "-m", "reviewed")

    reader = Store.open(s3_url)
    infos = {i.name: i for i in reader.list()}
    assert sorted(infos) == ["bert/step-2", "bert/step-30", "bert/step-4"]
    assert reader.resolve("bert:prod") == infos["bert/step-2"].id
    assert reader.resolve("bert:latest") == infos["bert/step-4"].id  # a rename keeps the step (3)
    shown = reader.show("bert/step-2")
    assert shown.metrics["test_acc"] == 0.91 and shown.message == "reviewed"
    assert reader.show("bert/step-30").metrics["eval_loss"] == pytest.approx(1 / 3)  # the rename kept its metrics
    assert reader.requests["LIST"] <= 3  # the journal's tail (and the tags of a run that gained a checkpoint)
    # And what the incremental sync made is what a full listing sync makes.
    mine = sorted((i.name, i.id, i.tags, tuple(sorted(i.metrics.items()))) for i in reader.list())
    reader.close()
    with monkeypatch.context() as mp:
        mp.setenv("CKPT_JOURNAL_FULL_SYNC_SECONDS", "0")
        full = Store.open(s3_url)
        assert sorted((i.name, i.id, i.tags, tuple(sorted(i.metrics.items()))) for i in full.list()) == mine
        full.close()


def _skewed(monkeypatch, seconds: float) -> None:
    """Journal entries from now on carry a clock `seconds` behind."""
    original = journal.entry_key
    monkeypatch.setattr(journal, "entry_key",
                        lambda changed, now_ns=None: original(changed, journal.time.time_ns() - int(seconds * 1e9)))


def _saved(url: str, steps: int) -> object:
    """bert/step-1 to step-`steps` saved at `url`, and this machine's index in line with them; returns the model."""
    store = Store.init(url)
    model = make_tiny_bert()
    for step in range(1, steps + 1):
        store.save(model, f"bert/step-{step}")
    store.close()
    _ls_cost(url)
    return model


@pytest.fixture
def other_machine(s3_url, moto_server, tmp_path, monkeypatch):
    """`with other_machine(WHO, behind=S) as writer`: the store as machine WHO opens it (an index and cache of its
    own), its journal clock S seconds behind (negative: ahead); closed at the end of the block."""

    @contextlib.contextmanager
    def open_as(who: str, *, behind: float = 0.0) -> Iterator[Store]:
        with monkeypatch.context() as mp:
            _as(mp, moto_server, tmp_path, who)
            if behind:
                _skewed(mp, behind)
            writer = Store.open(s3_url)
            try:
                yield writer
            finally:
                writer.close()

    return open_as


def test_an_entry_from_a_clock_five_minutes_behind_shows_up(s3_url, moto_server, other_machine):
    model = _saved(s3_url, 2)
    with other_machine("late", behind=300) as writer:
        writer.tag("bert/step-1", "prod")
        writer.save(model, "bert/step-3")
    entries = [journal.parse(k) for k in _bucket_keys(moto_server, s3_url, "journal/")]
    assert any(changed == "refs/tags/bert/prod" for _, changed in entries)
    reader = Store.open(s3_url)
    assert reader.resolve("bert:prod") == reader.resolve("bert/step-1")
    assert reader.resolve("bert:latest") == reader.resolve("bert/step-3")
    assert reader.requests["LIST"] <= 2  # incremental, not the listing sync


def test_what_the_journal_misses_shows_up_at_the_periodic_full_sync(s3_url, moto_server, tmp_path, monkeypatch,
                                                                     other_machine):
    _saved(s3_url, 2)
    # A writer whose clock is 20 minutes behind (past the 10 minute window) ...
    with other_machine("far", behind=1200) as writer:
        writer.tag("bert/step-1", "prod")
    # ... and one killed between its change and the journal entry.
    killed = run_ckpt_subprocess("--store", s3_url, "tag", "bert/step-2", "rc",
                                 env={**_env(moto_server, tmp_path, "killed"), "CKPT_FAILPOINT": "journal.write:kill"})
    assert killed.returncode != 0
    assert not any(c.endswith("/rc") for _, c in map(journal.parse, _bucket_keys(moto_server, s3_url, "journal/")))
    reader = Store.open(s3_url)
    assert set(reader.tags("bert")) == {"bert:latest"}  # the journal does not say: not seen yet
    reader.close()
    monkeypatch.setenv("CKPT_JOURNAL_FULL_SYNC_SECONDS", "0")  # the periodic full sync is due
    reader = Store.open(s3_url)
    assert reader.resolve("bert:prod") == reader.resolve("bert/step-1")
    assert reader.resolve("bert:rc") == reader.resolve("bert/step-2")


def test_a_reader_idle_past_the_journal_retention_falls_back_to_a_full_sync(s3_url, moto_server, monkeypatch,
                                                                            other_machine):
    monkeypatch.setenv("CKPT_JOURNAL_RETENTION_SECONDS", "3")
    monkeypatch.setenv("CKPT_JOURNAL_SKEW_SECONDS", "1")
    model = _saved(s3_url, 1)
    with other_machine("writer") as writer:
        writer.save(model, "bert/step-2")
        writer.tag("bert/step-1", "prod")
        writer.annotate("bert/step-1", metrics={"test_acc": 0.5})
        assert _bucket_keys(moto_server, s3_url, "journal/")
        written = journal.time.time()
        while journal.time.time() < written + 3.2:
            journal.time.sleep(0.2)
        writer.gc()  # trims every entry older than the retention: all of them
        assert _bucket_keys(moto_server, s3_url, "journal/") == []
    reader = Store.open(s3_url)
    assert [i.name for i in reader.list()] == ["bert/step-2", "bert/step-1"]
    assert reader.resolve("bert:prod") == reader.resolve("bert/step-1")
    assert reader.show("bert/step-1").metrics["test_acc"] == 0.5
    assert reader.requests["LIST"] >= 5  # the listing sync, not the (trimmed) journal


def test_an_entry_from_a_clock_ahead_does_not_hide_later_ones(s3_url, other_machine):
    _saved(s3_url, 2)
    with other_machine("ahead", behind=-3600) as writer:  # an hour ahead
        writer.tag("bert/step-1", "prod")
    assert Store.open(s3_url).resolve("bert:prod") == Store.open(s3_url).resolve("bert/step-1")
    with other_machine("right") as writer:
        writer.tag("bert/step-2", "rc")
    reader = Store.open(s3_url)
    assert reader.resolve("bert:rc") == reader.resolve("bert/step-2")
    assert reader.requests["LIST"] == 1  # incremental
