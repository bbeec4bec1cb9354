"""Bad input on the command line: one `error:` line saying what is wrong and one `hint:` line saying what to do,
exit code 2 for a command called wrongly and 1 for a failure, no traceback (unless --debug), and nothing stored."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ckptstore import CheckpointNotFound
from storefiles import blob_path


def _snapshot(root: Path) -> dict[str, int]:
    """Every file of the store that holds data (the index is a cache and may be touched), with its size."""
    return {
        p.relative_to(root).as_posix(): p.stat().st_size
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.name.startswith("index.sqlite") and "locks" not in p.parts
    }


def _assert_one_line_error(result, code: int, *needles: str) -> str:
    assert result.code == code, (result.code, result.err)
    assert result.out == ""  # errors never go to stdout, where scripts read data
    lines = result.err.strip().splitlines()
    assert len(lines) == 2, result.err
    assert lines[0].startswith("error: ") and lines[1].startswith("hint: "), result.err
    assert len(lines[1]) > len("hint: ")
    assert "Traceback" not in result.err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


@pytest.fixture
def stored(ckpt, tiny_bert_dir, tmp_path):
    """A store holding tiny/step-1 (tagged v1); returns its root."""
    assert ckpt("save", tiny_bert_dir, "tiny/step-1", "--tag", "v1").code == 0
    return tmp_path / "store"


@pytest.fixture
def truncated_dir(tiny_bert_dir, tmp_path):
    bad = tmp_path / "truncated"
    bad.mkdir()
    (bad / "config.json").write_bytes((tiny_bert_dir / "config.json").read_bytes())
    (bad / "model.safetensors").write_bytes((tiny_bert_dir / "model.safetensors").read_bytes()[:5000])
    return bad


@pytest.fixture
def no_config_dir(tiny_bert_dir, tmp_path):
    bad = tmp_path / "no-config"
    bad.mkdir()
    (bad / "model.safetensors").write_bytes((tiny_bert_dir / "model.safetensors").read_bytes())
    return bad


def test_save_missing_source(ckpt, stored, tmp_path):
    before = _snapshot(stored)
    line = _assert_one_line_error(ckpt("save", tmp_path / "nope", "tiny/step-2"), 2, "does not exist", "nope")
    assert "Source" in line
    assert _snapshot(stored) == before


def test_save_weights_without_config_is_an_incomplete_checkpoint(ckpt, stored, no_config_dir):
    before = _snapshot(stored)
    _assert_one_line_error(ckpt("save", no_config_dir, "tiny/step-2"), 1, "Incomplete checkpoint", "config.json")
    assert _snapshot(stored) == before


def test_save_truncated_safetensors(ckpt, stored, truncated_dir):
    before = _snapshot(stored)
    _assert_one_line_error(ckpt("save", truncated_dir, "tiny/step-2"), 1, "model.safetensors", "truncated")
    assert _snapshot(stored) == before
    assert json.loads(ckpt("ls", "--json").out)[0]["name"] == "tiny/step-1"


@pytest.mark.parametrize("name", ["../x", "/abs", "a//b", "run/..", "has space"])
def test_save_invalid_name(ckpt, stored, tiny_bert_dir, name):
    before = _snapshot(stored)
    _assert_one_line_error(ckpt("save", tiny_bert_dir, name), 2, "Invalid name", repr(name))
    assert _snapshot(stored) == before


@pytest.mark.parametrize("case", ["missing", "no_config", "truncated", "bad_name", "bad_tag", "bad_metric"])
def test_refused_save_does_not_create_a_store(ckpt, tmp_path, tiny_bert_dir, no_config_dir, truncated_dir, case):
    args = {
        "missing": (tmp_path / "nope", "tiny/x"),
        "no_config": (no_config_dir, "tiny/x"),
        "truncated": (truncated_dir, "tiny/x"),
        "bad_name": (tiny_bert_dir, "../x"),
        "bad_tag": (tiny_bert_dir, "tiny/x", "--tag", "a:b"),
        "bad_metric": (tiny_bert_dir, "tiny/x", "--metric", "loss=low"),
    }[case]
    fresh = tmp_path / "fresh-store"
    _assert_one_line_error(ckpt("save", *args, store=fresh), 1 if case in ("no_config", "truncated") else 2)
    assert not fresh.exists()
    assert ckpt("save", tiny_bert_dir, "tiny/x", store=fresh).code == 0  # good input still creates it


def test_save_existing_name(ckpt, stored, tiny_bert_dir):
    before = _snapshot(stored)
    _assert_one_line_error(ckpt("save", tiny_bert_dir, "tiny/step-1"), 1, "already stored")
    assert _snapshot(stored) == before


@pytest.mark.parametrize(
    "option, code",
    [(("--metric", "loss=high"), 2), (("--metric", "loss=nan"), 2), (("--metric", "loss"), 2), (("--meta", "=1"), 2),
     (("--tag", "a/b"), 2), (("--parent", "tiny/step-9"), 1)],
)
def test_save_bad_option_values(ckpt, stored, tiny_bert_dir, option, code):
    before = _snapshot(stored)
    _assert_one_line_error(ckpt("save", tiny_bert_dir, "tiny/step-2", *option), code)
    assert _snapshot(stored) == before


@pytest.mark.parametrize(
    "args",
    [("show", "tiny/step-2"), ("export", "tiny/step-2", "DEST"), ("rm", "tiny/step-2"), ("tag", "tiny/step-2", "t"),
     ("verify", "tiny/step-2")],
)
def test_unknown_reference_suggests_a_name(ckpt, stored, tmp_path, args):
    before = _snapshot(stored)
    args = tuple(str(tmp_path / "dest") if a == "DEST" else a for a in args)
    line = _assert_one_line_error(ckpt(*args), 1, "Unknown reference 'tiny/step-2'", "Did you mean 'tiny/step-1'")
    assert "Did you mean" in line
    assert _snapshot(stored) == before
    assert not (tmp_path / "dest").exists()


def test_unknown_tag_suggests_the_runs_tags(ckpt, stored):
    _assert_one_line_error(ckpt("show", "tiny:v2"), 1, "Unknown reference 'tiny:v2'", "'tiny:v1'")
    _assert_one_line_error(ckpt("untag", "tiny:v2"), 1, "tiny:v2")


def test_ambiguous_id_prefix_lists_the_candidates(ckpt, ambiguous_pair, tmp_path):
    prefix, ((name1, id1), (name2, id2)) = ambiguous_pair
    before = _snapshot(tmp_path / "store")
    for args in (("show", prefix), ("rm", prefix), ("export", prefix, str(tmp_path / "dest"))):
        line = _assert_one_line_error(ckpt(*args), 1, "ambiguous", prefix)
        for name, cid in ((name1, id1), (name2, id2)):
            assert name in line and cid[:12] in line
    assert _snapshot(tmp_path / "store") == before
    assert not (tmp_path / "dest").exists()


def test_export_into_a_non_empty_folder(ckpt, stored, tmp_path):
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "keep.txt").write_text("mine")
    _assert_one_line_error(ckpt("export", "tiny/step-1", dest), 2, "not empty", str(dest))
    assert [p.name for p in dest.iterdir()] == ["keep.txt"] and (dest / "keep.txt").read_text() == "mine"
    # A file in the way is refused as what it is.
    _assert_one_line_error(ckpt("export", "tiny/step-1", dest / "keep.txt"), 2, "is a file, not a folder")


def test_read_commands_without_a_store(ckpt, tmp_path):
    for args in (("ls",), ("show", "x/y"), ("du",), ("verify",), ("gc",), ("fsck",)):
        result = ckpt(*args, store=tmp_path / "nowhere")
        _assert_one_line_error(result, 1, "No checkpoint store", "nowhere")
        assert "ckpt init" in result.err
    assert not (tmp_path / "nowhere").exists()


def test_untag_needs_run_colon_tag(ckpt, stored):
    _assert_one_line_error(ckpt("untag", "v1"), 2, "RUN:TAG")


def test_click_usage_errors_exit_2_without_traceback(ckpt, stored):
    for args in (("save",), ("show",), ("ls", "--bogus"), ("bogus-command",), ("ls", "--debug", "--bogus"),
                 ("show", "--debug")):
        result = ckpt(*args)
        assert result.code == 2, args
        assert "Traceback" not in result.err and result.err.strip()


def test_store_and_debug_options_also_go_before_the_command(ckpt, stored, tmp_path):
    """`ckpt --store PATH ls`, as `git -C PATH log`: the same store as `ckpt ls --store PATH`."""
    before = ckpt("--store", stored, "ls", "--json")
    assert before.code == 0 and [c["name"] for c in json.loads(before.out)] == ["tiny/step-1"]
    assert ckpt("--store", stored, "--debug", "ls", "--json").out == before.out
    # The option after the command wins over the one before it.
    assert ckpt("--store", tmp_path / "nowhere", "ls", "--json", "--store", stored).out == before.out
    assert ckpt("--store", tmp_path / "new", "init").code == 0 and (tmp_path / "new" / "store.json").is_file()


def test_debug_shows_the_traceback(ckpt, stored, tmp_path):
    from ckptstore.cli import main

    with pytest.raises(CheckpointNotFound):
        main(["show", "tiny/step-2", "--store", str(tmp_path / "store"), "--debug"])


def test_rm_with_one_unknown_reference_removes_nothing(ckpt, stored):
    before = _snapshot(stored)
    _assert_one_line_error(ckpt("rm", "tiny/step-1", "tiny/nope"), 1, "Unknown reference 'tiny/nope'")
    assert _snapshot(stored) == before
    assert [c["name"] for c in json.loads(ckpt("ls", "--json").out)] == ["tiny/step-1"]


def test_export_of_a_damaged_checkpoint_writes_nothing(ckpt, stored, tmp_path):
    from ckptstore import Store

    with Store.open(stored) as store:
        blob = blob_path(store, store.manifest("tiny/step-1").file("model.safetensors").blobs[-1].digest)
    data = bytearray(blob.read_bytes())
    data[-1] ^= 0xFF
    blob.write_bytes(bytes(data))
    _assert_one_line_error(
        ckpt("export", "tiny/step-1", tmp_path / "out", "--verify"), 1, "tiny/step-1", "model.safetensors", "damaged"
    )
    assert not (tmp_path / "out").exists()


def test_an_os_error_is_still_one_line(ckpt, stored, tmp_path):
    (tmp_path / "a-file").write_text("x")
    result = ckpt("export", "tiny/step-1", tmp_path / "a-file" / "sub")  # a folder inside a file
    assert result.code in (1, 2)
    _assert_one_line_error(result, result.code, "a-file")
