"""Each `ckpt` command's happy path, run in-process through the real click app: data on stdout (JSON parsed as
JSON), messages on stderr, exit code 0."""

from __future__ import annotations

import json

import pytest
from storefiles import blob_path


def _json(result):
    assert result.code == 0, result.err
    return json.loads(result.out)


@pytest.fixture
def two(ckpt, tiny_bert_dir, tiny_bert, tmp_path):
    """tiny/step-1 and tiny/step-2 (a different model, child of step-1) in the default test store."""
    other = tmp_path / "other"
    tiny_bert(seed=1).save_pretrained(other)
    first = _json(ckpt("save", tiny_bert_dir, "tiny/step-1", "--tag", "v1", "--metric", "eval_loss=0.5", "--json"))
    second = _json(
        ckpt("save", other, "tiny/step-2", "--metric", "eval_loss=0.25", "--meta", "lr=0.001", "--meta", "note=hi",
             "--parent", "tiny/step-1", "-m", "second one", "--json")
    )
    return first, second


def test_init_creates_and_then_keeps_a_store(ckpt, tmp_path):
    result = ckpt("init", tmp_path / "s")
    assert result.code == 0 and "Initialized empty store" in result.err and result.out == ""
    assert (tmp_path / "s" / "store.json").is_file()
    again = ckpt("init", tmp_path / "s")
    assert again.code == 0 and "already exists" in again.err
    assert ckpt("init", "--store", tmp_path / "t", "--chunk-bytes", "65536").code == 0
    assert json.loads((tmp_path / "t" / "store.json").read_text())["chunk_bytes"] == 65536


def test_save_reports_what_it_stored(ckpt, two, tiny_bert_dir):
    first, second = two
    assert first["name"] == "tiny/step-1" and first["step"] == 1 and first["tags"] == ["best", "latest", "v1"]
    assert first["metrics"] == {"eval_loss": 0.5}
    assert first["new_bytes"] > 0
    assert first["logical_bytes"] == sum(p.stat().st_size for p in tiny_bert_dir.iterdir())
    assert second["parent"] == first["id"] and second["message"] == "second one"
    assert second["metadata"] == {"lr": 0.001, "note": "hi"}
    again = ckpt("save", tiny_bert_dir, "copy/step-1")  # human output, and nothing new to store
    assert again.code == 0 and again.out == ""
    assert "Saved copy/step-1" in again.err and "0 B new" in again.err


def test_save_says_what_the_run_policy_removed_and_never_counts_it_as_new(ckpt, tiny_bert, tmp_path):
    """A save under a policy prunes right away: the output names what went, and 'new' is what the save wrote."""
    folders = []
    for seed in (0, 1):
        folders.append(tmp_path / f"m{seed}")
        tiny_bert(seed=seed).save_pretrained(folders[-1])
    assert ckpt("save", folders[0], "p/step-1").code == 0
    assert ckpt("policy", "p", "--keep-last", "1").code == 0
    report = json.loads(ckpt("save", folders[1], "p/step-2", "--json").out)
    assert report["pruned"] == ["p/step-1"]
    # Before this fix "new" was the change in stored bytes, which the prune made negative.
    assert 0 < report["new_bytes"] <= sum(f.stat().st_size for f in folders[1].iterdir())
    human = ckpt("save", folders[0], "p/step-3")
    assert human.code == 0 and "removed p/step-2" in human.err and "B new in the store" in human.err
    assert "-" not in human.err.split("B new in the store")[0].rsplit(",", 1)[-1]


def test_save_creates_the_default_store(ckpt, tiny_bert_dir, tmp_path, monkeypatch):
    from ckptstore.cli import main

    monkeypatch.chdir(tmp_path)
    main(["save", str(tiny_bert_dir), "tiny/step-1"])  # returns normally on success
    assert (tmp_path / ".ckpt" / "store.json").is_file()
    monkeypatch.setenv("CKPT_STORE", str(tmp_path / "env-store"))
    main(["save", str(tiny_bert_dir), "tiny/step-1"])
    assert (tmp_path / "env-store" / "store.json").is_file()
    for store in (tmp_path / ".ckpt", tmp_path / "env-store"):
        assert [c["name"] for c in _json(ckpt("ls", "--json", store=store))] == ["tiny/step-1"]


def test_ls(ckpt, two):
    listed = _json(ckpt("ls", "--json"))
    assert [c["name"] for c in listed] == ["tiny/step-2", "tiny/step-1"]
    assert listed[1]["tags"] == ["v1"]
    table = ckpt("ls")
    assert table.code == 0
    lines = table.out.splitlines()
    assert lines[0].split() == ["NAME", "ID", "CREATED", "STEP", "SIZE", "TAGS", "METRICS"]
    assert lines[1].split()[0] == "tiny/step-2" and lines[2].split()[0] == "tiny/step-1"
    assert "v1" in lines[2] and "eval_loss=0.5" in lines[2] and two[0]["id"][:12] in lines[2]
    assert ckpt("ls", "nothing-here", "--json").code == 1  # an unknown run is an error, not an empty list
    assert [c["name"] for c in _json(ckpt("ls", "tiny", "--json"))] == ["tiny/step-2", "tiny/step-1"]


def test_show(ckpt, two, tiny_bert_dir):
    first, second = two
    shown = _json(ckpt("show", "tiny/step-2", "--json"))
    assert shown["id"] == second["id"] and shown["parent"] == first["id"]
    assert shown["model"]["model_type"] == "bert" and shown["model"]["parameters"] > 0
    assert {f["path"] for f in shown["files"]} == {"config.json", "model.safetensors"}
    assert shown["lineage"] == ["tiny/step-1"]
    assert "torch" in shown["environment"] and "transformers" in shown["environment"]
    assert shown["stored_bytes"] >= shown["unshared_bytes"] > 0
    by_tag = _json(ckpt("show", "tiny:v1", "--json"))
    assert by_tag["id"] == first["id"]
    assert _json(ckpt("show", first["id"][:8], "--json"))["name"] == "tiny/step-1"

    human = ckpt("show", "tiny/step-2")
    assert human.code == 0
    for needle in ("tiny/step-2", second["id"], "bert", "eval_loss=0.25", "lr: 0.001", "tiny/step-1",
                   "model.safetensors", "config.json", "second one"):
        assert needle in human.out, needle
    assert "1 blob" in human.out and "1 blobs" not in human.out  # config.json: one blob, counted in the singular
    ckpt("save", tiny_bert_dir, "nostep")
    assert [line.split()[1:] for line in ckpt("show", "nostep").out.splitlines() if line.startswith("step ")] == [["-"]]


def test_export(ckpt, two, tiny_bert_dir, tmp_path, tree_sha256):
    result = ckpt("export", "tiny:v1", tmp_path / "out")
    assert result.code == 0 and "Exported tiny/step-1" in result.err
    assert tree_sha256(tmp_path / "out") == tree_sha256(tiny_bert_dir)
    (tmp_path / "empty").mkdir()
    assert ckpt("export", "tiny/step-1", tmp_path / "empty", "--verify").code == 0  # an empty folder is fine
    assert tree_sha256(tmp_path / "empty") == tree_sha256(tiny_bert_dir)


def test_tag_and_untag(ckpt, two):
    first, second = two
    result = ckpt("tag", "tiny/step-2", "prod")
    assert result.code == 0 and "tiny:prod" in result.err
    assert _json(ckpt("show", "tiny:prod", "--json"))["id"] == second["id"]
    moved = ckpt("tag", "tiny/step-1", "prod")
    assert moved.code == 0 and "Moved tiny:prod from tiny/step-2 to tiny/step-1" in moved.err
    assert _json(ckpt("show", "tiny:prod", "--json"))["id"] == first["id"]
    assert ckpt("untag", "tiny:prod").code == 0
    assert ckpt("show", "tiny:prod").code == 1
    assert _json(ckpt("show", "tiny:v1", "--json"))["id"] == first["id"]


def test_rm(ckpt, two):
    first, second = two
    dry = _json(ckpt("rm", "tiny/step-2", "--dry-run", "--json"))
    assert dry["executed"] is False and dry["checkpoints"] == ["tiny/step-2"] and dry["reclaimable_bytes"] > 0
    assert len(_json(ckpt("ls", "--json"))) == 2
    done = ckpt("rm", "tiny/step-2")
    assert done.code == 0 and "Removed tiny/step-2" in done.err
    assert [c["name"] for c in _json(ckpt("ls", "--json"))] == ["tiny/step-1"]
    gone = _json(ckpt("rm", "tiny:v1", "--json"))
    # The run's last checkpoint: its latest and best go with it (before, they moved to it from tiny/step-2).
    assert gone["executed"] is True and gone["tags"] == ["tiny:best", "tiny:latest", "tiny:v1"]
    assert gone["ids"] == [first["id"]]
    assert _json(ckpt("ls", "--json")) == []


def test_verify(ckpt, two):
    report = _json(ckpt("verify", "--json"))
    assert report["ok"] is True and report["checkpoints"] == 2 and report["problems"] == [] and report["deep"]
    one = ckpt("verify", "tiny/step-1")
    assert one.code == 0 and "OK" in one.err and "Checked 1 checkpoint, " in one.err
    assert "Checked 2 checkpoints, " in ckpt("verify").err
    assert _json(ckpt("verify", "--quick", "--json"))["deep"] is False


def test_verify_names_the_damaged_checkpoint_and_file(ckpt, two, tmp_path):
    from ckptstore import Store

    with Store.open(tmp_path / "store") as store:
        shared = set(store.manifest("tiny/step-1").blob_refs())
        entry = store.manifest("tiny/step-2").file("model.safetensors")
        blob = blob_path(store, next(b.digest for b in entry.blobs if b.digest not in shared))
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF
    blob.write_bytes(bytes(data))
    result = ckpt("verify")
    assert result.code == 1
    assert "tiny/step-2: model.safetensors: corrupt blob" in result.out
    assert "1 damaged:" in result.err and "tiny/step-1" not in result.err
    report = json.loads(ckpt("verify", "--json").out)
    assert report["damaged"] == ["tiny/step-2"]
    assert [(p["checkpoint"], p["file"]) for p in report["problems"]] == [("tiny/step-2", "model.safetensors")]
    assert ckpt("verify", "tiny/step-1").code == 0


def test_gc(ckpt, two):
    assert ckpt("rm", "tiny/step-2").code == 0
    dry = _json(ckpt("gc", "--dry-run", "--json"))
    assert dry["executed"] is False and dry["blobs_removed"] > 0 and dry["bytes_freed"] > 0
    done = _json(ckpt("gc", "--json"))
    assert done["executed"] is True and done["bytes_freed"] == dry["bytes_freed"]
    assert _json(ckpt("gc", "--json"))["bytes_freed"] == 0
    human = ckpt("gc")
    assert human.code == 0 and "Reclaimed 0 B in 0 blobs" in human.err
    assert _json(ckpt("verify", "--json"))["ok"] is True


def test_du(ckpt, two, tiny_bert_dir):
    assert ckpt("save", tiny_bert_dir, "again/step-1").code == 0
    usage = _json(ckpt("du", "--json"))
    size = two[0]["logical_bytes"]
    assert usage["checkpoints"] == 3
    assert usage["logical_bytes"] == size + two[1]["logical_bytes"] + size
    assert usage["stored_bytes"] < usage["logical_bytes"] and usage["saved_bytes"] >= size
    assert {r["run"] for r in usage["runs"]} == {"tiny", "again"}
    human = ckpt("du")
    assert human.code == 0 and "total: 3 checkpoints" in human.out and "again" in human.out


def test_fsck(ckpt, two):
    report = _json(ckpt("fsck", "--json"))
    assert report["ok"] is True and report["reindexed"] is False and report["deep"] is False
    rebuilt = ckpt("fsck", "--reindex")
    assert rebuilt.code == 0 and "Rebuilt the index: 2 checkpoints" in rebuilt.err


def test_help_lists_every_command_and_version(capsys):
    from ckptstore.cli import main

    main(["--help"])  # returns (exit code 0) like any successful command
    listed = capsys.readouterr().out.split("Commands:")[1].split()
    for cmd in ("init", "save", "ls", "show", "export", "tag", "untag", "rm", "verify", "gc", "du", "fsck"):
        assert cmd in listed, cmd
    main(["--version"])
    assert "0.1.0" in capsys.readouterr().out
