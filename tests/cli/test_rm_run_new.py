"""`ckpt rm RUN`: every checkpoint of a run, with the plan printed first and --yes or a confirmation asked on the
terminal; --dry-run only prints the plan."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys

import pytest


@pytest.fixture
def two_runs(store, tiny_bert):
    model = tiny_bert()
    for i in (1, 2, 3):
        store.save(model, f"r/step-{i}", metrics={"eval_loss": 1.0 / i})
    store.tag("r/step-2", "v1")
    store.save(tiny_bert(seed=1), "other/step-1")
    store.save(tiny_bert(seed=2), "solo")  # a one-segment name: checkpoint 'solo' of run 'solo'
    return store


def _names(store) -> set[str]:
    store.reindex()
    return {c.name for c in store.list()}


def test_dry_run_prints_the_plan_and_removes_nothing(two_runs, ckpt):
    res = ckpt("rm", "r", "--dry-run", store=two_runs.root)
    assert res.code == 0, res.err
    assert all(f"Would remove r/step-{i}" in res.err for i in (1, 2, 3)) and "r:v1" in res.err
    assert _names(two_runs) == {"r/step-1", "r/step-2", "r/step-3", "other/step-1", "solo"}
    plan = json.loads(ckpt("rm", "r", "--dry-run", "--json", store=two_runs.root).out)
    assert sorted(plan["checkpoints"]) == ["r/step-1", "r/step-2", "r/step-3"] and plan["executed"] is False


def test_whole_run_without_yes_and_no_terminal_is_refused_after_the_plan(two_runs, ckpt):
    res = ckpt("rm", "r", store=two_runs.root)
    assert res.code == 2
    assert res.err.index("Would remove r/step-1") < res.err.index("error:")
    assert "--yes" in res.err
    assert len(_names(two_runs)) == 5


def test_yes_removes_every_checkpoint_of_the_run_and_its_tags(two_runs, ckpt):
    res = ckpt("rm", "r", "--yes", store=two_runs.root)
    assert res.code == 0, res.err
    assert _names(two_runs) == {"other/step-1", "solo"}
    two_runs.refresh()
    assert not two_runs.tags("r")


def test_a_checkpoint_name_is_still_one_checkpoint(two_runs, ckpt):
    assert ckpt("rm", "solo", store=two_runs.root).code == 0  # a name: no confirmation needed
    assert "solo" not in _names(two_runs)


def test_unknown_run_is_an_error(two_runs, ckpt):
    res = ckpt("rm", "rr", "--yes", store=two_runs.root)
    assert res.code == 1 and "Unknown reference 'rr'" in res.err


@pytest.mark.parametrize("answer, removed", [("n", False), ("y", True)])
def test_confirmation_on_a_terminal(two_runs, answer, removed):
    two_runs.close()
    leader, follower = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "ckptstore", "rm", "r", "--store", str(two_runs.root)],
                            stdin=follower, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    os.close(follower)
    os.write(leader, f"{answer}\n".encode())
    out, err = proc.communicate(timeout=60)
    os.close(leader)
    assert proc.returncode == 0, err
    assert "Would remove r/step-1" in err and "Remove every checkpoint of run r (3 checkpoints)?" in err
    from ckptstore import Store

    names = {c.name for c in Store.open(two_runs.root).list()}
    assert ("r/step-1" not in names) is removed
