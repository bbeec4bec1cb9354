"""Replication while training: after each committed save, copy the run's new checkpoints to another store (a shared
folder, a bucket) in a background thread, so the training loop never waits for the network.

Rules, and why:

- One background thread per replicator, started on demand. Saves that come while a sync runs are not queued one by
  one: the next sync takes every checkpoint of the run the destination does not have yet, so a slow link falls
  behind by whole syncs, never by a growing queue of work.
- A failure (the destination unreachable, full, a conflict) is a ReplicationWarning, never an exception in the
  training loop: the checkpoint is safe in the training store, and the next save's sync tries again, with what
  failed included. Nothing half-copied is ever visible at the destination (see _ops/sync.py).
- `flush` waits for the sync in flight and one more that covers every save made before it; the callback and the
  manager call it at the end of training, and the process does at exit.
- Retention on both sides by the run's policy: the training store applies it after each save; each sync gives the
  destination the run's settings (replacing older ones there) and the destination applies them after the copy,
  and checkpoints the training store pruned before they were sent are not sent. A sync leases at the source what it
  copies, so a prune there meanwhile keeps it as in use: after a sync that copied something, the replicator applies
  the policy at the source again (after the last save of a run nothing else would).
"""

from __future__ import annotations

import atexit
import logging
import os
import sys
import threading
import warnings
import weakref
from typing import Any

from ..errors import ReplicationWarning, StoreLocked
from ..store import Store
from . import saver as _saver

log = logging.getLogger(__name__)

_live: weakref.WeakSet["Replicator"] = weakref.WeakSet()


class Replicator:
    """Copies the checkpoints of `run` from `store` to `destination` (a Store, a path or a URL) in the background.

    Call `request()` after each committed save; `flush()` to wait until everything saved so far has been copied.
    `last_report` is the last sync's SyncReport; `failures` counts the syncs that failed. With `gc`, blobs the
    destination's policy pruned are freed there after the sync (skipped when its store is busy).
    """

    def __init__(self, store: Store, destination: Store | str | os.PathLike[str], run: str, *, gc: bool = True) -> None:
        self.store = store
        self.run = run
        self.gc = gc
        # Opened now, so that a wrong destination fails where it is given rather than as a warning per save.
        self._destination = destination if isinstance(destination, Store) else Store.open(destination, create=True)
        self._owns_destination = not isinstance(destination, Store)
        self.destination_url = self._destination.url
        self._cond = threading.Condition()
        self._pending = False
        self._busy = False
        self._thread: threading.Thread | None = None
        self._done: set[str] = set()  # ids the destination has (or deleted, or would prune): not looked at again
        self.last_report: Any = None
        self.failures = 0
        _live.add(self)

    def __repr__(self) -> str:
        return f"Replicator({self.store.url!r} -> {self.destination_url!r}, run={self.run!r})"

    def request(self) -> None:
        """Ask for a sync of the run; returns at once (a sync in flight is followed by one more)."""
        with self._cond:
            self._pending = True
            self._start_locked()

    def _start_locked(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name=f"ckptstore-replicate {self.run}", daemon=True)
            self._thread.start()

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until no sync is asked for or running; True when that happened within `timeout` seconds."""
        with self._cond:
            if self._pending:
                self._start_locked()  # a thread that died of something unexpected left work behind
            return self._cond.wait_for(lambda: not self._pending and not self._busy, timeout)

    def close(self) -> None:
        """`flush`, then close the destination store if this replicator opened it."""
        self.flush()
        if self._owns_destination:
            self._destination.close()

    # -- the background thread --------------------------------------------------------------------------------------
    def _loop(self) -> None:
        source = destination = None  # Stores of this thread's own (an index connection is per thread)
        try:
            while True:
                with self._cond:
                    if not self._pending:
                        self._thread = None  # decided under the lock: a request from now on starts a new thread
                        return
                    self._pending, self._busy = False, True
                try:
                    if source is None:
                        source = self.store.reopen()
                    if destination is None:
                        destination = self._destination.reopen()
                    self._sync(source, destination)
                except Exception as exc:  # noqa: BLE001 - reported, and retried by the next save's sync
                    self.failures += 1
                    self._warn(exc)
                finally:
                    with self._cond:
                        self._busy = False
                        self._cond.notify_all()
        finally:
            with self._cond:  # whatever ended the loop, the next request starts a new thread
                if self._thread is threading.current_thread():
                    self._thread = None
                self._busy = False
                self._cond.notify_all()
            for s in (source, destination):
                if s is not None:
                    s.close()

    def _warn(self, exc: Exception) -> None:
        message = (f"Replicating run {self.run!r} to {self.destination_url} failed ({type(exc).__name__}: {exc});"
                   f" the checkpoints are saved in {self.store.url}, and the next save tries again.")
        try:
            warnings.warn(message, ReplicationWarning, stacklevel=1)
        except Exception:  # noqa: BLE001 - warnings turned into errors: nothing in this thread can take one
            log.warning("%s", message)

    def _sync(self, source: Store, destination: Store) -> None:
        source.refresh()
        ids = [c.id for c in source.list(self.run) if c.id not in self._done]
        if not ids:
            return
        report = source.sync(destination, *ids, replace_settings=True)
        self.last_report = report
        names = set(report.present) | set(report.deleted) | set(report.not_kept) | {c.name for c in report.copied}
        self._done.update(c.id for c in source.list(self.run) if c.name in names)
        log.info("Replicated %d checkpoint(s) of %s to %s (%d bytes sent)", len(report.copied), self.run,
                 self.destination_url, report.bytes_transferred)
        if report.copied:
            self._prune_source(source)
        if report.pruned and self.gc:
            try:
                destination.gc(timeout=0)
            except StoreLocked:
                log.debug("gc at %s skipped: the store is busy", self.destination_url)
        report.raise_for_conflicts()

    def _prune_source(self, source: Store) -> None:
        """Apply the run's policy at the source again. The sync leased each checkpoint at the source while copying
        it, and a prune there meanwhile (the training loop's, after a save) kept it as in use: after the last save
        of a run no other prune would come back for it, and the training store would keep it for good."""
        if source.read_only:
            return
        try:
            if source.get_policy(self.run) is None:
                return
            result = source.prune(self.run)
            if result.plan.remove and self.gc:
                source.gc(timeout=0)
        except StoreLocked:
            log.debug("gc at %s skipped: the store is busy", source.url)
        except Exception as exc:  # noqa: BLE001 - housekeeping: the next save's prune tries again
            log.warning("Applying the policy of run %r in %s after replicating it failed (%s); run 'ckpt prune %s'.",
                        self.run, source.url, exc, self.run)


def _flush_all_at_exit() -> None:
    _saver._wait_all_at_exit()  # a background save still committing asks for one more sync
    for replicator in list(_live):
        try:
            replicator.flush()
        except BaseException as exc:  # noqa: BLE001 - nothing left to raise to at exit
            print(f"ckptstore: replicating to {replicator.destination_url} failed: {exc}", file=sys.stderr)


# Registered after the saver's hook (this module imports saver first), so it runs before that one (hooks run last
# registered first) and waits for the background saves itself.
getattr(threading, "_register_atexit", atexit.register)(_flush_all_at_exit)
