"""`SaveSchedule`: when a training loop saves, every N steps and every N seconds of training, whichever comes first.

Steps alone leave the work at risk proportional to the step time, which changes with the batch size, the sequence
length and the machine; a time interval bounds what a preemption or a crash can cost ("never lose more than 15
minutes"), as Lightning's ``train_time_interval`` and Orbax's save decision policies do. The time is counted from
the last save (or restore, or the start), so a save made for any reason restarts it.

Pure apart from the clock, which is injectable: tests drive it by hand and get exact decisions.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from ..errors import InvalidArgument
from ..policies import duration_words

Clock = Callable[[], float]


def _check_every(name: str, value: object, *, whole: bool, hint: str) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (whole and not isinstance(value, int)):
        raise InvalidArgument(f"{name} must be a {'whole ' if whole else ''}number, got {value!r}.", hint=hint)
    if not math.isfinite(value) or value <= 0:
        raise InvalidArgument(f"{name} must be more than 0, got {value!r}.", hint=hint)


class SaveSchedule:
    """Decides, at each step boundary, whether a save is due; `saved` tells it one was made."""

    def __init__(self, every_steps: int | None = None, every_seconds: float | None = None,
                 clock: Clock | None = None, *, names: tuple[str, str] = ("save_every_steps", "save_every_seconds")):
        _check_every(names[0], every_steps, whole=True, hint=f"{names[0]}=500 saves at steps 500, 1000, ...")
        _check_every(names[1], every_seconds, whole=False, hint=f"{names[1]}=900 saves every 15 minutes.")
        self.every_steps = every_steps
        self.every_seconds = every_seconds
        self.clock: Clock = clock or time.monotonic
        self._last = self.clock()

    @property
    def enabled(self) -> bool:
        return self.every_steps is not None or self.every_seconds is not None

    def due(self, step: int) -> str | None:
        """Why a save is due at `step`, in plain words, or None when none is."""
        if self.every_steps is not None and step > 0 and step % self.every_steps == 0:
            return f"step {step} is a multiple of {self.every_steps}"
        if self.every_seconds is not None:
            elapsed = self.clock() - self._last
            if elapsed >= self.every_seconds:
                return f"{duration_words(round(elapsed))} since the last save (every {duration_words(self.every_seconds)})"
        return None

    def saved(self) -> None:
        """A save (or a restore) was made now: the time interval starts again from here."""
        self._last = self.clock()

    def seconds_since_save(self) -> float:
        return self.clock() - self._last
