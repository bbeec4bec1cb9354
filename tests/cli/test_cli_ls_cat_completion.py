"""What users asked for next: `ckpt ls --sort`, `ckpt cat`, `ckpt completion`."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import REPO, run_ckpt_subprocess

from ckptstore import Store
from ckptstore.errors import InvalidArgument


@pytest.fixture
def scored(tmp_path, tiny_bert_dir):
    """One run whose checkpoints were saved out of step order, with metrics some of them lack."""
    with Store.init(tmp_path / "store") as store:
        for step, metrics in [(30, {"eval_loss": 0.5, "eval_accuracy": 0.7}), (10, {"eval_loss": 0.9}),
                              (40, {}), (20, {"eval_loss": 0.3, "eval_accuracy": 0.9})]:
            store.save(tiny_bert_dir, f"r/step-{step}", metrics=metrics)
    return tmp_path / "store"


def _names(ckpt, *args) -> list[str]:
    r = ckpt("ls", "r", "--json", *args)
    assert r.code == 0, r.err
    return [c["name"] for c in json.loads(r.out)]


def test_ls_sort(ckpt, scored):
    assert _names(ckpt) == ["r/step-20", "r/step-40", "r/step-10", "r/step-30"]  # newest first, as before
    assert _names(ckpt, "--sort", "created", "--reverse") == ["r/step-30", "r/step-10", "r/step-40", "r/step-20"]
    assert _names(ckpt, "--sort", "step") == ["r/step-10", "r/step-20", "r/step-30", "r/step-40"]
    assert _names(ckpt, "--sort", "step", "--reverse") == ["r/step-40", "r/step-30", "r/step-20", "r/step-10"]
    assert _names(ckpt, "--sort", "name", "--reverse")[0] == "r/step-40"
    # A loss sorts ascending, anything else descending; checkpoints without the metric come last either way.
    assert _names(ckpt, "--sort", "eval_loss") == ["r/step-20", "r/step-30", "r/step-10", "r/step-40"]
    assert _names(ckpt, "--sort", "eval_loss", "--reverse") == ["r/step-10", "r/step-30", "r/step-20", "r/step-40"]
    assert _names(ckpt, "--sort", "eval_accuracy")[:2] == ["r/step-20", "r/step-30"]
    table = ckpt("ls", "--sort", "eval_accuracy").out.splitlines()
    assert table[1].split()[0] == "r/step-20" and table[2].split()[0] == "r/step-30"

    r = ckpt("ls", "r", "--sort", "eval_los")
    assert r.code == 2 and "Did you mean 'eval_loss'?" in r.err
    with Store.open(scored) as store, pytest.raises(InvalidArgument):
        store.list("r", sort="bleu")


def test_ls_sort_sees_annotated_metrics(ckpt, scored):
    with Store.open(scored) as store:
        store.annotate("r/step-40", metrics={"eval_loss": 0.1})
    assert _names(ckpt, "--sort", "eval_loss")[0] == "r/step-40"


def test_cat_prints_a_stored_file_byte_for_byte(ckpt, scored, tiny_bert_dir):
    r = run_ckpt_subprocess("cat", "r/step-10", "config.json", "--store", scored)
    assert r.returncode == 0, r.stderr
    assert r.stdout == (tiny_bert_dir / "config.json").read_text()
    binary = subprocess.run([sys.executable, "-m", "ckptstore", "cat", "r/step-10", "model.safetensors", "--store",
                             str(scored)], capture_output=True, env=os.environ)
    assert binary.returncode == 0 and binary.stdout == (tiny_bert_dir / "model.safetensors").read_bytes()

    r = ckpt("cat", "r/step-10", "confg.json")
    assert r.code == 1 and r.out == ""
    assert "Did you mean 'config.json'?" in r.err and "ckpt show r/step-10" in r.err
    r = ckpt("cat", "r/step-11", "config.json")
    assert r.code == 1 and "Unknown reference" in r.err


def test_completion_scripts_and_the_completion_protocol(tmp_path):
    r = run_ckpt_subprocess("completion", "bash")
    assert r.returncode == 0 and "_CKPT_COMPLETE=bash_complete" in r.stdout and "complete " in r.stdout
    for shell in ("zsh", "fish"):
        r = run_ckpt_subprocess("completion", shell)
        assert r.returncode == 0 and r.stdout.strip(), shell
    assert run_ckpt_subprocess("completion", "tcsh").returncode == 2

    # What bash does on TAB after `ckpt sh`: run ckpt with the protocol's variables and read the candidates.
    env = {**os.environ, "_CKPT_COMPLETE": "bash_complete", "COMP_WORDS": "ckpt sh", "COMP_CWORD": "1",
           "PYTHONPATH": str(REPO / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    done = subprocess.run([sys.executable, "-m", "ckptstore"], env=env, capture_output=True, text=True,
                          cwd=tmp_path, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "plain,show" in done.stdout.splitlines()
