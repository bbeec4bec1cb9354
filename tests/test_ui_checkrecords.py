"""The web view shows what validate and verify recorded: the checkpoint page its validation and verify result, the
store page the last store-wide verify with its age (through Starlette's test client, on a real store)."""

from __future__ import annotations

import html
import re

import pytest
import torch
from storefiles import blob_path

pytest.importorskip("starlette")
pytest.importorskip("httpx")


@pytest.fixture
def client(store, tiny_bert):
    from starlette.testclient import TestClient

    from ckptstore.ui import create_app

    store.save(tiny_bert(seed=0), "run/step-1", metadata={"lr": 0.1})
    model = tiny_bert(seed=1)
    with torch.no_grad():
        model.pooler.dense.bias[0] = float("inf")
    store.save(model, "run/step-2")
    return TestClient(create_app(store))


def _text(page: str) -> str:
    return " ".join(html.unescape(re.sub(r"<[^>]+>", "", page)).split())


def test_nothing_recorded_says_which_command_to_run(client):
    d = client.get("/api/checkpoints/run/step-1").json()
    assert d["validation"] is None and d["verification"] is None
    assert d["commands"]["verify"] == "ckpt verify run/step-1"
    page = _text(client.get("/c/run/step-1").text)
    assert "No validation recorded for this checkpoint. Run ckpt validate run/step-1" in page
    assert "No verify recorded for this checkpoint. Run ckpt verify run/step-1" in page
    assert client.get("/api/store").json()["last_verify"] is None
    assert "No verify result recorded" in _text(client.get("/store").text)


def test_checkpoint_shows_recorded_validation_and_verify(client, store):
    assert store.validate("run/step-1").ok and not store.validate("run/step-2").ok
    store.verify("run/step-1")
    d = client.get("/api/checkpoints/run/step-1").json()
    assert d["validation"]["passed"] is True and d["validation"]["checks"] == ["loads", "finite", "forward"]
    assert d["validation"]["age"] == "just now"
    assert d["verification"]["passed"] is True and d["verification"]["deep"] is True
    assert d["metadata"]["lr"] == 0.1
    page = client.get("/c/run/step-1").text
    validation = re.search(r'<p id="validation">(.*?)</p>', page, re.S).group(1)
    assert ">passed<" in validation and "loads, finite, forward" in validation and "just now" in validation
    verification = re.search(r'<p id="verification">(.*?)</p>', page, re.S).group(1)
    assert ">passed<" in verification and "every blob re-hashed" in verification
    # The records have their own sections; the metadata table keeps the user's own.
    metadata = re.search(r'<table class="kv" id="metadata">(.*?)</table>', page, re.S).group(1)
    assert "lr" in metadata and "validation" not in metadata and "verification" not in metadata

    bad = client.get("/api/checkpoints/run/step-2").json()["validation"]
    assert bad["passed"] is False and bad["errors"] == ["tensor 'pooler.dense.bias' contains 1 Inf"]
    page = _text(client.get("/c/run/step-2").text)
    assert "FAILED" in page and "error: tensor 'pooler.dense.bias' contains 1 Inf" in page


def test_store_page_shows_the_last_verify_with_its_age_and_the_damaged_checkpoint(client, store):
    store.verify()
    s = client.get("/api/store").json()["last_verify"]
    assert s["passed"] is True and s["checkpoints"] == 2 and s["age"] == "just now"
    own = sorted({b.digest for f in store.manifest("run/step-2").files for b in f.blobs}
                 - {b.digest for f in store.manifest("run/step-1").files for b in f.blobs})
    path = blob_path(store, own[0])
    data = path.read_bytes()
    path.write_bytes(bytes([data[0] ^ 1]) + data[1:])
    assert not store.verify().ok
    s = client.get("/api/store").json()["last_verify"]
    assert s["passed"] is False and s["damaged"] == ["run/step-2"]
    page = client.get("/store").text
    last = re.search(r'<p id="last-verify">(.*?)</p>', page, re.S).group(1)
    assert ">FAILED<" in last and "2 checkpoints" in last and "just now" in last and "1 problem" in last and "1 problems" not in last
    assert '<a class="damaged" href="/c/run/step-2">run/step-2</a>' in page


def test_age_in_words():
    from ckptstore.ui.data import _age

    assert [_age(s) for s in (5, 60, 61 * 60, 2 * 86400 + 5)] == ["just now", "1 minute ago", "1 hour ago",
                                                                 "2 days ago"]


def test_a_users_own_validation_metadata_stays_metadata(store, tiny_bert):
    from starlette.testclient import TestClient

    from ckptstore.ui import create_app

    store.save(tiny_bert(), "run/step-1", metadata={"validation": "by hand, ana", "zeta": 1, "alpha": 2})
    client = TestClient(create_app(store))
    assert client.get("/api/checkpoints/run/step-1").json()["validation"] is None
    page = client.get("/c/run/step-1").text
    metadata = re.search(r'<table class="kv" id="metadata">(.*?)</table>', page, re.S).group(1)
    assert "by hand, ana" in metadata
    assert metadata.index("zeta") < metadata.index("alpha")  # in the order saved, as before
    assert "No validation recorded for this checkpoint" in _text(page)
