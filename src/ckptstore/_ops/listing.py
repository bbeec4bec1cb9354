"""Ordering checkpoints for `ls --sort`: by step, creation time, name, or any metric in its natural direction."""

from __future__ import annotations

from collections.abc import Iterable

from .._core.info import CheckpointInfo
from .._core.suggest import suggest
from ..errors import InvalidArgument
from ..policies import default_mode

SORT_KEYS = ("created", "step", "name")


def sort_checkpoints(infos: Iterable[CheckpointInfo], by: str | None = None, *, reverse: bool = False
                     ) -> list[CheckpointInfo]:
    """`infos` ordered by `by`: 'created' (default, newest first), 'step' (ascending), 'name', or a metric, best
    first (ascending for a metric whose name ends in 'loss', descending otherwise, as Trainer's
    greater_is_better). `reverse` flips the order; checkpoints without a step or the metric stay last."""
    infos = list(infos)
    by = by or "created"
    if by == "created":
        ordered = sorted(infos, key=lambda c: (c.created_at, c.step if c.step is not None else -1, c.name),
                         reverse=not reverse)
        return ordered
    if by == "name":
        return sorted(infos, key=lambda c: c.name, reverse=reverse)
    if by == "step":
        have = [c for c in infos if c.step is not None]
        return sorted(have, key=lambda c: (c.step, c.created_at), reverse=reverse) + [c for c in infos if c.step is None]
    have = [c for c in infos if by in c.metrics]
    if infos and not have:
        known = sorted({k for c in infos for k in c.metrics})
        raise InvalidArgument(
            f"No checkpoint listed has the metric {by!r}." + suggest(by, known + list(SORT_KEYS)),
            hint="Sort by step, created, name or a metric they record: " + (", ".join(known) or "none recorded") + ".",
        )
    descending = default_mode(by) == "max"
    # Ties keep the earlier step first: it reached the value first, as retention ranks them.
    have.sort(key=lambda c: (-c.metrics[by] if descending else c.metrics[by], c.step if c.step is not None else 0,
                             c.created_at))
    if reverse:
        have.reverse()
    return have + [c for c in infos if by not in c.metrics]
