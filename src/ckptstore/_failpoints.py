"""Failpoints: named places in the write path where a test can make the process die or an I/O call fail.

Set ``CKPT_FAILPOINT`` to a comma-separated list of ``NAME:ACTION[@N]``:

- ``NAME`` a failpoint name such as ``blob.write``, ``blob.sync``, ``blob.rename``, ``manifest.write.rename``,
  ``ref.write``, ``index.update``, ``delete.manifest``, ``gc.unlink`` (``ckpt`` lists them in docs/format.md);
  a trailing ``*`` matches any name with that prefix.
- ``ACTION`` ``kill`` (SIGKILL the process: a crash), ``raise`` (RuntimeError), ``eio`` or ``enospc`` (OSError).
- ``@N`` trigger at the N-th hit of that failpoint (default 1).

The spec is read once, the first time a failpoint is reached; when it is unset, each failpoint costs one dict
lookup. Used by tests/reliability; never set it in production.
"""

from __future__ import annotations

import errno
import os
import signal

_spec: dict[str, tuple[str, int]] | None = None
_hits: dict[str, int] = {}
ENV = "CKPT_FAILPOINT"


def _parse(text: str) -> dict[str, tuple[str, int]]:
    spec: dict[str, tuple[str, int]] = {}
    for item in filter(None, (p.strip() for p in text.split(","))):
        name, _, action = item.partition(":")
        action, _, nth = action.partition("@")
        if action not in ("kill", "raise", "eio", "enospc"):
            raise ValueError(f"{ENV}: unknown action {action!r} in {item!r} (kill, raise, eio, enospc)")
        spec[name] = (action, int(nth or 1))
    return spec


def configure(text: str | None) -> None:
    """Set the failpoints of this process (tests); None reads the environment again on the next hit."""
    global _spec
    _spec = None if text is None else _parse(text)
    _hits.clear()


def failpoint(name: str) -> None:
    global _spec
    if _spec is None:
        _spec = _parse(os.environ.get(ENV, ""))
    if not _spec:
        return
    match = _spec.get(name)
    if match is None:
        for key, value in _spec.items():
            if key.endswith("*") and name.startswith(key[:-1]):
                match = value
                break
        else:
            return
    count = _hits.get(name, 0) + 1
    _hits[name] = count
    action, nth = match
    if count != nth:
        return
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    if action == "raise":
        raise RuntimeError(f"failpoint {name} hit")
    code = errno.EIO if action == "eio" else errno.ENOSPC
    raise OSError(code, os.strerror(code) + f" (failpoint {name})")
