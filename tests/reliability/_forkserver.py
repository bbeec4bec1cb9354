"""A fork server for crash tests: real processes that start in milliseconds instead of seconds.

Importing torch and transformers takes 3-6 s here, so a fresh interpreter per SIGKILL would make 500 kills cost
most of an hour. This script imports ckptstore (and torch) once, without running a single torch operation, then
forks one child per job: each child is a real process with its own pid, its own file descriptors and locks, that
the kernel kills with SIGKILL exactly as it would kill `ckpt save`. The parent never opens a store, so a child
inherits no SQLite connection and no lock.

Protocol: one JSON request per line on stdin, one JSON reply per line on stdout.

- ``{"cmd": "run", "job": NAME, "kw": {...}, "failpoint": SPEC, "kill_after": SECONDS, "result": PATH, "log": PATH}``
  forks, optionally SIGKILLs the child after ``kill_after`` seconds, waits, and replies
  ``{"pid", "code", "signal", "elapsed"}``. The child writes the job's return value (or its error) to ``result``.
- ``{"cmd": "spawn", ...}`` forks and replies ``{"pid"}`` at once; ``{"cmd": "wait", "pid": PID, "timeout": S}``
  waits for a spawned child (SIGKILL after the timeout) and replies as ``run`` does.
- ``"phase": PATH`` in ``run``: the child records in PATH (_phasetrace.py) when its job starts and ends and the last
  failpoint it passed, and the reply carries that record as ``"phase"``; ``"kill_in_op": SECONDS`` then SIGKILLs
  the child that long after its job started (rather than after the fork), so that the kill lands in the operation.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
import traceback

import _jobs  # noqa: E402  (this script's own folder is sys.path[0])
import _phasetrace  # noqa: E402
import transformers.modeling_utils  # noqa: F401  (saves of live models import it: 5-15 s, paid once here)

from ckptstore._core import failpoints as _failpoints

_started: dict[int, float] = {}
_phases: dict[int, _phasetrace.PhaseFile] = {}  # by the pid of the child writing it (the child's own: see _fork)


def _child(req: dict) -> None:
    code = 1
    try:
        fd = os.open(req["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
        _failpoints.configure(req.get("failpoint") or "")
        trace = _phases.get(os.getpid())
        if trace is not None:
            trace.install()
        out: dict = {}
        try:
            job = getattr(_jobs, req["job"])
            if trace is not None:
                trace.started()
            try:
                out["value"] = job(**req.get("kw", {}))
            finally:
                if trace is not None:
                    trace.ended()
            code = 0
        except BaseException as exc:  # noqa: BLE001 - reported to the test, which decides
            out["error"] = {
                "type": type(exc).__name__,
                "mro": [c.__name__ for c in type(exc).__mro__],
                "message": str(exc),
                "errno": getattr(exc, "errno", None),
                "traceback": traceback.format_exc(),
            }
        out["seen"] = _failpoints.seen()
        tmp = req["result"] + ".tmp"
        with open(tmp, "w") as f:
            json.dump(out, f, default=str)
        os.replace(tmp, req["result"])
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _fork(req: dict) -> int:
    sys.stdout.flush()
    # Mapped before the fork, so that the child inherits it and the server can watch it while the child runs.
    trace = _phasetrace.PhaseFile(req["phase"], create=True) if req.get("phase") else None
    pid = os.fork()
    if pid == 0:
        if trace is not None:
            _phases[os.getpid()] = trace
        _child(req)
    _started[pid] = time.monotonic()
    if trace is not None:
        _phases[pid] = trace
    return pid


def _wait(pid: int, *, kill_after: float | None, timeout: float, kill_in_op: float | None = None) -> dict:
    start = _started.get(pid, time.monotonic())
    deadline = start + (kill_after if kill_after is not None else timeout)
    trace = _phases.pop(pid, None)
    killed_by_us = False
    status = None
    if kill_in_op is not None and trace is not None:
        # Aim from the moment the job started: the fork, the imports and the result file are not the operation.
        while trace.state() == _phasetrace.BEFORE and time.monotonic() < deadline:
            done, st = os.waitpid(pid, os.WNOHANG)
            if done:
                status = st
                break
            time.sleep(0.0002)
        if status is None and trace.state() != _phasetrace.BEFORE:
            deadline = trace.read()["start"] + kill_in_op
    delay = 0.0005
    while status is None:
        done, st = os.waitpid(pid, os.WNOHANG)
        if done:
            status = st
            break
        now = time.monotonic()
        if now >= deadline:
            os.kill(pid, signal.SIGKILL)
            killed_by_us = True
            _, status = os.waitpid(pid, 0)
            break
        time.sleep(min(delay, deadline - now))
        delay = min(delay * 2, 0.01)
    elapsed = time.monotonic() - _started.pop(pid, start)
    phase = None
    if trace is not None:
        phase = trace.read()
        trace.close()
    return {
        "phase": phase,
        "pid": pid,
        "code": os.WEXITSTATUS(status) if os.WIFEXITED(status) else None,
        "signal": os.WTERMSIG(status) if os.WIFSIGNALED(status) else None,
        "killed_by_server": killed_by_us,
        "timed_out": killed_by_us and kill_after is None and kill_in_op is None,
        "elapsed": elapsed,
    }


def main() -> None:
    for line in sys.stdin:
        req = json.loads(line)
        cmd = req["cmd"]
        if cmd == "run":
            pid = _fork(req)
            reply = _wait(pid, kill_after=req.get("kill_after"), timeout=req.get("timeout", 120),
                          kill_in_op=req.get("kill_in_op"))
        elif cmd == "spawn":
            reply = {"pid": _fork(req)}
        elif cmd == "wait":
            reply = _wait(req["pid"], kill_after=None, timeout=req.get("timeout", 120))
        else:
            reply = {"error": f"unknown command {cmd!r}"}
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
