from __future__ import annotations

import click

from ..errors import StoreLocked
from ._app import command, counted, err, fmt_bytes, json_option, open_store, print_json
from .cmd_policy import policy_from_options, policy_options, print_plan


@command("prune")
@click.argument("run")
@policy_options
@click.option("--dry-run", is_flag=True, help="Print the plan; delete nothing.")
@click.option("--no-gc", is_flag=True, help="Remove the checkpoints but leave their blobs for a later 'ckpt gc'.")
@json_option
def prune(run, dry_run, no_gc, as_json, store_path, **rules) -> None:
    """Apply a retention policy to RUN: print every checkpoint as kept (and why) or deleted (and why), delete the
    others, then reclaim their blobs (gc).

    Without rule options, the run's stored policy ('ckpt policy RUN') applies; with them, those rules apply this
    once (they are not stored). The latest checkpoint, the best K by the metric, user-tagged checkpoints and
    checkpoints in use are always kept. A checkpoint without the metric is never taken for best.

    \b
    Examples:
      ckpt prune bert-sst2 --dry-run
      ckpt prune bert-sst2 --keep-last 2 --keep-best 1 --metric eval_accuracy --mode max
      ckpt prune bert-sst2 --keep-every 1000 --json
      ckpt prune bert-sst2 --keep-last 2 --keep-within 2h --dry-run
    Exit codes: 0 ok, 1 failure (unknown run), 2 usage error (no policy given or set, an invalid one).
    """
    store = open_store(store_path)
    policy = policy_from_options(**rules)
    result = store.prune(run, policy, dry_run=dry_run)
    gc_plan = None
    if not dry_run and not no_gc and result.plan.remove:
        try:
            gc_plan = store.gc()
        except StoreLocked as exc:
            err.print(f"[yellow]warning:[/] {exc.message} Run 'ckpt gc' later to reclaim the space.")
    if as_json:
        print_json({**result.to_json(), "gc": gc_plan.to_json() if gc_plan else None})
        return
    print_plan(result, dry_run=dry_run)
    n = len(result.plan.remove)
    if dry_run:
        err.print(f"Would delete {n} of {n + len(result.plan.keep)} checkpoints ({result.policy}); "
                  f"gc could then reclaim {fmt_bytes(result.reclaimable_bytes)}")
    elif gc_plan is not None:
        err.print(f"Deleted {counted(n, 'checkpoint')}; reclaimed {gc_plan.bytes_freed_str}")
    elif n:
        err.print(f"Deleted {counted(n, 'checkpoint')}; 'ckpt gc' can reclaim {fmt_bytes(result.reclaimable_bytes)}")
    else:
        err.print("Nothing to delete")
