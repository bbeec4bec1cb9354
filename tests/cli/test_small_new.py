"""Small things a new user met: exit codes of bad SRC folders, one unit system, transformers' own progress output
in `ckpt convert`, and the dependencies the package declares."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
import types

import pytest

from tests.conftest import REPO, run_ckpt_subprocess


@pytest.mark.parametrize("make", ["missing", "empty", "file"])
def test_save_of_a_bad_src_is_a_usage_error(tmp_path, ckpt, make):
    src = tmp_path / "src"
    if make == "empty":
        src.mkdir()
    elif make == "file":
        src.write_text("not a folder")
    for store in (tmp_path / "no-store", tmp_path / "store"):  # before and after the store exists
        if store.name == "store":
            assert ckpt("init", store).code == 0
        res = ckpt("save", src, "x", store=store)
        assert res.code == 2, res.err
        assert res.err.startswith("error: Source")
    assert not (tmp_path / "no-store").exists()


def test_an_empty_folder_is_still_an_invalid_checkpoint_for_the_api(store, tmp_path):
    from ckptstore import InvalidCheckpoint, UsageError

    (tmp_path / "empty").mkdir()
    with pytest.raises(InvalidCheckpoint) as exc:
        store.save(tmp_path / "empty", "x")
    assert isinstance(exc.value, UsageError)


def test_progress_columns_use_binary_units():
    from rich.progress import Progress

    from ckptstore.cli._app import progress_columns

    columns = progress_columns()
    progress = Progress(*columns, disable=True)
    task_id = progress.add_task("saving", total=3 << 30)
    progress.update(task_id, completed=1536 << 20)
    task = progress.tasks[0]
    rendered = " ".join(str(c.render(task)) for c in columns[2:])
    assert "1.5/3.0 GiB" in rendered, rendered
    speed = columns[-1].render(types.SimpleNamespace(finished_speed=None, speed=5 << 20))
    assert str(speed) == "5.0 MiB/s"


def test_convert_keeps_transformers_progress_bars_out_unless_verbose(tmp_path, tiny_bert):
    store = tmp_path / "store"
    folder = tmp_path / "m"
    tiny_bert(cls_name="BertForSequenceClassification").save_pretrained(folder)
    assert run_ckpt_subprocess("save", folder, "m/step-1", "--store", store).returncode == 0
    quiet = run_ckpt_subprocess("convert", "m/step-1", "--dtype", "bf16", "--store", store)
    assert quiet.returncode == 0, quiet.stderr
    assert "Loading weights" not in quiet.stderr and "it/s" not in quiet.stderr
    assert quiet.stderr.startswith("Converted m/step-1 -> m/step-1-bf16")
    loud = run_ckpt_subprocess("convert", "m/step-1", "--dtype", "fp16", "--verbose", "--store", store)
    assert loud.returncode == 0 and "Loading weights" in loud.stderr  # the flag lets them through


def test_pyproject_declares_click_not_typer():
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    names = {d.split(">")[0].split("=")[0].split("<")[0].strip().lower() for d in deps}
    assert "click" in names and "typer" not in names
    code = "import sys, ckptstore.cli; print('typer' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ})
    assert out.stdout.strip() == "False"
