"""Retention in the store: a run's settings on disk, applying its policy, and the ``RUN:latest`` / ``RUN:best`` tags.

The policy itself is pure (policies.py); this module gives it the store's checkpoints and acts on the plan.
A run's settings live in ``policies/<run>.json`` so that the CLI, a Trainer in one process and a loop in another
all apply the same rules::

    {"format": 1, "policy": {"keep_last": 3, ...} or null, "best": {"metric": "eval_loss", "mode": "min"} or null}

A settings file exists for every run that has a policy or a training integration. Every run, with settings or
without, has its ``latest`` (:func:`~ckptstore.policies.latest_of`: the highest step) and ``best`` (best value of
the run's best metric, :attr:`RunSettings.best`) moved by the store after every save, delete, prune, import and
convert; they are never set by hand, so they always say what the checkpoints say.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from . import _leases
from ._backend import atomic_write_bytes
from ._names import check_run
from .errors import InvalidArgument, PolicyError
from .policies import BestN, RetentionPlan, RetentionPolicy, latest_of

if TYPE_CHECKING:
    from .store import Store

SETTINGS_FORMAT = 1
DEFAULT_BEST_METRIC = "eval_loss"


@dataclass(frozen=True)
class RunSettings:
    """What the store remembers about a run: its retention policy and the metric ``RUN:best`` follows."""

    policy: RetentionPolicy | None = None
    best_metric: str | None = None
    best_mode: Literal["min", "max"] = "min"

    @property
    def best(self) -> tuple[str, str]:
        """(metric, mode) for ``RUN:best``: the one set for the run, else the policy's, else eval_loss (lower)."""
        if self.best_metric:
            return self.best_metric, self.best_mode
        if self.policy is not None and self.policy.metric:
            return self.policy.metric, self.policy.mode
        return DEFAULT_BEST_METRIC, "min"

    def to_json(self) -> dict[str, Any]:
        return {
            "format": SETTINGS_FORMAT,
            "policy": self.policy.to_json() if self.policy is not None else None,
            "best": {"metric": self.best_metric, "mode": self.best_mode} if self.best_metric else None,
        }

    @classmethod
    def from_json(cls, data: Any, *, path: str) -> "RunSettings":
        if not isinstance(data, dict) or data.get("format") != SETTINGS_FORMAT:
            raise PolicyError(
                f"Run settings {path} are not format {SETTINGS_FORMAT} settings.",
                hint="A newer ckptstore may have written them: upgrade, or set the policy again with 'ckpt policy'.",
            )
        policy = RetentionPolicy.from_json(data["policy"]) if data.get("policy") is not None else None
        best = data.get("best") or {}
        return cls(policy, best.get("metric"), best.get("mode", "min"))


@dataclass(frozen=True)
class PruneResult:
    """What a prune decided (`plan`) and whether it acted on it. Blobs are freed by a later ``gc``."""

    run: str
    policy: RetentionPolicy
    plan: RetentionPlan
    executed: bool
    reclaimable_bytes: int  # what gc can free once the removed checkpoints are gone

    def to_json(self) -> dict[str, Any]:
        return {
            "run": self.run,
            "policy": self.policy.to_json(),
            "policy_text": str(self.policy),
            "executed": self.executed,
            "reclaimable_bytes": self.reclaimable_bytes,
            **self.plan.to_json(),
        }


# -- settings on disk ------------------------------------------------------------------------------------------


def _path(store: "Store", run: str):
    return store.root / "policies" / f"{check_run(run)}.json"


def read_settings(store: "Store", run: str) -> RunSettings | None:
    path = _path(store, run)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    try:
        data = json.loads(raw)
    except ValueError:
        raise PolicyError(
            f"Run settings {path} are not valid JSON.", hint=f"Set the policy again: 'ckpt policy {run} --keep-last N'."
        ) from None
    return RunSettings.from_json(data, path=str(path))


def _write_settings(store: "Store", run: str, settings: RunSettings) -> None:
    path = _path(store, run)
    data = (json.dumps(settings.to_json(), indent=2) + "\n").encode()
    atomic_write_bytes(path, data, store.root / "tmp", failpoint_name="policy")


def set_policy(store: "Store", run: str, policy: RetentionPolicy | None) -> RunSettings:
    """Store `policy` as the run's policy (None removes it). Nothing is removed now: the next save applies it,
    or ``prune`` does, so setting a policy is never by itself destructive."""
    if policy is not None and not isinstance(policy, RetentionPolicy):
        raise InvalidArgument(
            f"A run's policy must be a RetentionPolicy, got {type(policy).__name__}.",
            hint="Use RetentionPolicy(keep_last=3, keep_best=1, metric='eval_loss').",
        )
    with store._writing(), store._commit_lock():
        old = read_settings(store, run) or RunSettings()
        settings = RunSettings(policy, old.best_metric, old.best_mode)
        _write_settings(store, run, settings)
        _update_tags(store, run, settings)
    return settings


def register_run(store: "Store", run: str, *, metric: str | None = None, mode: str = "min") -> RunSettings:
    """Mark `run` as written by a training integration, so its latest/best tags are maintained. `metric` and
    `mode` (Trainer's ``metric_for_best_model``, ``greater_is_better``) set what ``RUN:best`` follows."""
    if mode not in ("min", "max"):
        raise InvalidArgument(f"mode must be 'min' or 'max', got {mode!r}.", hint="Use 'min' for losses.")
    with store._writing(), store._commit_lock():
        old = read_settings(store, run)
        settings = old or RunSettings()
        if metric:
            settings = RunSettings(settings.policy, metric, mode)  # type: ignore[arg-type]
        if settings != old:
            _write_settings(store, run, settings)
        _update_tags(store, run, settings)  # a run saved before it was registered gets its tags now
    return settings


# -- acting on a plan ------------------------------------------------------------------------------------------


def _check_run_exists(store: "Store", run: str) -> None:
    _leases.refresh(store)
    store.check_run(run)


def prune(
    store: "Store", run: str, policy: RetentionPolicy | None = None, *, dry_run: bool = False
) -> PruneResult:
    """Apply `policy` (default: the run's stored policy) to `run`: remove what it does not keep, then move the
    run's tags. With `dry_run`, only plan."""
    check_run(run)
    _check_run_exists(store, run)
    settings = read_settings(store, run) or RunSettings()
    if policy is None:
        policy = settings.policy
        if policy is None:
            raise PolicyError(
                f"Run {run!r} has no retention policy.",
                hint=f"Give one ('ckpt prune {run} --keep-last 3') or set it ('ckpt policy {run} --keep-last 3').",
            )
    # objects (shared) then commit: the order every save takes them in. Holding objects keeps gc from running in
    # the middle, which would otherwise race with the tag and settings files written here.
    with store._writing(), store._commit_lock():
        _leases.sync_locked(store)
        plan = policy.plan(store.list(run), protected_ids=_leases.in_use(store), run_best=settings.best)
        ids = [d.checkpoint.id for d in plan.remove]
        reclaimable = store.catalog.exclusive_bytes(ids)
        if not dry_run:
            if ids:
                store._remove_locked(ids)
            _update_tags(store, run, settings)
    return PruneResult(run, policy, plan, not dry_run, reclaimable)


def after_save(store: "Store", run: str) -> PruneResult | None:
    """What a save does once its checkpoint is committed (which moved the run's latest and best): apply the run's
    policy, if it has one."""
    settings = read_settings(store, run)
    if settings is not None and settings.policy is not None:
        return prune(store, run, settings.policy)
    return None


def update_tags_locked(store: "Store", runs: Iterable[str]) -> None:
    """Move the latest/best tags of `runs` to what their checkpoints say now: every commit of a checkpoint (save,
    import, convert) and every delete does it. The caller holds the objects (shared) and commit locks."""
    for run in sorted(set(runs)):
        try:
            settings = read_settings(store, run) or RunSettings()
        except PolicyError:
            # Unreadable settings must not fail the commit of a checkpoint; applying the policy after the save
            # reports them (RetentionWarning). Meanwhile best follows the default metric.
            settings = RunSettings()
        _update_tags(store, run, settings)


def _update_tags(store: "Store", run: str, settings: RunSettings) -> None:
    """Point RUN:latest at the latest checkpoint and RUN:best at the best one; caller holds the commit lock."""
    _leases.sync_locked(store)
    metric, mode = settings.best
    infos = store.catalog.tag_facts(run, metric)  # an index query: this runs after every save
    latest = latest_of(infos)
    wanted = {
        "latest": latest.id if latest is not None else None,
        "best": next((c.id for c in BestN(1, metric, mode).ranked(infos)), None),  # type: ignore[arg-type]
    }
    changed = False
    for tag, cid in wanted.items():
        current = store.refs.get(run, tag)
        if cid == current:
            continue
        if cid is None:
            store.refs.remove(run, tag)
        else:
            store.refs.set(run, tag, cid)
        changed = True
    if changed:
        _leases.sync_locked(store)
