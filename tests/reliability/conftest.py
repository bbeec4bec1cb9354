"""Fixtures of the reliability suite, and its two modes.

Default mode runs every test with small counts (the whole folder in well under 150 s on 2 cores, for CI).
Long mode, ``CKPT_LONG=1 pytest tests/reliability`` or ``pytest tests/reliability --long``, runs the counts the
issue asks for (>= 500 kills, >= 1000 corruptions, ...). Both print the figures at the end of the run, and write them
to $CKPT_FIGURES_OUT/reliability-<mode>.json and .md when CKPT_FIGURES_OUT names a folder (bench/results for the
figures README quotes).
(``--long`` is only known when pytest is pointed at this folder; the environment variable works from anywhere.)
"""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path

import pytest

from . import _figures
from ._harness import ForkServer, sha256_tree


def pytest_addoption(parser):
    parser.addoption("--long", action="store_true", default=False, help="reliability suite: run the big counts")


def _long(config) -> bool:
    try:
        flag = config.getoption("--long")
    except ValueError:
        flag = False
    return bool(flag) or os.environ.get("CKPT_LONG", "") not in ("", "0")


class Scale:
    """Counts for one mode: `pick(default, long)`."""

    def __init__(self, long: bool) -> None:
        self.long = long

    def pick(self, default: int, long: int) -> int:
        return long if self.long else default


@pytest.fixture(scope="session")
def scale(request) -> Scale:
    return Scale(_long(request.config))


@pytest.fixture(scope="session")
def figure():
    """figure(title, text, data=None): a line for the summary printed at the end of the run (and for the figures
    file written when CKPT_FIGURES_OUT names a folder: see _figures.py)."""
    return _figures.record


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    _figures.report(terminalreporter, exitstatus, "long" if _long(config) else "default")


@pytest.fixture(scope="session")
def fast_tmp(tmp_path_factory):
    """A scratch folder on tmpfs (/dev/shm) where there is one, else under pytest's tmp folder.

    Kill, corruption and concurrency tests do thousands of fsyncs whose durability they do not test (SIGKILL
    leaves the page cache intact); on a disk shared with other jobs each costs milliseconds, on tmpfs nothing."""
    import tempfile

    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        path = Path(tempfile.mkdtemp(prefix="ckpt-reliability-", dir=shm))
        yield path
        shutil.rmtree(path, ignore_errors=True)
    else:
        yield tmp_path_factory.mktemp("fast")


@pytest.fixture
def fast_path(fast_tmp, request) -> Path:
    """Like tmp_path, on tmpfs when there is one."""
    import tempfile

    path = Path(tempfile.mkdtemp(prefix=request.node.name.replace("/", "_")[:40] + "-", dir=fast_tmp))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def forkserver(tmp_path_factory):
    server = ForkServer(tmp_path_factory.mktemp("forkserver"))
    yield server
    server.close()


@pytest.fixture(scope="session")
def sources(tmp_path_factory) -> list[Path]:
    """Six checkpoint folders of one tiny BERT as training would produce them: each changes a few tensors of the
    previous one (so most tensor blobs are shared and dedup matters) and carries its own optimizer.pt bytes."""
    import torch

    from conftest import make_tiny_bert

    root = tmp_path_factory.mktemp("sources")
    model = make_tiny_bert(seed=0)
    rng = random.Random(0)
    out = []
    for i in range(6):
        with torch.no_grad():
            model.pooler.dense.bias.add_(1.0)
            model.encoder.layer[i % 2].output.dense.weight[0].add_(0.5)
        path = root / f"ckpt-{i}"
        model.save_pretrained(path)
        (path / "optimizer.pt").write_bytes(rng.randbytes(20_000 + 1000 * i))
        (path / "trainer_state.json").write_text(f'{{"global_step": {i + 1}}}\n')
        out.append(path)
    return out


@pytest.fixture(scope="session")
def source_digests(sources) -> dict[Path, dict[str, str]]:
    return {p: sha256_tree(p) for p in sources}


def copy_store(src: Path, dest: Path) -> Path:
    shutil.copytree(src, dest, symlinks=True)
    return dest


def pytest_collection_modifyitems(config, items):
    # These tests save the same six training folders (each with a trainer_state.json) under whatever names suit the
    # scenario; the step-mismatch warning a user would get for that is beside their point (crash and I/O safety).
    here = Path(__file__).parent
    mark = pytest.mark.filterwarnings("ignore::ckptstore.errors.StepMismatchWarning")
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(mark)
