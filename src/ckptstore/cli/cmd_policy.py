from __future__ import annotations

import re
from collections.abc import Callable

import click

from ..errors import CheckpointNotFound, InvalidArgument
from ..policies import RetentionPolicy, parse_duration
from ._app import command, err, json_option, open_store, out, print_json

_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_bytes(text: str | None) -> int | None:
    """'50GB' -> 50_000_000_000, '2GiB' -> 2**31, '1000' -> 1000."""
    if text is None:
        return None
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", text)
    if not m or m.group(2).lower() not in _UNITS:
        raise InvalidArgument(f"--max-bytes {text!r} is not a size.", hint="Write a size such as 500MB, 20GiB or 1000000.")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def policy_options(f: Callable) -> Callable:
    """The rule options shared by `ckpt policy` and `ckpt prune`."""
    for decorator in reversed([
        click.option("--keep-last", type=int, metavar="N", help="Keep the N checkpoints with the highest steps."),
        click.option("--keep-best", type=int, metavar="K", help="Keep the K best checkpoints by --metric."),
        click.option("--metric", metavar="M", help="Metric for --keep-best and RUN:best (default: eval_loss)."),
        click.option("--mode", type=click.Choice(["min", "max"]),
                     help="min: lower is better; max: higher (default, as Trainer: min for a metric ending in 'loss')."),
        click.option("--keep-every", type=int, metavar="S", help="Keep checkpoints whose step is a multiple of S."),
        click.option("--max-bytes", metavar="SIZE", help="Then remove the oldest unprotected until the rest fit."),
        click.option("--keep-within", metavar="DURATION",
                     help="Keep every checkpoint made within DURATION (30m, 2h, 7d, 1w) of the newest, as restic."),
        click.option("--keep-within-hourly", metavar="DURATION",
                     help="Keep the newest checkpoint of each hour (UTC) within DURATION of the newest."),
        click.option("--keep-within-daily", metavar="DURATION",
                     help="Keep the newest checkpoint of each day (UTC) within DURATION of the newest."),
        click.option("--keep-within-weekly", metavar="DURATION",
                     help="Keep the newest checkpoint of each ISO week (UTC) within DURATION of the newest."),
    ]):
        f = decorator(f)
    return f


def policy_from_options(keep_last, keep_best, metric, mode, keep_every, max_bytes, **within) -> RetentionPolicy | None:
    """The policy the options describe, or None when none of its rules is given. `within`: the --keep-within*
    options (keep_within, keep_within_hourly, ...), durations as written."""
    if all(v is None for v in (keep_last, keep_best, metric, mode, keep_every, max_bytes, *within.values())):
        return None
    for key, text in within.items():
        if text is not None:
            parse_duration(text, what=f"--{key.replace('_', '-')}")  # name the option, not the field, when it is bad
    return RetentionPolicy(
        keep_last=keep_last, keep_best=keep_best, metric=metric or "eval_loss", mode=mode,
        keep_every=keep_every, max_bytes=parse_bytes(max_bytes), **within,
    )


def print_plan(result, *, dry_run: bool) -> None:
    """Every checkpoint, oldest first: kept and why, or deleted and why (data, to stdout); warnings to stderr."""
    rows = sorted(
        [(d, True) for d in result.plan.keep] + [(d, False) for d in result.plan.remove],
        key=lambda item: (item[0].checkpoint.step is not None, item[0].checkpoint.step or 0, item[0].checkpoint.created_at),
    )
    gone = "would delete" if dry_run else "deleted"
    for decision, kept in rows:
        c = decision.checkpoint
        status = "[green]kept[/]" if kept else f"[red]{gone}[/]"
        tags = f" ({', '.join(c.tags)})" if c.tags else ""
        out.print(f"{status}  {c.name}{tags}  [dim]{decision.reason}[/]")
    for warning in result.plan.warnings:
        err.print(f"[yellow]warning:[/] {warning}")


@command("policy")
@click.argument("run")
@policy_options
@click.option("--clear", is_flag=True, help="Remove the run's policy (nothing is deleted).")
@json_option
def policy(run, clear, as_json, store_path, **rules) -> None:
    """Show or set RUN's retention policy. Every save of the run applies it, from any process, and 'ckpt prune RUN'
    applies it on demand. Setting a policy deletes nothing by itself; it prints what it would remove now.

    Whatever the policy says, the latest checkpoint, the best K, user-tagged checkpoints, checkpoints made on
    purpose (by 'ckpt convert', or named outside the step pattern: RUN/serve, RUN/final) and checkpoints in use
    (a running resume) are never removed. Options set the whole policy (they do not merge with the old one).

    \b
    Examples:
      ckpt policy bert-sst2
      ckpt policy bert-sst2 --keep-last 3 --keep-best 1 --metric eval_loss
      ckpt policy bert-sst2 --keep-every 1000 --max-bytes 50GB
      ckpt policy bert-sst2 --keep-last 3 --keep-within 7d --keep-within-daily 30d
      ckpt policy bert-sst2 --clear
    Exit codes: 0 ok, 1 failure, 2 usage error (an invalid policy).
    """
    store = open_store(store_path)
    new = policy_from_options(**rules)
    if clear and new is not None:
        raise click.UsageError("--clear takes no rule options.")
    if clear:
        store.set_policy(run, None)
        err.print(f"Removed the retention policy of {run}; nothing was deleted.")
        return
    if new is not None:
        store.set_policy(run, new)
    current = store.get_policy(run)
    preview = None
    if current is not None:
        try:
            preview = store.prune(run, dry_run=True)
        except CheckpointNotFound:
            preview = None  # a run with no checkpoint yet: the policy waits for its first save
    best_metric, best_mode = store.best_metric(run)
    if as_json:
        print_json({
            "run": run,
            "policy": current.to_json() if current else None,
            "policy_text": str(current) if current else None,
            "best": {"metric": best_metric, "mode": best_mode},
            "would_remove": [d.checkpoint.name for d in preview.plan.remove] if preview else [],
            "warnings": list(preview.plan.warnings) if preview else [],
        })
        return
    follows = f"{run}:best follows {best_metric} ({'lower' if best_mode == 'min' else 'higher'} is better)"
    if current is None:
        out.print(f"{run}: no retention policy (every checkpoint is kept)")
        out.print(follows)  # every run has a best, policy or not
        err.print(f"hint: set one with 'ckpt policy {run} --keep-last 3 --keep-best 1'")
        return
    out.print(f"{run}: {current}")
    out.print(follows)
    if preview is not None:
        removed = [d.checkpoint.name for d in preview.plan.remove]
        if removed:
            err.print(f"The next save or 'ckpt prune {run}' removes {len(removed)}: {', '.join(removed)}")
        for warning in preview.plan.warnings:
            err.print(f"[yellow]warning:[/] {warning}")
