"""`make demo` as a user sees it: no transformers progress bars or load reports unless --verbose, and every
command it echoes can be pasted into a shell (quoted)."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.slow

NOISE = ("Loading weights", "Writing model shards", "LOAD REPORT", "it/s]")


def test_demo_output_is_quiet_and_its_commands_are_quoted(tmp_path):
    env = {**os.environ, "CKPT_STORE": str(tmp_path / "store"), "PYTHONPATH": str(REPO / "src")}
    res = subprocess.run([sys.executable, str(REPO / "demo" / "demo.py")], env=env, cwd=tmp_path,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    output = res.stdout + res.stderr
    assert not [n for n in NOISE if n in output], [line for line in output.splitlines() if any(n in line for n in NOISE)]
    echoed = [line[2:] for line in res.stdout.splitlines() if line.startswith("$ ckpt ")]
    assert any("-m 'as shipped'" in line for line in echoed)
    for line in echoed:
        words = shlex.split(line)  # what a shell would run
        assert words[0] == "ckpt"
    save = next(shlex.split(line) for line in echoed if " minilm/base " in line)
    assert save[save.index("-m") + 1] == "as shipped"
