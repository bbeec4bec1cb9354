"""Crash safety of `ckpt save`: the real command, in a real process, killed with SIGKILL in the middle of its write.

Two campaigns run side by side, each on its own store holding ~44 MB BERT checkpoints (1 MiB chunks: a save writes
about sixty blobs); each save is of a new variant of the model, so every blob it writes is new:

- killed at each named step of the write path (CKPT_FAILPOINT=<step>:kill, src/ckptstore/_core/failpoints.py);
- killed at a random moment after the save's first blob appears in tmp/, then rerun (as a user would) until it
  completes, so reruns meet the blobs and temporary files the killed runs left.

Only kills inside the command count: each child records when `main` started and returned and the last failpoint it
passed (tests/reliability/_phasetrace.py, with CKPT_FAILPOINT=*:trace for the random kills), and the figure says
how many kills landed in each phase; a kill that came after `main` returned is reported apart, not counted.

After every kill: `verify` (re-hashing every blob of every checkpoint) passes, every earlier checkpoint is listed
under its id, and the killed save is either absent or complete (then it exports byte-exact). Manifests are named by
their hash and blobs re-hashed, so this covers every earlier checkpoint's bytes; exporting one of them (the newest)
after each kill checks it end to end, and all of them are exported at the end, after `gc`, when also no temporary
file may be left and every blob must be referenced.

A Python process with torch takes ~2.5 s to start here, which would make twenty kills cost a minute. So most saves
run `ckpt save` (the CLI's `main`) in a process forked from a server that imported ckptstore once: a separate process
like any other, killed by the kernel the same way. The console script itself (`python -m ckptstore save`) runs the
first save and one of the kills.
"""

from __future__ import annotations

import json
import os
import random
import select
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import blake3
import pytest

from ckptstore import Store
from reliability import _phasetrace
from storefiles import iter_blobs

pytestmark = pytest.mark.crash
RELIABILITY = Path(__file__).resolve().parents[1] / "reliability"

CHUNK = 1 << 20
# One kill at each step of the write path; @N is the N-th pass.
FAILPOINT_KILLS = (
    "blob.write:kill@1",
    "blob.write:kill@30",
    "blob.sync:kill",
    "blob.rename:kill@1",
    "blob.rename:kill@30",
    "manifest.write:kill@1",  # before the manifest is written
    "manifest.write:kill@2",  # while it is written to tmp/
    "manifest.fsync:kill",
    "manifest.rename:kill",
    "ref.write:kill@1",
    "ref.rename:kill",
    "index.update:kill",
)
RANDOM_KILLS = 8
MAX_RANDOM_ATTEMPTS = 40

# Reads one JSON request a line ({"argv", "failpoint", "log", "phase"}), forks a child that runs `ckpt <argv>` with
# its output in `log` and where it is in `phase` (a _phasetrace.PhaseFile), and answers with two lines: the child's
# pid at once, its exit code (negative: killed) when it ends.
_FORK_SERVER = r"""
import json, os, sys
sys.path.insert(0, sys.argv[1])
import _phasetrace
from ckptstore._core import failpoints as _failpoints
from ckptstore.cli import main

for line in sys.stdin:
    req = json.loads(line)
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            fd = os.open(req["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            os.environ["CKPT_FAILPOINT"] = req["failpoint"]
            _failpoints.configure(None)
            trace = _phasetrace.PhaseFile(req["phase"])
            trace.install()
            trace.started()
            try:
                main(req["argv"])
                code = 0
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
            trace.ended()
        finally:
            os._exit(code)
    sys.stdout.write(f"{pid}\n")
    sys.stdout.flush()
    sys.stdout.write(f"{os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])}\n")
    sys.stdout.flush()
"""


class ForkedCkpt:
    """`ckpt` commands in processes forked from one that has already imported ckptstore."""

    def __init__(self, log_dir: Path) -> None:
        self.log = log_dir / "ckpt.log"
        self.phase = _phasetrace.PhaseFile(str(log_dir / "phase"), create=True)
        self.server = subprocess.Popen(
            [sys.executable, "-c", _FORK_SERVER, str(RELIABILITY)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            text=True,
        )

    def start(self, argv: list[str], failpoint: str = "*:trace") -> int:
        """Start `ckpt <argv>`; a failpoint spec is always set (*:trace at least) so the child records where it is."""
        self.phase.mm[:] = bytes(_phasetrace.SIZE)
        request = {"argv": argv, "failpoint": failpoint, "log": str(self.log), "phase": self.phase.path}
        self.server.stdin.write(json.dumps(request) + "\n")
        self.server.stdin.flush()
        return int(self.server.stdout.readline())

    def wait(self) -> tuple[int, str]:
        line = self.server.stdout.readline()
        assert line, "the fork server died"
        return int(line), self.log.read_text()

    def where(self) -> dict:
        """Where the last child was when it ended (read after `wait`)."""
        return self.phase.read()

    def close(self) -> None:
        self.phase.close()
        self.server.stdin.close()
        try:
            self.server.wait(timeout=60)
        finally:
            if self.server.poll() is None:
                self.server.kill()
                self.server.wait()
            self.server.stdout.close()


def _digests(folder: Path) -> dict[str, str]:
    # Independent of the store: the test's own hash of each file's bytes.
    return {p.relative_to(folder).as_posix(): blake3.blake3(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _save_argv(src: Path, name: str, root: Path) -> list[str]:
    # --tag: the write path includes moving a tag.
    return ["save", str(src), name, "--tag", "newest", "--store", str(root), "--json"]


class Campaign:
    """One store, the source folders saved into it, and what every checkpoint in it must export as."""

    def __init__(self, root: Path, base: Path, work: Path, seed: int) -> None:
        self.root = root
        self.base = base
        self.work = work
        self.rng = random.Random(seed)
        self.variants = 0
        self.tensors: dict | None = None
        self.expected: dict[str, tuple[str, dict[str, str]]] = {}  # name -> (id, digests of its files)
        self.kills = 0  # inside `ckpt save`
        self.phases: dict[str, int] = {}  # those kills by the last failpoint passed
        self.outside = 0  # kills that came after `main` returned
        self.tries = self.finished_first = 0
        work.mkdir(parents=True)
        Store.init(root, chunk_bytes=CHUNK).close()
        self.ckpt = ForkedCkpt(work)

    def variant(self) -> Path:
        """A new source folder: the base model with every tensor shifted, so that each of its blobs is new."""
        from safetensors.torch import load_file, save_file

        if self.tensors is None:
            self.tensors = load_file(self.base / "model.safetensors")
        self.variants += 1
        folder = self.work / f"v{self.variants}"
        folder.mkdir()
        shutil.copy(self.base / "config.json", folder / "config.json")
        save_file({k: t + self.variants * 1e-3 for k, t in self.tensors.items()}, folder / "model.safetensors",
                  metadata={"format": "pt"})
        return folder

    def count_kill(self) -> bool:
        """Count the last child's kill by where it landed; False if it landed outside the command."""
        where = _phasetrace.phase(self.ckpt.where())
        if where in _phasetrace.OUTSIDE:
            self.outside += 1
            return False
        self.kills += 1
        self.phases[where] = self.phases.get(where, 0) + 1
        return True

    def record(self, name: str, src: Path) -> None:
        with Store.open(self.root) as store:
            self.expected[name] = (store.resolve(name), _digests(src))

    def check_after_kill(self, name: str, src: Path) -> bool:
        """The store is sound and `name` is absent or complete; returns whether it is there."""
        with Store.open(self.root) as store:
            report = store.verify()
            assert report.ok, [str(p) for p in report.problems]
            listed = {c.name: c.id for c in store.list()}
            for earlier, (cid, _) in self.expected.items():
                assert listed.get(earlier) == cid, earlier
            present = name in listed
            if present:
                self.expected[name] = (listed[name], _digests(src))
            newest = list(self.expected)[-1:]  # the killed one if it is complete, else the last complete one
            self.check_exports(store, newest)
        return present

    def check_exports(self, store: Store, names: list[str] | None = None) -> None:
        dest = self.work / "export"
        for name in self.expected if names is None else names:
            cid, digests = self.expected[name]
            store.export(cid, dest)
            assert _digests(dest) == digests, name
            shutil.rmtree(dest)

    def finish(self) -> None:
        with Store.open(self.root) as store:
            store.gc()
            assert store.verify().ok
            assert sorted(c.name for c in store.list()) == sorted(self.expected)
            self.check_exports(store)
            assert list((self.root / "tmp").iterdir()) == []
            referenced = {d for c in store.list() for d in store.manifest(c.id).blob_refs()}
            assert {d for d, _, _ in iter_blobs(store)} == referenced


def _wait_for_first_blob(campaign: Campaign, pid: int, pidfd: int, deadline: float = 60.0) -> None:
    """Until the save in process `pid` writes its first temporary file (or ends: its pidfd becomes readable)."""
    mine = f"{pid}-"
    tmp = campaign.root / "tmp"
    end = time.monotonic() + deadline
    while time.monotonic() < end and not any(n.startswith(mine) for n in os.listdir(tmp)):
        if select.select([pidfd], [], [], 0.001)[0]:
            return


def _kill_at_failpoints(campaign: Campaign) -> None:
    for i, spec in enumerate(FAILPOINT_KILLS):
        src = campaign.variant()
        name = f"fp/step-{i}"
        campaign.ckpt.start(_save_argv(src, name, campaign.root), failpoint=spec)
        code, log = campaign.ckpt.wait()
        assert code == -signal.SIGKILL, (spec, code, log)
        assert campaign.ckpt.where()["last"] == spec.split(":")[0], (spec, campaign.ckpt.where())
        assert campaign.count_kill(), spec
        present = campaign.check_after_kill(name, src)
        # Up to the manifest's rename nothing is visible; from then on the checkpoint is complete.
        assert present == spec.startswith(("ref.", "index.")), spec
        shutil.rmtree(src)


def _kill_at_random(campaign: Campaign, window: float) -> None:
    src, name, attempts, done = campaign.variant(), "rnd/step-0", 0, 0
    while campaign.kills < RANDOM_KILLS:
        attempts += 1
        assert attempts <= MAX_RANDOM_ATTEMPTS, f"only {campaign.kills} kills landed in {attempts - 1} attempts"
        campaign.tries += 1
        pid = campaign.ckpt.start(_save_argv(src, name, campaign.root))
        # A pidfd names this very process even after it ends, so the kill can never hit a recycled pid.
        pidfd = os.pidfd_open(pid)
        try:
            _wait_for_first_blob(campaign, pid, pidfd)
            first = time.monotonic()
            # Sleep until the chosen moment, waking early if the save ends first (its pidfd becomes readable).
            if not select.select([pidfd], [], [], campaign.rng.uniform(0, window))[0]:
                try:
                    signal.pidfd_send_signal(pidfd, signal.SIGKILL)
                except ProcessLookupError:
                    pass  # it ended just now
        finally:
            os.close(pidfd)
        code, log = campaign.ckpt.wait()
        assert code in (0, -signal.SIGKILL), (name, code, log)
        if code == -signal.SIGKILL:
            campaign.count_kill()
        else:
            campaign.finished_first += 1
            # It wrote faster than thought (load varies): aim within its write from now on.
            window = max(0.001, campaign.ckpt.where()["end"] - first)
        if campaign.check_after_kill(name, src):
            # Complete (killed after its commit, or not killed at all): the next save is of a new variant.
            shutil.rmtree(src)
            done += 1
            src, name = campaign.variant(), f"rnd/step-{done}"
    shutil.rmtree(src)


def _write_window(campaign: Campaign) -> float:
    """How long a save's write takes here: from its first temporary file to the return of `main`."""
    src = campaign.variant()
    pid = campaign.ckpt.start(_save_argv(src, "rnd/calibration", campaign.root))
    pidfd = os.pidfd_open(pid)
    _wait_for_first_blob(campaign, pid, pidfd)
    os.close(pidfd)
    start = time.monotonic()
    code, log = campaign.ckpt.wait()
    window = campaign.ckpt.where()["end"] - start
    assert code == 0, log
    campaign.record("rnd/calibration", src)
    shutil.rmtree(src)
    return window


@pytest.fixture
def figure(request):
    """The reliability suite's figures (tests/reliability/_figures.py): printed at the end, written out on request."""
    from reliability import _figures

    _figures.ensure_reporting(request.config)
    return _figures.record


@pytest.fixture(scope="module")
def base_model(tmp_path_factory) -> Path:
    """A ~44 MB BERT checkpoint folder: large enough that a save writes for a while, small enough to be quick."""
    import torch
    import transformers

    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=30000, hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=1024
    )
    folder = tmp_path_factory.mktemp("crash-base") / "bert"
    transformers.BertModel(config).save_pretrained(folder)
    assert (folder / "model.safetensors").stat().st_size > 40e6
    return folder


def _run_campaigns(fp: Campaign, rnd: Campaign, run_ckpt_subprocess) -> None:
    # The console script itself, while the fork servers start: a clean save, then a kill in the middle of the write.
    src = fp.variant()
    done = run_ckpt_subprocess(*_save_argv(src, "fp/earlier", fp.root))
    assert done.returncode == 0, done.stderr
    fp.record("fp/earlier", src)
    src = fp.variant()
    killed = run_ckpt_subprocess(
        *_save_argv(src, "fp/console-kill", fp.root), env={"CKPT_FAILPOINT": "blob.rename:kill@30"}
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    fp.kills += 1  # at the failpoint it names, so inside the command
    fp.phases["blob.rename"] = fp.phases.get("blob.rename", 0) + 1
    assert not fp.check_after_kill("fp/console-kill", src)

    window = _write_window(rnd)
    with ThreadPoolExecutor(max_workers=2) as pool:
        jobs = [pool.submit(_kill_at_failpoints, fp), pool.submit(_kill_at_random, rnd, window)]
        for job in jobs:
            job.result()

    assert fp.kills + rnd.kills >= 20


def test_save_killed_at_every_step_and_at_random_moments(base_model, tmp_path, figure):
    from conftest import run_ckpt_subprocess

    fp = Campaign(tmp_path / "fp-store", base_model, tmp_path / "fp-work", seed=1)
    rnd = Campaign(tmp_path / "rnd-store", base_model, tmp_path / "rnd-work", seed=2)
    try:
        _run_campaigns(fp, rnd, run_ckpt_subprocess)
    finally:
        fp.ckpt.close()
        rnd.ckpt.close()
    fp.finish()
    rnd.finish()
    phases = {k: fp.phases.get(k, 0) + rnd.phases.get(k, 0) for k in {*fp.phases, *rnd.phases}}
    figure(
        "crash (`ckpt save`, 44 MB BERT)",
        f"{fp.kills + rnd.kills} kills inside the command: {fp.kills} at named failpoints, {rnd.kills} at random"
        f" moments of the write (of {rnd.tries} tries: {rnd.finished_first} finished first, {rnd.outside} landed"
        f" after `main` returned and are not counted); by phase (last failpoint passed):"
        f" {_phasetrace.describe(phases)}; verify clean and every earlier checkpoint byte-exact after each",
        data={"kills_inside": fp.kills + rnd.kills, "at_failpoints": fp.kills, "random_inside": rnd.kills,
              "random_tries": rnd.tries, "random_finished_first": rnd.finished_first, "outside": rnd.outside,
              "by_phase": phases},
    )
