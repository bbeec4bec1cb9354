"""Start-up cost: torch and transformers take ~1.3 s to import, so only the commands that build tensors or models
may import them. Each command runs as a real process, and the process reports what it imported."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

HEAVY = ("torch", "transformers")

# Runs the real CLI entry point, then prints which heavy modules the process imported (sys.modules at exit).
WRAPPER = """
import json, sys
from ckptstore.cli import main
code = 0
try:
    main(sys.argv[1:])
except SystemExit as exc:
    code = exc.code
sys.stderr.write("HEAVY=" + json.dumps(sorted(m for m in %r if m in sys.modules)) + "\\n")
sys.exit(code)
""" % (HEAVY,)


def _run(args: list[str], cwd) -> tuple[int, list[str], str]:
    proc = subprocess.run(
        [sys.executable, "-c", WRAPPER, *args], cwd=cwd, capture_output=True, text=True, timeout=120,
        env={**os.environ},
    )
    line = [ln for ln in proc.stderr.splitlines() if ln.startswith("HEAVY=")][-1]
    return proc.returncode, json.loads(line[len("HEAVY="):]), proc.stderr


def test_import_ckptstore_and_cli_does_not_import_torch_or_transformers():
    code = (
        "import sys, ckptstore, ckptstore.cli\n"
        "from ckptstore import Store, RetentionPolicy, CkptError, DiffReport, ValidationReport\n"
        f"print([m for m in {HEAVY!r} if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]"


def test_checkpoint_manager_still_importable_from_the_package():
    code = "from ckptstore import CheckpointManager; import ckptstore, sys; print(CheckpointManager.__name__, 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.split() == ["CheckpointManager", "True"]
    import ckptstore

    assert "CheckpointManager" in ckptstore.__all__ and "CheckpointManager" in dir(ckptstore)


@pytest.mark.parametrize(
    "args",
    [
        ["--help"],
        ["ls"],
        ["ls", "--json"],
        ["show", "t/step-1"],
        ["du"],
        ["verify"],
        ["tag", "t/step-1", "v1"],
        ["gc", "--dry-run"],
        ["log", "t"],
        ["export", "t/step-1", "exported"],
    ],
    ids=lambda a: " ".join(a),
)
def test_read_only_commands_do_not_import_torch(tmp_path, tiny_bert_dir, args):
    store = tmp_path / "store"
    code, heavy, err = _run(["save", str(tiny_bert_dir), "t/step-1", "--store", str(store)], tmp_path)
    assert code == 0, err
    code, heavy, err = _run([*args, "--store", str(store)] if args != ["--help"] else args, tmp_path)
    assert code == 0, err
    assert heavy == [], f"ckpt {' '.join(args)} imported {heavy}"


def test_save_of_a_folder_does_not_import_torch(tmp_path, tiny_bert_dir):
    code, heavy, err = _run(["save", str(tiny_bert_dir), "t/step-1", "--store", str(tmp_path / "store")], tmp_path)
    assert code == 0, err
    assert heavy == []
