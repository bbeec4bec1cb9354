"""Shared machinery of the reliability suite: the fork-server client, source folders, and the check that a store
survived whatever a test did to it (verify passes, every acknowledged checkpoint exports byte-exact)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent


def sha256_tree(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(Path(root).rglob("*"))
        if p.is_file()
    }


@dataclass
class Outcome:
    pid: int
    code: int | None
    signal: int | None
    elapsed: float
    value: object = None
    error: dict | None = None
    seen: dict = field(default_factory=dict)
    phase: dict | None = None  # where the child was when it ended (_phasetrace.PhaseFile.read), if traced

    @property
    def killed(self) -> bool:
        return self.signal == 9


class ForkServer:
    """Client of _forkserver.py: one long-lived interpreter that forks a real child process per job."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "CKPT_FAILPOINT": ""}
        self.proc = subprocess.Popen(
            [sys.executable, str(HERE / "_forkserver.py")],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, cwd=str(HERE),
        )
        self._n = 0

    def _request(self, req: dict) -> dict:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"fork server died (exit {self.proc.poll()})")
        return json.loads(line)

    def _paths(self) -> tuple[str, str]:
        self._n += 1
        return str(self.workdir / f"job-{self._n}.json"), str(self.workdir / f"job-{self._n}.log")

    def _outcome(self, reply: dict, result: str) -> Outcome:
        data = json.loads(Path(result).read_text()) if os.path.exists(result) else {}
        return Outcome(
            reply["pid"], reply["code"], reply["signal"], reply["elapsed"],
            data.get("value"), data.get("error"), data.get("seen", {}), reply.get("phase"),
        )

    def run(self, job: str, *, failpoint: str | None = None, kill_after: float | None = None,
            timeout: float = 120, trace_phase: bool = False, kill_in_op: float | None = None, **kw) -> Outcome:
        """Run `job` in a forked child. kill_after: SIGKILL that long after the fork. trace_phase: record where
        the child was when it ended (Outcome.phase; failpoints are seen only while a spec is set, e.g. *:trace);
        kill_in_op: SIGKILL that long after the job started (implies trace_phase)."""
        result, log = self._paths()
        phase = result + ".phase" if trace_phase or kill_in_op is not None else None
        reply = self._request({"cmd": "run", "job": job, "kw": kw, "failpoint": failpoint,
                               "kill_after": kill_after, "timeout": timeout, "result": result, "log": log,
                               "phase": phase, "kill_in_op": kill_in_op})
        out = self._outcome(reply, result)
        if reply.get("timed_out"):
            raise AssertionError(f"job {job} hung for {timeout}s; log: {Path(log).read_text()[-2000:]}")
        return out

    def spawn(self, job: str, *, failpoint: str | None = None, **kw) -> tuple[int, str, str]:
        result, log = self._paths()
        reply = self._request({"cmd": "spawn", "job": job, "kw": kw, "failpoint": failpoint,
                               "result": result, "log": log})
        return reply["pid"], result, log

    def wait(self, spawned: tuple[int, str, str], timeout: float = 120) -> Outcome:
        pid, result, log = spawned
        reply = self._request({"cmd": "wait", "pid": pid, "timeout": timeout})
        if reply.get("timed_out"):
            raise AssertionError(f"child {pid} hung for {timeout}s; log: {Path(log).read_text()[-2000:]}")
        return self._outcome(reply, result)

    def close(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdout:
            self.proc.stdout.close()


def read_acks(path: Path) -> tuple[dict[str, str], list[str]]:
    """(saved name -> id, deleted names) from an ack file; a torn last line (killed mid-write) is ignored."""
    saved: dict[str, str] = {}
    deleted: list[str] = []
    if not path.exists():
        return saved, deleted
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] == "saved" and len(parts[2]) == 64:
            saved[parts[1]] = parts[2]
        elif len(parts) == 2 and parts[0] == "deleted":
            deleted.append(parts[1])
    return saved, deleted


@dataclass
class StoreCheck:
    """What check_store found: used by tests for their assertions and by the long mode for its figures."""

    problems: list[str]
    listed: set[str]
    exported: int


def check_store(
    root: Path,
    expected: dict[str, dict[str, str]],
    *,
    maybe: dict[str, dict[str, str]] | None = None,
    gone: set[str] = frozenset(),
    scratch: Path,
    after_gc: bool = True,
) -> StoreCheck:
    """Open the store as a fresh user would and check the promises of README.md, "Guarantees".

    `expected` maps each checkpoint that must be there (acknowledged, not deleted) to the sha256 of its source
    files; `maybe` those whose fate the crash decided (if present they must be whole); `gone` those whose delete
    was acknowledged. Then gc runs, and verify must pass again: gc after a crash never removes a needed blob."""
    from ckptstore import Store
    from ckptstore.errors import CheckpointNotFound

    maybe = maybe or {}
    problems: list[str] = []
    exported = 0
    with Store.open(root) as store:
        report = store.verify(deep=True)
        problems += [f"verify: {p}" for p in report.problems]
        listed = {c.name for c in store.list()}
        for name in sorted(set(expected) - listed):
            problems.append(f"acknowledged checkpoint {name} is not listed")
        for name in sorted(listed - set(expected) - set(maybe)):
            problems.append(f"unexpected checkpoint {name} is listed")
        for name in sorted(gone & listed):
            problems.append(f"deleted checkpoint {name} came back")
        for name, digests in sorted({**maybe, **expected}.items()):
            if name not in listed:
                continue
            dest = scratch / f"export-{exported}"
            try:
                store.export(name, dest)
            except Exception as exc:  # noqa: BLE001 - a failed export is what this check reports
                problems.append(f"export of {name} failed: {type(exc).__name__}: {exc}")
                continue
            exported += 1
            got = sha256_tree(dest)
            shutil.rmtree(dest)
            if got != digests:
                bad = sorted(k for k in set(got) | set(digests) if got.get(k) != digests.get(k))
                problems.append(f"export of {name} differs from what was saved in {bad}")
        for name in gone:
            try:
                store.resolve(name)
            except CheckpointNotFound:
                pass
            else:
                problems.append(f"deleted checkpoint {name} still resolves")
        if after_gc and not problems:
            store.gc(timeout=10)
            leftovers = [p.name for p in (root / "tmp").iterdir() if p.is_file()]
            if leftovers:
                problems.append(f"gc left temporary files {leftovers}")
            report = store.verify(deep=True)
            problems += [f"verify after gc: {p}" for p in report.problems]
    return StoreCheck(problems, listed, exported)


def wait_until_stopped(pid: int, timeout: float = 30.0) -> None:
    """Until the process is in state T (stopped by SIGSTOP)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        if state == "T":
            return
        time.sleep(0.005)
    raise AssertionError(f"process {pid} did not stop within {timeout}s")
