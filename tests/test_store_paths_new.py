"""Where a store is: a file given as the store, a mistyped --store that save would quietly create, and URLs
(ftp://...) that used to become a local folder named 's3:'."""

from __future__ import annotations

import pytest

from ckptstore import Store
from ckptstore.errors import InvalidArgument


def test_a_file_given_as_the_store_is_called_a_file(ckpt, tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("not a store")
    r = ckpt("--store", afile, "ls")
    assert r.code == 2, r.err
    assert "is a file, not a store" in r.err
    assert "ckpt init" not in r.err.split("hint:")[0]  # init of a file fails: do not suggest it
    with pytest.raises(InvalidArgument, match="is a file, not a store"):
        Store.open(afile)
    assert afile.read_text() == "not a store"


def test_save_says_when_it_creates_a_store(ckpt, tmp_path, tiny_bert_dir):
    typo = tmp_path / "stroe"
    r = ckpt("save", tiny_bert_dir, "bert/step-1", "--store", typo)
    assert r.code == 0, r.err
    assert f"Created a new store at {typo}" in r.err
    r = ckpt("save", tiny_bert_dir, "bert/step-2", "--store", typo)
    assert r.code == 0 and "Created a new store" not in r.err, r.err


@pytest.mark.parametrize("url", ["ftp://bucket/x", "file:///data/ckpts"])
def test_a_url_as_the_store_is_a_usage_error_and_creates_nothing(url, ckpt, tmp_path, monkeypatch, tiny_bert_dir):
    monkeypatch.chdir(tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    for args in (("ls",), ("init",), ("save", tiny_bert_dir, "bert/step-1")):
        r = ckpt("--store", url, *args) if args[0] != "init" else ckpt("init", url)
        assert r.code == 2, (args, r.err)
        assert "is a URL" in r.err and "Traceback" not in r.err, (args, r.err)
    monkeypatch.setenv("CKPT_STORE", url)
    from ckptstore.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["save", str(tiny_bert_dir), "bert/step-1"])
    assert exit_.value.code == 2
    for call in (Store.open, Store.init, lambda p: Store.open(p, create=True)):
        with pytest.raises(InvalidArgument, match="URL"):
            call(url)
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no 's3:' folder
