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
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
import traceback

import _jobs  # noqa: E402  (this script's own folder is sys.path[0])
import transformers.modeling_utils  # noqa: F401  (saves of live models import it: 5-15 s, paid once here)

from ckptstore._core import failpoints as _failpoints

_started: dict[int, float] = {}


def _child(req: dict) -> None:
    code = 1
    try:
        fd = os.open(req["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
        _failpoints.configure(req.get("failpoint") or "")
        out: dict = {}
        try:
            out["value"] = getattr(_jobs, req["job"])(**req.get("kw", {}))
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
    pid = os.fork()
    if pid == 0:
        _child(req)
    _started[pid] = time.monotonic()
    return pid


def _wait(pid: int, *, kill_after: float | None, timeout: float) -> dict:
    start = _started.get(pid, time.monotonic())
    deadline = start + (kill_after if kill_after is not None else timeout)
    killed_by_us = False
    delay = 0.0005
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() >= deadline:
            os.kill(pid, signal.SIGKILL)
            killed_by_us = True
            _, status = os.waitpid(pid, 0)
            break
        time.sleep(delay)
        delay = min(delay * 2, 0.01)
    elapsed = time.monotonic() - _started.pop(pid, start)
    return {
        "pid": pid,
        "code": os.WEXITSTATUS(status) if os.WIFEXITED(status) else None,
        "signal": os.WTERMSIG(status) if os.WIFSIGNALED(status) else None,
        "killed_by_server": killed_by_us,
        "timed_out": killed_by_us and kill_after is None,
        "elapsed": elapsed,
    }


def main() -> None:
    for line in sys.stdin:
        req = json.loads(line)
        cmd = req["cmd"]
        if cmd == "run":
            pid = _fork(req)
            reply = _wait(pid, kill_after=req.get("kill_after"), timeout=req.get("timeout", 120))
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
