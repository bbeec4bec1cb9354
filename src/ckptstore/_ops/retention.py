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

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .._core.names import check_run
from .._format.settings import DEFAULT_BEST_METRIC, RunSettings
from .._repo import leases
from .._repo.documents import settings_key, upsert
from ..errors import InvalidArgument, PolicyError
from ..policies import BestN, RetentionPlan, RetentionPolicy, latest_of
from . import collections

if TYPE_CHECKING:
    from .._repo.repository import Repository

__all__ = ["DEFAULT_BEST_METRIC", "PruneResult", "RunSettings", "after_save", "prune", "read_settings",
           "register_run", "set_policy", "update_tags_locked"]

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


# -- settings documents -----------------------------------------------------------------------------------------


def read_settings(repo: "Repository", run: str) -> RunSettings | None:
    key = settings_key(run)
    got = repo.docs.get(key)
    if got is None:
        return None
    return RunSettings.from_bytes(got[0], path=f"{repo.url}/{key}", run=run)


def _write_settings(repo: "Repository", run: str, settings: RunSettings) -> None:
    upsert(repo.docs, settings_key(run), settings.to_bytes())


def set_policy(repo: "Repository", run: str, policy: RetentionPolicy | None) -> RunSettings:
    """Store `policy` as the run's policy (None removes it). Nothing is removed now: the next save applies it,
    or ``prune`` does, so setting a policy is never by itself destructive."""
    if policy is not None and not isinstance(policy, RetentionPolicy):
        raise InvalidArgument(
            f"A run's policy must be a RetentionPolicy, got {type(policy).__name__}.",
            hint="Use RetentionPolicy(keep_last=3, keep_best=1, metric='eval_loss').",
        )
    with repo.writing(), repo.commit_lock():
        old = read_settings(repo, run) or RunSettings()
        settings = RunSettings(policy, old.best_metric, old.best_mode, old.storage)
        _write_settings(repo, run, settings)
        _update_tags(repo, run, settings)
    return settings


def register_run(repo: "Repository", run: str, *, metric: str | None = None, mode: str = "min") -> RunSettings:
    """Mark `run` as written by a training integration, so its latest/best tags are maintained. `metric` and
    `mode` (Trainer's ``metric_for_best_model``, ``greater_is_better``) set what ``RUN:best`` follows."""
    if mode not in ("min", "max"):
        raise InvalidArgument(f"mode must be 'min' or 'max', got {mode!r}.", hint="Use 'min' for losses.")
    with repo.writing(), repo.commit_lock():
        old = read_settings(repo, run)
        settings = old or RunSettings()
        if metric:
            settings = RunSettings(settings.policy, metric, mode, settings.storage)  # type: ignore[arg-type]
        if settings != old:
            _write_settings(repo, run, settings)
        _update_tags(repo, run, settings)  # a run saved before it was registered gets its tags now
    return settings


# -- acting on a plan ------------------------------------------------------------------------------------------


def prune(
    repo: "Repository", run: str, policy: RetentionPolicy | None = None, *, dry_run: bool = False
) -> PruneResult:
    """Apply `policy` (default: the run's stored policy) to `run`: remove what it does not keep, then move the
    run's tags. With `dry_run`, only plan."""
    check_run(run)
    # objects (shared) then commit: the order every save takes them in. Holding objects keeps gc from running in
    # the middle, which would otherwise race with the tag and settings files written here.
    with repo.writing(), repo.commit_lock():
        # One sync, under the locks: another process may have saved into the run or removed it since, and from
        # here on only this prune changes it (a save's policy runs this after every save).
        repo.sync()
        repo.check_run(run)
        settings = read_settings(repo, run) or RunSettings()
        if policy is None:
            policy = settings.policy
            if policy is None:
                raise PolicyError(
                    f"Run {run!r} has no retention policy.",
                    hint=f"Give one ('ckpt prune {run} --keep-last 3') or set it ('ckpt policy {run} --keep-last 3').",
                )
        plan = policy.plan(repo.catalog.infos(run=run), protected_ids=leases.in_use(repo), run_best=settings.best,
                           pinned=collections.pins(repo))
        ids = [d.checkpoint.id for d in plan.remove]
        reclaimable = repo.catalog.exclusive_bytes(ids)
        if not dry_run:
            if ids:
                from .delete import remove_locked  # delete moves tags through this module

                remove_locked(repo, ids)  # syncs the catalog after its removals
            _update_tags(repo, run, settings, synced=True)
    return PruneResult(run, policy, plan, not dry_run, reclaimable)


def after_save(repo: "Repository", run: str) -> PruneResult | None:
    """What a save does once its checkpoint is committed (which moved the run's latest and best): apply the run's
    policy, if it has one."""
    settings = read_settings(repo, run)
    if settings is not None and settings.policy is not None:
        return prune(repo, run, settings.policy)
    return None


def update_tags_locked(repo: "Repository", runs: Iterable[str], *, synced: bool = False) -> None:
    """Move the latest/best tags of `runs` to what their checkpoints say now: every commit of a checkpoint (save,
    import, convert) and every delete does it. The caller holds the objects (shared) and commit locks; `synced`:
    its catalog already shows every change it made under them (a save's commit), so no sync is needed first."""
    for run in sorted(set(runs)):
        try:
            settings = read_settings(repo, run) or RunSettings()
        except PolicyError:
            # Unreadable settings must not fail the commit of a checkpoint; applying the policy after the save
            # reports them (RetentionWarning). Meanwhile best follows the default metric.
            settings = RunSettings()
        _update_tags(repo, run, settings, synced=synced)


def _update_tags(repo: "Repository", run: str, settings: RunSettings, *, synced: bool = False) -> None:
    """Point RUN:latest at the latest checkpoint and RUN:best at the best one; caller holds the commit lock."""
    if not synced:
        repo.sync()
    metric, mode = settings.best
    infos = repo.catalog.tag_facts(run, metric)  # an index query: this runs after every save
    latest = latest_of(infos)
    wanted = {
        "latest": latest.id if latest is not None else None,
        "best": next((c.id for c in BestN(1, metric, mode).ranked(infos)), None),  # type: ignore[arg-type]
    }
    for tag, cid in wanted.items():
        current = repo.refs.get(run, tag)
        if cid == current:
            continue
        if cid is None:
            repo.refs.remove(run, tag)
        else:
            repo.refs.set(run, tag, cid)
        # The commit lock keeps every other writer out: the index needs this row, not a sync of the whole store.
        repo.catalog.set_tag(run, tag, cid)
