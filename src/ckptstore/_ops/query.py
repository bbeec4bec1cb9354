"""``ckpt ls --where``: checkpoints filtered by model facts, tags and metrics, answered by the index (one SQL
query; no manifest is read). The conditions' syntax is in _core/query.py, the SQL in _repo/modelindex.py."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from .._core.info import CheckpointInfo
from .._core.query import KEYS, Condition, parse_condition
from .._core.suggest import close_matches
from .._repo import modelindex
from ..errors import InvalidArgument, did_you_mean
from . import listing

if TYPE_CHECKING:
    from .._repo.repository import Repository


def conditions(where: Iterable[str | Condition]) -> list[Condition]:
    if isinstance(where, (str, Condition)):
        where = [where]
    return [w if isinstance(w, Condition) else parse_condition(w) for w in where]


def check_metrics(conds: list[Condition], known: list[str]) -> None:
    """A key that is neither a fact nor a metric any checkpoint records is a typo (exit 2), not an empty answer."""
    for cond in conds:
        if cond.is_metric and cond.key not in known:
            candidates = close_matches(cond.key, list(KEYS) + known, cutoff=0.6)
            raise InvalidArgument(
                f"--where {cond.text!r}: no checkpoint records the metric {cond.key!r}." + did_you_mean(candidates),
                hint="Keys: " + ", ".join(KEYS) + ", or a metric: " + (", ".join(known[:12]) or "none recorded")
                + (", ..." if len(known) > 12 else "") + ".",
            )


def query(repo: "Repository", where: Iterable[str | Condition], *, run: str | None = None, sort: str | None = None,
          reverse: bool = False) -> list[CheckpointInfo]:
    """The checkpoints (of `run`) that meet every condition, newest first or as `sort` orders them."""
    conds = conditions(where)
    cat = repo.catalog
    check_metrics(conds, modelindex.metric_names(cat.db))
    ids = modelindex.query(cat.db, conds, run)
    infos = cat.infos(run=run, ids=ids)
    return infos if sort is None and not reverse else listing.sort_checkpoints(infos, sort, reverse=reverse)
