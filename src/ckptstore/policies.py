"""Retention policies: which checkpoints of a run to keep, which to remove, and why.

Everything here is pure: a policy looks at a list of :class:`~ckptstore._core.info.CheckpointInfo` and returns a
:class:`RetentionPlan`; nothing touches the filesystem. The store acts on a plan later (``prune`` removes the
manifests and refs it lists, ``gc`` the blobs no manifest references any more), and ``--dry-run`` just prints it.
Keeping the decision apart from the deletion is what lets us test every rule with hand-made lists and lets a user
read exactly what would go before anything goes.

The building blocks follow orbax's preservation policies: small objects that each keep checkpoints for one reason
(:class:`LatestN`, :class:`BestN`, :class:`EveryNSteps`, :class:`Tagged`) and :class:`AnyOf` to combine them;
:class:`KeepWithin` and :class:`KeepWithinEvery` follow restic's ``--keep-within`` and ``--keep-within-hourly``
(ages measured from the newest checkpoint's ``created_at``, never from the clock, so a plan stays pure and a run
left alone for a month does not lose its recent history).
:class:`RetentionPolicy` is the frozen, JSON-serialisable setting a run carries; it composes those blocks and adds
the guarantees no setting can turn off. Whatever the policy says, a plan never removes:

- the latest checkpoint of the run (a resume must always find something to resume from);
- the best ``keep_best`` checkpoints by the metric;
- a checkpoint with a user tag (``v1.0.0``, ``prod``): someone named it on purpose;
- a checkpoint made on purpose (:func:`made_on_purpose`): a conversion, or one named outside the step pattern
  (``run/serve``, ``run/final``). The step rules ("the last N", "every N steps", "the best K") count only the
  checkpoints a training loop made, so such a checkpoint neither goes by them nor pushes one of those out;
- an id in ``protected_ids`` (an unfinished save, a running resume).

Checkpoints are ordered by step, numerically (``step-1000`` comes after ``step-200``, which a sort by name gets
wrong), then by ``created_at``. A checkpoint without a step has no place on the step axis, so it sorts before every
checkpoint that has one: an unnumbered save never pushes a numbered one out of "the last N".
"""

from __future__ import annotations

import abc
import datetime as _dt
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from ckptstore._core.info import CheckpointInfo, human_bytes
from ckptstore._core.names import is_step_name
from ckptstore.errors import InvalidArgument, PolicyError

__all__ = [
    "DEFAULT_PROTECTED_TAGS",
    "AnyOf",
    "BestN",
    "Decision",
    "EveryNSteps",
    "KeepWithin",
    "KeepWithinEvery",
    "LatestN",
    "OnPurpose",
    "Policy",
    "RetentionPlan",
    "RetentionPolicy",
    "StoragePolicy",
    "Tagged",
    "latest_of",
    "made_on_purpose",
    "parse_duration",
]

#: Tags the store moves by itself on every save; pointing at a checkpoint says nothing about wanting to keep it.
DEFAULT_PROTECTED_TAGS: frozenset[str] = frozenset({"latest", "best"})

_MODES = ("min", "max")


# --------------------------------------------------------------------------------------------------------------
# helpers


def _order_key(c: CheckpointInfo) -> tuple[int, int, float, str]:
    """Oldest first: no step before any step, then step as a number, then creation time; id makes it total."""
    return (0 if c.step is None else 1, c.step if c.step is not None else 0, c.created_at, c.id)


def _ordered(checkpoints: Iterable[CheckpointInfo]) -> list[CheckpointInfo]:
    return sorted(checkpoints, key=_order_key)


def _metric_value(c: CheckpointInfo, metric: str) -> float | None:
    """The metric as a float, or None when it cannot rank the checkpoint.

    NaN counts as missing: a diverged run logs ``eval_loss=nan``, and NaN compares false with everything, so it
    would otherwise land at an arbitrary rank and could be "best".
    """
    value = c.metrics.get(metric)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return None if math.isnan(value) else value


def made_on_purpose(checkpoint: CheckpointInfo) -> str | None:
    """Why `checkpoint` was made on purpose rather than by a training loop's schedule, in plain words, or None.

    Read from what every listed checkpoint carries, so planning stays pure: ``ckpt convert`` records what it did
    in the metadata ("converted"), and a training loop names its checkpoints by step (``step-500``,
    ``checkpoint-500``), so any other name (``bert-sst2/serve``, ``run/final``) was chosen by someone.
    """
    if isinstance(checkpoint.metadata.get("converted"), Mapping):
        return "made by convert"
    if not is_step_name(checkpoint.name):
        return "named outside the step pattern"
    return None


def latest_of(checkpoints: Iterable[CheckpointInfo]) -> CheckpointInfo | None:
    """The checkpoint ``RUN:latest`` points at and a plan always keeps: the highest step of those a training loop
    made (then the newest); in a run with none of those, the highest step of all, else the newest.

    A conversion of the latest checkpoint carries its step and is newer, but training does not go on from a bf16
    copy: `ckpt checkout RUN:latest` must still find the checkpoint that was trained."""
    ordered = _ordered(checkpoints)
    trained = [c for c in ordered if made_on_purpose(c) is None]
    if trained:
        return trained[-1]
    return ordered[-1] if ordered else None


def _extend_unique(into: list[str], reasons: Iterable[str]) -> None:
    for r in reasons:
        if r not in into:
            into.append(r)


def _check_count(owner: str, field_name: str, value: object, *, minimum: int, hint: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise PolicyError(f"{owner}: {field_name} must be a whole number, got {value!r}.", hint=hint)
    if value < minimum:
        raise PolicyError(f"{owner}: {field_name} must be at least {minimum}, got {value}.", hint=hint)


def _check_metric_and_mode(owner: str, metric: object, mode: object) -> None:
    if mode not in _MODES:
        raise PolicyError(
            f"{owner}: mode must be 'min' or 'max', got {mode!r}.",
            hint="Use mode='min' for losses (lower is better) and mode='max' for accuracy-like metrics.",
        )
    if not isinstance(metric, str) or not metric:
        raise PolicyError(
            f"{owner}: keeping the best checkpoints needs a metric name, got {metric!r}.",
            hint="Name a metric the checkpoints record, e.g. metric='eval_loss'.",
        )


def default_mode(metric: str | None) -> str:
    """'min' for a metric whose name ends in 'loss', else 'max': Trainer's default for greater_is_better."""
    return "min" if metric is None or metric.endswith("loss") else "max"


def _better(mode: str) -> str:
    return "lower is better" if mode == "min" else "higher is better"


def _last_phrase(n: int) -> str:
    return "the latest" if n == 1 else f"the last {n}"


def _best_phrase(n: int, metric: str) -> str:
    return f"the best by {metric}" if n == 1 else f"the best {n} by {metric}"


# --------------------------------------------------------------------------------------------------------------
# durations

_DURATION_UNITS = {"w": 7 * 86400, "d": 86400, "h": 3600, "m": 60, "s": 1}
_DURATION_WORDS = {"w": "week", "d": "day", "h": "hour", "m": "minute", "s": "second"}
_DURATION_PART = re.compile(r"(\d+)([wdhms])")
_DURATION_HINT = (
    "Write a number and a unit: 30m, 2h, 7d, 1w (s seconds, m minutes, h hours, d days, w weeks), or several as "
    "in 1d12h. Months and years vary in length: write them in days (30d, 365d)."
)


def parse_duration(text: object, *, what: str = "duration") -> int:
    """``"30m"`` -> 1800, ``"2h"`` -> 7200, ``"7d"``, ``"1w"``, ``"1d12h"``: a positive duration, in seconds.

    ``m`` is minutes, as in training schedules; restic reads it as months, which have no fixed length, so months
    and years are refused with a hint to write days instead.
    """
    if not isinstance(text, str):
        raise InvalidArgument(f"{what} must be a duration such as '7d', got {text!r}.", hint=_DURATION_HINT)
    compact = text.strip().lower()
    parts = _DURATION_PART.findall(compact)
    if not compact or "".join(n + u for n, u in parts) != compact:
        raise InvalidArgument(f"{what} {text!r} is not a duration.", hint=_DURATION_HINT)
    seconds = sum(int(n) * _DURATION_UNITS[u] for n, u in parts)
    if seconds <= 0:
        raise InvalidArgument(f"{what} {text!r} is zero: it would keep nothing.", hint=_DURATION_HINT)
    return seconds


def duration_words(seconds: float) -> str:
    """1800 -> "30 minutes", 129600 -> "1 day 12 hours": how a duration reads in a plan."""
    left = int(seconds)
    words = []
    for unit, size in _DURATION_UNITS.items():
        if unit == "w":
            continue  # "7 days" reads as written more often than "1 week" does
        n, left = divmod(left, size)
        if n:
            words.append(f"{n} {_DURATION_WORDS[unit]}{'' if n == 1 else 's'}")
    return " ".join(words) or "0 seconds"


# --------------------------------------------------------------------------------------------------------------
# policies


class Policy(abc.ABC):
    """One reason to keep checkpoints.

    A policy only ever *keeps*; removal is whatever no policy keeps. That makes composition a plain union
    (:class:`AnyOf`) and means adding a policy can never remove more.
    """

    @abc.abstractmethod
    def reasons(self, checkpoints: Sequence[CheckpointInfo]) -> dict[str, list[str]]:
        """Map the id of every checkpoint this policy keeps to why it keeps it, in plain words."""

    @abc.abstractmethod
    def why_not(self, checkpoint: CheckpointInfo) -> str:
        """Why this policy does not keep `checkpoint`, in plain words (only meaningful when it does not)."""

    @abc.abstractmethod
    def __str__(self) -> str:
        """What the policy keeps, as a phrase that reads after "keep": "the last 3"."""


@dataclass(frozen=True)
class LatestN(Policy):
    """Keep the `n` checkpoints with the highest steps: what a resume or a quick rollback needs."""

    n: int

    def __post_init__(self) -> None:
        _check_count("LatestN", "n", self.n, minimum=0, hint="Use LatestN(3) to keep the last 3 checkpoints.")

    def reasons(self, checkpoints: Sequence[CheckpointInfo]) -> dict[str, list[str]]:
        if self.n == 0:
            return {}
        return {c.id: [f"among {_last_phrase(self.n)}"] for c in _ordered(checkpoints)[-self.n :]}

    def why_not(self, checkpoint: CheckpointInfo) -> str:
        return "not the latest" if self.n == 1 else f"not among the last {self.n}"

    def __str__(self) -> str:
        return _last_phrase(self.n)


@dataclass(frozen=True)
class BestN(Policy):
    """Keep the `n` checkpoints with the best value of `metric`.

    A checkpoint that does not record the metric is never taken for best: guessing a rank for it could keep a
    worse checkpoint in place of a better one. Ties go to the newer checkpoint, which has seen more data.
    """

    n: int
    metric: str = "eval_loss"
    mode: Literal["min", "max"] = "min"

    def __post_init__(self) -> None:
        _check_count("BestN", "n", self.n, minimum=0, hint="Use BestN(2, 'eval_loss') to keep the best 2.")
        _check_metric_and_mode("BestN", self.metric, self.mode)

    def ranked(self, checkpoints: Sequence[CheckpointInfo]) -> list[CheckpointInfo]:
        """Checkpoints that record the metric, best first."""
        oldest_first = sorted(checkpoints, key=_order_key)
        scored = [(v, c) for c in oldest_first if (v := _metric_value(c, self.metric)) is not None]
        # sorted() is stable, so of equal values the checkpoint that reached it first ranks first: a later one with
        # the same value is no improvement. Trainer decides its best_model_checkpoint the same way, so RUN:best and
        # the checkpoint Trainer reloads at the end (load_best_model_at_end) are the same one.
        scored.sort(key=lambda vc: vc[0] if self.mode == "min" else -vc[0])
        return [c for _, c in scored]

    def reasons(self, checkpoints: Sequence[CheckpointInfo]) -> dict[str, list[str]]:
        if self.n == 0:
            return {}
        best = _best_phrase(self.n, self.metric)
        return {
            c.id: [f"among {best} ({self.metric}={_metric_value(c, self.metric):g})"]
            for c in self.ranked(checkpoints)[: self.n]
        }

    def why_not(self, checkpoint: CheckpointInfo) -> str:
        phrase = ("not " if self.n == 1 else "not among ") + _best_phrase(self.n, self.metric)
        if _metric_value(checkpoint, self.metric) is None:
            return f"{phrase} (it has no {self.metric})"
        return phrase

    def __str__(self) -> str:
        return f"{_best_phrase(self.n, self.metric)} ({_better(self.mode)})"


@dataclass(frozen=True)
class EveryNSteps(Policy):
    """Keep checkpoints whose step is a multiple of `n`: a sparse history to compare against or restart from."""

    n: int

    def __post_init__(self) -> None:
        _check_count(
            "EveryNSteps", "n", self.n, minimum=1, hint="Use EveryNSteps(1000) to keep steps 1000, 2000, ..."
        )

    def reasons(self, checkpoints: Sequence[CheckpointInfo]) -> dict[str, list[str]]:
        return {
            c.id: [f"step {c.step} is a multiple of {self.n}"]
            for c in checkpoints
            if c.step is not None and c.step % self.n == 0
        }

    def why_not(self, checkpoint: CheckpointInfo) -> str:
        if checkpoint.step is None:
            return f"has no step, so it is not on the every-{self.n}-steps schedule"
        return f"step {checkpoint.step} is not a multiple of {self.n}"

    def __str__(self) -> str:
        return "every step" if self.n == 1 else f"every {self.n} steps"


@dataclass(frozen=True)
class Tagged(Policy):
    """Keep checkpoints that carry a user tag (``v1.0.0``, ``prod``): someone pinned them by name.

    Tags in `ignore_tags` are the ones the store moves on its own (``latest``, ``best``); they follow the run
    and do not say anyone wants that checkpoint kept.
    """

    ignore_tags: frozenset[str] = DEFAULT_PROTECTED_TAGS

    def __post_init__(self) -> None:
        if isinstance(self.ignore_tags, str):
            raise PolicyError(
                f"Tagged: ignore_tags must be a set of tags, got the string {self.ignore_tags!r}.",
                hint="Write Tagged(frozenset({'latest', 'best'})).",
            )
        object.__setattr__(self, "ignore_tags", frozenset(self.ignore_tags))

    def user_tags(self, checkpoint: CheckpointInfo) -> list[str]:
        return [t for t in checkpoint.tags if t not in self.ignore_tags]

    def reasons(self, checkpoints: Sequence[CheckpointInfo]) -> dict[str, list[str]]:
        return {c.id: [f"tagged {', '.join(tags)}"] for c in checkpoints if (tags := self.user_tags(c))}

    def why_not(self, checkpoint: CheckpointInfo) -> str:
        return "has no user tag"

    def __str__(self) -> str:
        return "every checkpoint with a user tag"


@dataclass(frozen=True)
class OnPurpose(Policy):
    """Keep checkpoints made on purpose (:func:`made_on_purpose`): conversions and checkpoints named outside the
    step pattern. Someone asked for each of them; a rule about steps has nothing to say about it."""

    def reasons(self, checkpoints: Sequence[CheckpointInfo]) -> dict[str, list[str]]:
        return {c.id: [why] for c in checkpoints if (why := made_on_purpose(c))}

    def why_not(self, checkpoint: CheckpointInfo) -> str:
        return "made by a training loop (named by its step)"

    def __str__(self) -> str:
        return "every checkpoint made on purpose (converted, or named outside the step pattern)"


@dataclass(frozen=True)
class KeepWithin(Policy):
    """Keep every checkpoint made less than `duration` (``"7d"``) before the newest one: restic's ``--keep-within``.

    Measured from the newest checkpoint's ``created_at``, as restic measures from the latest snapshot, not from
    now: a run that stopped a month ago keeps its last week, and the same list always gives the same plan.
    """

    duration: str

    def __post_init__(self) -> None:
        parse_duration(self.duration, what="KeepWithin: duration")

    @property
    def seconds(self) -> int:
        return parse_duration(self.duration)

    def reasons(self, checkpoints: Sequence[CheckpointInfo]) -> dict[str, list[str]]:
        if not checkpoints:
            return {}
        cutoff = max(c.created_at for c in checkpoints) - self.seconds
        words = duration_words(self.seconds)
        return {c.id: [f"made within {words} of the newest"] for c in checkpoints if c.created_at > cutoff}

    def why_not(self, checkpoint: CheckpointInfo) -> str:
        return f"made more than {duration_words(self.seconds)} before the newest"

    def __str__(self) -> str:
        return f"every checkpoint made within {duration_words(self.seconds)} of the newest"


_PERIODS: dict[str, tuple[str, str]] = {
    # period: (strftime of its bucket in UTC, how the bucket reads)
    "hour": ("%Y-%m-%d %H:00", "hour"),
    "day": ("%Y-%m-%d", "day"),
    "week": ("%G-W%V", "week"),
}


@dataclass(frozen=True)
class KeepWithinEvery(Policy):
    """Of the checkpoints made less than `duration` before the newest, keep the newest of each `period` ("hour",
    "day" or "week"): restic's ``--keep-within-hourly/-daily/-weekly``. Thins a dense history by age: with
    ``KeepWithinEvery("2d", "hour")`` the last two days keep one checkpoint an hour.

    Hours, days and (ISO) weeks are counted in UTC, so a plan does not depend on the machine's time zone.
    """

    duration: str
    period: Literal["hour", "day", "week"] = "hour"

    def __post_init__(self) -> None:
        parse_duration(self.duration, what=f"KeepWithinEvery({self.period!r}): duration")
        if self.period not in _PERIODS:
            raise PolicyError(
                f"KeepWithinEvery: period must be 'hour', 'day' or 'week', got {self.period!r}.",
                hint="Use KeepWithinEvery('7d', 'day') to keep the newest checkpoint of each day of the last week.",
            )

    @property
    def seconds(self) -> int:
        return parse_duration(self.duration)

    def bucket(self, checkpoint: CheckpointInfo) -> str:
        when = _dt.datetime.fromtimestamp(checkpoint.created_at, tz=_dt.timezone.utc)
        return when.strftime(_PERIODS[self.period][0])

    def reasons(self, checkpoints: Sequence[CheckpointInfo]) -> dict[str, list[str]]:
        if not checkpoints:
            return {}
        cutoff = max(c.created_at for c in checkpoints) - self.seconds
        newest_of: dict[str, CheckpointInfo] = {}
        for c in sorted(checkpoints, key=lambda c: (c.created_at, _order_key(c))):
            if c.created_at > cutoff:
                newest_of[self.bucket(c)] = c  # later ones overwrite: the newest of the bucket stays
        words = duration_words(self.seconds)
        return {
            c.id: [f"the newest of its {self.period} ({bucket} UTC) within {words} of the newest"]
            for bucket, c in newest_of.items()
        }

    def why_not(self, checkpoint: CheckpointInfo) -> str:
        return (f"not the newest of its {self.period} within {duration_words(self.seconds)} of the newest, or "
                "made before that")

    def __str__(self) -> str:
        return f"the newest checkpoint of each {self.period} within {duration_words(self.seconds)} of the newest"


@dataclass(frozen=True, init=False)
class AnyOf(Policy):
    """Keep what any of `policies` keeps, with every reason that applies."""

    policies: tuple[Policy, ...]

    def __init__(self, *policies: Policy) -> None:
        for p in policies:
            if not isinstance(p, Policy):
                raise PolicyError(
                    f"AnyOf takes policies, got {p!r}.",
                    hint="Combine policy objects, e.g. AnyOf(LatestN(3), EveryNSteps(1000)).",
                )
        object.__setattr__(self, "policies", tuple(policies))

    def reasons(self, checkpoints: Sequence[CheckpointInfo]) -> dict[str, list[str]]:
        merged: dict[str, list[str]] = {}
        for p in self.policies:
            for cid, why in p.reasons(checkpoints).items():
                _extend_unique(merged.setdefault(cid, []), why)
        return merged

    def why_not(self, checkpoint: CheckpointInfo) -> str:
        return ", ".join(p.why_not(checkpoint) for p in self.policies) or "no policy keeps it"

    def __str__(self) -> str:
        return ", ".join(str(p) for p in self.policies) or "nothing"


# --------------------------------------------------------------------------------------------------------------
# plans


@dataclass(frozen=True)
class Decision:
    """One checkpoint in a plan and why it is kept, or why it goes."""

    checkpoint: CheckpointInfo
    reasons: tuple[str, ...]

    @property
    def reason(self) -> str:
        return ", ".join(self.reasons)

    def to_json(self) -> dict[str, Any]:
        c = self.checkpoint
        return {"id": c.id, "name": c.name, "step": c.step, "reasons": list(self.reasons)}


@dataclass(frozen=True)
class RetentionPlan:
    """What a policy would keep and remove, and why. Nothing acts on it until the store executes it.

    Both tuples are sorted oldest first (step, then created_at), so the same input always prints the same plan.
    """

    keep: tuple[Decision, ...]
    remove: tuple[Decision, ...]
    warnings: tuple[str, ...] = ()

    @property
    def bytes_freed_upper_bound(self) -> int:
        """Logical bytes of the removed checkpoints.

        An upper bound, not the answer: blobs shared with a kept checkpoint (or another run) stay, and only
        ``gc`` knows which blobs end up unreferenced.
        """
        return sum(d.checkpoint.logical_bytes for d in self.remove)

    @property
    def bytes_freed_upper_bound_str(self) -> str:
        return human_bytes(self.bytes_freed_upper_bound)

    def to_json(self) -> dict[str, Any]:
        return {
            "keep": [d.to_json() for d in self.keep],
            "remove": [d.to_json() for d in self.remove],
            "warnings": list(self.warnings),
            "bytes_freed_upper_bound": self.bytes_freed_upper_bound,
        }


_JSON_KEYS = ("keep_last", "keep_best", "metric", "mode", "keep_every", "max_bytes")
# Written only when set: a ckptstore from before these rules refuses unknown keys (see from_json), and should go
# on reading the policies that do not use them.
_WITHIN_KEYS = ("keep_within", "keep_within_hourly", "keep_within_daily", "keep_within_weekly")
_WITHIN_PERIODS = {"keep_within_hourly": "hour", "keep_within_daily": "day", "keep_within_weekly": "week"}

_NOTHING_KEPT_HINT = ("Set keep_last (e.g. keep_last=3), keep_best with a metric, keep_every, keep_within "
                      "(e.g. keep_within='7d') or max_bytes.")


@dataclass(frozen=True)
class RetentionPolicy:
    """A run's retention setting: the union of the rules that are set, plus guarantees no setting turns off.

    ``keep_last=3, keep_best=2, keep_every=1000`` keeps the last 3, the best 2 by ``metric`` and every step that
    is a multiple of 1000. ``keep_within="7d"`` keeps every checkpoint made within 7 days of the newest, and
    ``keep_within_hourly="2d"`` (``_daily``, ``_weekly``) the newest of each hour of the 2 days before the newest,
    as restic's options of the same names. ``max_bytes`` then trims the oldest of those until the kept checkpoints fit, but never
    a protected one (latest, best, user-tagged, in use); with ``max_bytes`` alone, the rules keep everything and
    the budget alone decides.

    A policy that would delete every checkpoint is refused at construction rather than at prune time: by then
    it is one confirmation away from doing it.
    """

    keep_last: int | None = None
    keep_best: int | None = None
    metric: str | None = "eval_loss"
    mode: Literal["min", "max"] | None = None  # None: as Trainer's greater_is_better, min for a *loss metric, else max
    keep_every: int | None = None
    max_bytes: int | None = None
    keep_within: str | None = None
    keep_within_hourly: str | None = None
    keep_within_daily: str | None = None
    keep_within_weekly: str | None = None

    def __post_init__(self) -> None:
        owner = "RetentionPolicy"
        for key in _WITHIN_KEYS:
            if getattr(self, key) is not None:
                parse_duration(getattr(self, key), what=f"{owner}: {key}")
        if self.mode is None:
            object.__setattr__(self, "mode", default_mode(self.metric))
        if self.keep_last is not None:
            _check_count(owner, "keep_last", self.keep_last, minimum=0, hint="Use keep_last=3 to keep the last 3.")
        if self.keep_best is not None:
            _check_count(owner, "keep_best", self.keep_best, minimum=0, hint="Use keep_best=2 to keep the best 2.")
        if self.keep_every is not None:
            hint = "Use keep_every=1000 to keep steps 1000, 2000, ..."
            _check_count(owner, "keep_every", self.keep_every, minimum=1, hint=hint)
        if self.max_bytes is not None:
            # 0 would remove every checkpoint that is not protected, which is what this class refuses to do.
            _check_count(owner, "max_bytes", self.max_bytes, minimum=1, hint="Use max_bytes=50 * 2**30 for 50 GiB.")
        if self.keep_best or self.mode not in _MODES:
            # A metric is only needed when something is ranked by it; mode is checked always so that a typo
            # ("mim") fails when the policy is set, not months later when keep_best is added.
            _check_metric_and_mode(owner, self.metric, self.mode)
        if not (self.keep_last or self.keep_best or self.keep_every or self.max_bytes
                or any(getattr(self, key) for key in _WITHIN_KEYS)):
            raise PolicyError(
                f"RetentionPolicy(keep_last={self.keep_last!r}) with no keep_best, keep_every, keep_within or max_bytes would "
                "delete every checkpoint except the latest and the tagged ones.",
                hint=_NOTHING_KEPT_HINT,
            )

    # -- composition -------------------------------------------------------------------------------------------

    def rules(self) -> tuple[Policy, ...]:
        """The policies the setting turns on, in the order their reasons are listed."""
        rules: list[Policy] = []
        if self.keep_last:
            rules.append(LatestN(self.keep_last))
        if self.keep_best:
            assert self.metric is not None  # checked in __post_init__
            rules.append(BestN(self.keep_best, self.metric, self.mode))
        if self.keep_every:
            rules.append(EveryNSteps(self.keep_every))
        if self.keep_within:
            rules.append(KeepWithin(self.keep_within))
        for key, period in _WITHIN_PERIODS.items():
            if getattr(self, key):
                rules.append(KeepWithinEvery(getattr(self, key), period))  # type: ignore[arg-type]
        return tuple(rules)

    def as_policy(self, protected_tags: Iterable[str] = DEFAULT_PROTECTED_TAGS) -> AnyOf:
        """The rules plus :class:`Tagged` and :class:`OnPurpose`, as one policy (without the latest/in-use
        guarantees or `max_bytes`)."""
        return AnyOf(*self.rules(), Tagged(frozenset(protected_tags)), OnPurpose())

    def __str__(self) -> str:
        budget = human_bytes(self.max_bytes) if self.max_bytes else ""
        rules = self.rules()
        if not rules:
            return f"keep everything up to {budget} in total, removing the oldest first"
        text = "keep " + str(AnyOf(*rules))
        if budget:
            text += f"; at most {budget} in total, removing the oldest first"
        return text

    # -- persistence -------------------------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        """Every key, always, in a fixed order, so a stored policy diffs cleanly (the keep-within keys when set)."""
        data = {key: getattr(self, key) for key in _JSON_KEYS}
        data.update({key: getattr(self, key) for key in _WITHIN_KEYS if getattr(self, key) is not None})
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RetentionPolicy:
        """Read what :meth:`to_json` wrote. Missing keys take their defaults; unknown keys are refused.

        Refused rather than ignored because an unknown key is most likely a rule from a newer ckptstore, and
        dropping a keep rule silently would make prune remove checkpoints that rule protects.
        """
        if not isinstance(data, Mapping):
            raise PolicyError(
                f"A stored retention policy must be a JSON object, got {type(data).__name__}.",
                hint="Set the run's policy again with RetentionPolicy(...).",
            )
        known = _JSON_KEYS + _WITHIN_KEYS
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise PolicyError(
                f"Unknown key(s) in stored retention policy: {', '.join(map(repr, unknown))}.",
                hint=f"Known keys are {', '.join(known)}; a newer ckptstore may have written it, so upgrade.",
            )
        return cls(**{key: data[key] for key in known if key in data})

    # -- planning ----------------------------------------------------------------------------------------------

    def plan(
        self,
        checkpoints: Iterable[CheckpointInfo],
        *,
        protected_ids: Iterable[str] = frozenset(),
        protected_tags: Iterable[str] = DEFAULT_PROTECTED_TAGS,
        run_best: tuple[str, str] | None = None,
        pinned: Mapping[str, Iterable[str]] | None = None,
    ) -> RetentionPlan:
        """Decide, for every checkpoint of one run, whether it stays and why.

        `protected_ids` are checkpoints in use (an unfinished save, a running resume); they always stay.
        `protected_tags` are the tags the store manages itself; any other tag is a user tag and pins its checkpoint.
        `run_best` is the (metric, mode) the run's ``best`` tag follows (Trainer's metric_for_best_model): the best
        checkpoint by it always stays, whatever the rules say, so the best is never lost to keep_last alone or
        to keep_best ranking by another metric.
        `pinned` maps ids kept for a reason outside the run (a collection holds them) to that reason; they
        always stay, with it in the plan.
        """
        ordered = _ordered(_validated(checkpoints))
        trained = [c for c in ordered if made_on_purpose(c) is None]  # what the step rules count
        pinned_ids = _id_set("protected_ids", protected_ids)
        tagged = Tagged(_id_set("protected_tags", protected_tags))
        rules = self.rules()

        why: dict[str, list[str]] = {c.id: [] for c in ordered}
        protected: set[str] = set()

        def add(found: Mapping[str, list[str]], *, protect: bool) -> None:
            for cid, reasons in found.items():
                _extend_unique(why[cid], reasons)
                if protect:
                    protected.add(cid)

        latest = latest_of(ordered)
        if latest is not None:
            add({latest.id: ["the latest checkpoint of the run"]}, protect=True)
        for rule in rules:
            add(rule.reasons(trained), protect=isinstance(rule, BestN))
        add(tagged.reasons(ordered), protect=True)
        add(OnPurpose().reasons(ordered), protect=True)
        if run_best is not None:
            metric, mode = run_best
            best = BestN(1, metric, mode).ranked(ordered)[:1]
            add({c.id: [f"the run's best by {metric} ({_better(mode)})"] for c in best}, protect=True)
        in_use = {c.id: ["in use (an unfinished save or a running resume)"] for c in ordered if c.id in pinned_ids}
        add(in_use, protect=True)
        if pinned:
            add({c.id: list(pinned[c.id]) for c in ordered if c.id in pinned}, protect=True)
        if not rules and self.max_bytes:
            add({c.id: [f"within the {human_bytes(self.max_bytes)} budget"] for c in ordered}, protect=False)

        removed: dict[str, tuple[str, ...]] = {
            c.id: tuple(r.why_not(c) for r in rules) for c in ordered if not why[c.id]
        }
        warnings: list[str] = []
        if self.max_bytes is not None:
            warnings += self._trim_to_budget(ordered, why, protected, removed)
        if self.keep_best and self.metric is not None:
            warnings += _metric_warnings(trained, self.metric)

        return RetentionPlan(
            keep=tuple(Decision(c, tuple(why[c.id])) for c in ordered if c.id not in removed),
            remove=tuple(Decision(c, removed[c.id]) for c in ordered if c.id in removed),
            warnings=tuple(warnings),
        )

    def _trim_to_budget(
        self,
        ordered: list[CheckpointInfo],
        why: dict[str, list[str]],
        protected: set[str],
        removed: dict[str, tuple[str, ...]],
    ) -> list[str]:
        """Move the oldest unprotected kept checkpoints to `removed` until the kept ones fit in max_bytes."""
        assert self.max_bytes is not None
        budget = human_bytes(self.max_bytes)
        total = sum(c.logical_bytes for c in ordered if c.id not in removed)
        for c in ordered:
            if total <= self.max_bytes:
                break
            if c.id in removed or c.id in protected:
                continue
            removed[c.id] = (f"over the {budget} budget, which removes the oldest unprotected checkpoints first",)
            total -= c.logical_bytes
        if total > self.max_bytes:
            return [
                f"The kept checkpoints total {human_bytes(total)}, over max_bytes ({budget}): every one left is "
                "protected (the latest, the best by the metric, user-tagged, made on purpose or in use)."
            ]
        return []


def _validated(checkpoints: Iterable[CheckpointInfo]) -> list[CheckpointInfo]:
    """The checkpoints as a list, refusing input on which "the latest" or "the last N" would mean the wrong thing."""
    items = list(checkpoints)
    seen: set[str] = set()
    dupes: set[str] = set()
    for c in items:
        (dupes if c.id in seen else seen).add(c.id)
    if dupes:
        raise PolicyError(
            f"The same checkpoint id appears more than once: {', '.join(sorted(dupes))}.",
            hint="Pass each checkpoint once, as Store.list returns them.",
        )
    runs = sorted({c.run for c in items})
    if len(runs) > 1:
        # keep_last=3 over two runs would keep the last 3 of whichever run is further along and drop the other.
        raise PolicyError(
            f"A retention policy applies to one run, but the checkpoints come from {len(runs)}: {', '.join(runs)}.",
            hint="Plan once per run, passing only that run's checkpoints.",
        )
    return items


def _id_set(label: str, values: Iterable[str]) -> frozenset[str]:
    # frozenset("abc") is {"a", "b", "c"}: a lone string would silently protect nothing.
    if isinstance(values, str):
        raise PolicyError(
            f"{label} must be a collection of strings, got the string {values!r}.",
            hint=f"Wrap it: {label}=frozenset({{{values!r}}}).",
        )
    return frozenset(values)


def _metric_warnings(ordered: list[CheckpointInfo], metric: str) -> list[str]:
    if not ordered:
        return []
    missing = [c.name for c in ordered if _metric_value(c, metric) is None]
    if len(missing) == len(ordered):
        recorded = sorted({m for c in ordered for m in c.metrics})
        return [
            f"No checkpoint records the metric {metric!r}, so none is kept as best; metrics recorded: "
            f"{', '.join(recorded) if recorded else 'none'}. Set the policy's metric to one the checkpoints record."
        ]
    if missing:
        count = "1 checkpoint has" if len(missing) == 1 else f"{len(missing)} checkpoints have"
        return [f"{count} no {metric!r} value and can never be kept as best: {', '.join(missing)}."]
    return []


@dataclass(frozen=True)
class StoragePolicy:
    """A run's storage setting (docs/format.md, run settings ``storage``).

    ``pack_after=N``: after each save, the checkpoints no longer among the run's newest N are packed (their blobs
    stored zstd or as deltas against the checkpoint before) in a background thread; the save never waits for it.
    ``keep_raw``: the run's latest, best and user-tagged checkpoints stay raw (zero-copy loads) when packing.
    ``keep_training_state=N``: checkpoints other than the newest N lose their optimizer, scheduler and RNG state
    files (they stay loadable and exportable; they can no longer be resumed).
    """

    pack_after: int | None = None
    keep_raw: bool = True
    keep_training_state: int | None = None

    def __post_init__(self) -> None:
        for key in ("pack_after", "keep_training_state"):
            value = getattr(self, key)
            if value is not None:
                _check_count("StoragePolicy", key, value, minimum=0 if key == "pack_after" else 1,
                             hint=f"StoragePolicy({key}=1), or None to turn it off.")
        if not isinstance(self.keep_raw, bool):
            raise PolicyError(f"StoragePolicy: keep_raw must be True or False, got {self.keep_raw!r}.",
                              hint="StoragePolicy(keep_raw=True) keeps latest, best and tagged checkpoints raw.")

    def to_json(self) -> dict[str, Any]:
        return {"pack_after": self.pack_after, "keep_raw": self.keep_raw,
                "keep_training_state": self.keep_training_state}

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> "StoragePolicy":
        if not isinstance(raw, Mapping):
            raise PolicyError("A storage policy must be a JSON object.", hint="Set it again with 'ckpt policy'.")
        return cls(raw.get("pack_after"), bool(raw.get("keep_raw", True)), raw.get("keep_training_state"))

    def __str__(self) -> str:
        parts = []
        if self.pack_after is not None:
            parts.append(f"pack checkpoints beyond the newest {self.pack_after}"
                         + (" (latest, best and tagged stay raw)" if self.keep_raw else ""))
        if self.keep_training_state is not None:
            parts.append(f"drop training state beyond the newest {self.keep_training_state}")
        return "; ".join(parts) or "store every checkpoint raw and whole"
