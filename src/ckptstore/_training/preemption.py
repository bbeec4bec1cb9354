"""Saving on preemption: SIGTERM (what spot instances, Kubernetes and schedulers send before the kill) and SIGUSR1
(what SLURM sends with ``--signal``) turn into "save a checkpoint at the next step boundary, then exit".

Rules, and why:

- The handler only records the signal. Raising from it (Python's way to stop the main thread) could land anywhere,
  in the middle of a save too; the training loop checks at a step boundary, where the state is whole.
- A second signal while that save runs is recorded and ignored: the save finishes and is committed, then the
  process exits. (A save cut short would lose nothing stored, the store being crash-safe, but the step's
  checkpoint with it.)
- Handlers the process had before are kept: after the save the previous Python handler is called, then the
  process exits with 128 + the signal number, the code a shell reports for a process the signal killed.
- Nothing is installed for a signal the process ignores (SIG_IGN), nor outside the main thread, where Python
  cannot install handlers.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
from types import FrameType
from typing import Any

log = logging.getLogger(__name__)

SIGNALS = tuple(s for s in (getattr(signal, "SIGTERM", None), getattr(signal, "SIGUSR1", None)) if s is not None)


class SignalWatch:
    """Records SIGTERM and SIGUSR1 while installed (see the module docstring)."""

    def __init__(self, signals: tuple[int, ...] = SIGNALS) -> None:
        self.signals = signals
        self.signum: int | None = None  # the first signal received
        self.count = 0
        self._previous: dict[int, Any] = {}  # the handlers to put back, while installed
        self._chained: dict[int, Any] = {}  # the handlers the process had, for exit() (kept after uninstall)

    @property
    def installed(self) -> bool:
        return bool(self._previous)

    def install(self) -> "SignalWatch":
        if self._previous or threading.current_thread() is not threading.main_thread():
            return self
        for sig in self.signals:
            previous = signal.getsignal(sig)
            if previous == signal.SIG_IGN:
                continue
            signal.signal(sig, self._handle)
            self._previous[sig] = self._chained[sig] = previous
        return self

    def uninstall(self) -> None:
        """Put back the handlers the process had."""
        if threading.current_thread() is not threading.main_thread():
            return
        for sig, previous in self._previous.items():
            signal.signal(sig, previous if previous is not None else signal.SIG_DFL)
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.count += 1
        if self.signum is None:
            self.signum = signum
            log.warning("Received %s: saving a checkpoint at the next step boundary, then exiting",
                        signal.Signals(signum).name)
        else:
            log.warning("Received %s again: the checkpoint is being saved; exiting once it is committed",
                        signal.Signals(signum).name)

    def exit(self) -> None:
        """Hand the signal on (the previous handler, if the process had one), then exit with 128 + signum."""
        signum = self.signum
        if signum is None:
            return
        previous = self._chained.get(signum)
        self.uninstall()
        if callable(previous) and previous not in (signal.default_int_handler,):
            previous(signum, None)
        sys.exit(128 + signum)
