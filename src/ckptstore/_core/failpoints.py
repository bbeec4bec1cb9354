"""Failpoints: named places in the write paths where a test can make the process die, stop, or an I/O call fail.

Trusted storage systems prove their crash safety by breaking each step of a commit in turn (SQLite injects an I/O
error at every operation, restic and borg interrupt every step and re-check the repository). These hooks let
tests/reliability do the same with real processes.

Set ``CKPT_FAILPOINT`` to a comma-separated list of ``NAME:ACTION[@N]``:

- ``NAME`` a failpoint name (list below); a trailing ``*`` matches every name with that prefix, so ``*`` alone
  matches every failpoint.
- ``ACTION`` ``kill`` (SIGKILL the process: a crash), ``stop`` (SIGSTOP the process: a writer paused by the
  scheduler, a debugger or a frozen container), ``term`` (SIGTERM to the process: a scheduler's preemption notice
  arriving at that point, handled by whatever handler the process has), ``raise`` (RuntimeError), ``eio`` or ``enospc`` (OSError with
  that errno, as a failing disk or a full one gives), ``trace`` (nothing: only count, see :func:`seen`).
- ``@N`` act at the N-th hit of that item (default 1). Hits are counted per item, so ``*:eio@7`` fails the 7th
  I/O step of the process whatever its name, which is how a test walks "an error at write N for N = 1, 2, ...".

The failpoints, in the order a save, a delete, a gc and a tag update reach them:

=====================  ==========================================================================================
``blob.write``         before each write(2) of a new blob into ``tmp/`` (a blob larger than one write hits it
                       several times)
``blob.sync``          after every new blob of a save is written, before the one sync that makes them durable
``blob.rename``        before each rename of a durable blob from ``tmp/`` to ``objects/``
``manifest.write``     before the manifest is written (once), then before each write(2) of it into ``tmp/``
``manifest.fsync``     before the manifest's fsync
``manifest.rename``    before the link that puts the manifest in place (invisible until its name is claimed)
``name.claim``         before the name claim that commits the checkpoint (then ``name.write``/``.fsync``/``.rename``)
``name.release``       before a name claim is removed (delete, rename, a failed save taken back)
``ref.write``          before a tag file is written (once), then before each write(2) of it
``ref.fsync``          before a tag file's fsync
``ref.rename``         before the rename that moves a tag
``ref.remove``         before a tag file is unlinked (delete, untag, prune)
``journal.write``      before the journal entry a remote store writes after each change the index shows
                       (a name claimed or released, a tag, an annotation, a deletion record)
``index.update``       before each SQLite transaction that adds or removes checkpoints in the index
``index.tags``         before the SQLite transaction that rewrites the tags table of the index
``delete.log``         before a delete (or prune) writes its deletion records ``deleted/<id>`` (then
                       ``delete.write``/``.fsync``/``.rename`` of each)
``delete.manifest``    before each manifest unlink of a delete (and so of prune)
``gc.plan``            after gc has listed what to remove, before it removes anything
``gc.unlink``          before each unreferenced blob is unlinked
``gc.tmp``             before each leftover temporary file is unlinked
``pack.write``         before a packed (encoded) form of a blob is written into ``tmp/``
``pack.fsync``         before that temporary file's fsync
``pack.rename``        before the rename that puts the packed form in place of the raw one
``slim.manifest``      before a slim writes the slimmed manifest
``slim.claim``         before a slim switches the name claim to it (its commit point)
``slim.release``       after the switch, before the old manifest is removed
``policy.*``           ``policy.write``/``policy.fsync``/``policy.rename`` of a run's settings (set_policy)
``write.*``            ``write.write``/``write.fsync``/``write.rename`` of other documents (store.json, annotations)
``upgrade.claim``      before each name claim the format-1 -> 2 upgrade writes
``sync.blob``          before each blob a sync reads from the source and sends to the destination
``sync.commit``        after a sync made a checkpoint's blobs durable at the destination, before its manifest
``upgrade.config``     before the upgrade writes store.json with format 2
=====================  ==========================================================================================

A prune reaches the failpoints of a delete (``delete.log`` ... ``delete.manifest``) and of the tags it moves.
``CKPT_FAILPOINT=*:trace`` and :func:`seen` list every failpoint an operation reaches, which is how the reliability
suite enumerates them instead of trusting this table.

The spec is read once, the first time a failpoint is reached; when it is unset each failpoint costs a global
lookup and a test of an empty dict. Never set it in production.
"""

from __future__ import annotations

import errno
import os
import signal
import threading

ENV = "CKPT_FAILPOINT"
ACTIONS = ("kill", "stop", "term", "raise", "eio", "enospc", "trace")

_spec: dict[str, tuple[str, int]] | None = None
_hits: dict[str, int] = {}  # per spec item
_seen: dict[str, int] = {}  # per failpoint name reached while a spec is set


def _parse(text: str) -> dict[str, tuple[str, int]]:
    spec: dict[str, tuple[str, int]] = {}
    for item in filter(None, (p.strip() for p in text.split(","))):
        name, _, action = item.partition(":")
        action, _, nth = action.partition("@")
        if action not in ACTIONS:
            raise ValueError(f"{ENV}: unknown action {action!r} in {item!r} ({', '.join(ACTIONS)})")
        try:
            count = int(nth or 1)
        except ValueError:
            raise ValueError(f"{ENV}: {nth!r} in {item!r} is not a hit number (write NAME:ACTION@3)") from None
        if not name or count < 1:
            raise ValueError(f"{ENV}: {item!r} needs a name and a hit number >= 1, e.g. blob.write:kill@3")
        spec[name] = (action, count)
    return spec


def configure(text: str | None) -> None:
    """Set the failpoints of this process (tests); None reads the environment again on the next hit."""
    global _spec
    _spec = None if text is None else _parse(text)
    _hits.clear()
    _seen.clear()


def seen() -> dict[str, int]:
    """How many times each failpoint was reached since `configure` (counted only while a spec is set)."""
    return dict(_seen)


def failpoint(name: str) -> None:
    global _spec
    if _spec is None:
        _spec = _parse(os.environ.get(ENV, ""))
    if not _spec:
        return
    _seen[name] = _seen.get(name, 0) + 1
    key = name if name in _spec else None
    if key is None:
        for candidate in _spec:
            if candidate.endswith("*") and name.startswith(candidate[:-1]):
                key = candidate
                break
        else:
            return
    count = _hits.get(key, 0) + 1
    _hits[key] = count
    action, nth = _spec[key]
    if count != nth or action == "trace":
        return
    if action in ("kill", "stop"):
        # To this thread, not the process: a signal sent to the process is taken by whichever thread the kernel
        # picks (often one asleep in join()), and this thread could go on to commit before the group stops.
        # Sent to itself, it is handled on the way out of the system call, before another line runs here.
        signal.pthread_kill(threading.get_ident(), signal.SIGKILL if action == "kill" else signal.SIGSTOP)
        return  # after a stop, resumed by SIGCONT: carry on as if nothing happened
    if action == "term":
        os.kill(os.getpid(), signal.SIGTERM)
        return
    if action == "raise":
        raise RuntimeError(f"failpoint {name} hit")
    code = errno.EIO if action == "eio" else errno.ENOSPC
    raise OSError(code, os.strerror(code) + f" (failpoint {name})")
