from __future__ import annotations

import sys

import click

from ..errors import CheckpointNotFound, UsageError
from ._app import command, err, fmt_bytes, json_option, open_store, print_json


def _targets(store, refs: tuple[str, ...]) -> tuple[list[str], list[str]]:
    """(references to delete, whole runs among them). A REF that names a checkpoint is that checkpoint; one that
    names only a run stands for every checkpoint of the run, listed now (a checkpoint saved into the run after
    the plan is printed is not removed)."""
    runs = set(store.runs())
    targets: list[str] = []
    whole: list[str] = []
    for ref in refs:
        try:
            store.resolve(ref)
            targets.append(ref)
        except CheckpointNotFound:
            if ref not in runs:
                raise
            whole.append(ref)
            targets.extend(c.id for c in store.list(ref))
    return targets, whole


def _print_plan(plan, *, executed: bool) -> None:
    verb = "Removed" if executed else "Would remove"
    for c in plan.checkpoints:
        err.print(f"{verb} {c.name} ({c.short_id})")
    if plan.tags:
        err.print(f"{verb} tags: {', '.join(plan.tags)}")
    for name, collection in plan.collections:
        err.print(f"{'Took' if executed else 'Would take'} {name} out of collection {collection}")
    err.print(f"'ckpt gc' can then reclaim {fmt_bytes(plan.reclaimable_bytes)}")


@command("rm")
@click.argument("refs", nargs=-1, required=True, metavar="REF|RUN...")
@click.option("--dry-run", is_flag=True, help="Show what would be removed; remove nothing.")
@click.option("--yes", "-y", is_flag=True, help="Remove a whole RUN without asking.")
@click.option("--force", is_flag=True, help="Also remove checkpoints that collections hold, taking them out of"
              " those collections.")
@json_option
def rm(refs: tuple[str, ...], dry_run: bool, yes: bool, force: bool, as_json: bool, store_path: str | None) -> None:
    """Remove checkpoints and their tags. Blobs shared with other checkpoints stay; run 'ckpt gc' to reclaim the rest.

    A RUN (a run's name that is no checkpoint's name) removes every checkpoint of the run: the plan is printed
    first, then the command asks for confirmation, or needs --yes when it cannot ask (no terminal).
    A checkpoint in a collection is refused (nothing is removed) unless --force, which takes it out of its
    collections and says so.

    \b
    Examples:
      ckpt rm bert-sst2/step-100 bert-sst2/step-200
      ckpt rm bert-sst2:old --dry-run
      ckpt rm bert-sst2 --dry-run        # every checkpoint of the run
      ckpt rm bert-sst2 --yes
      ckpt rm bert-sst2/step-500 --force  # in collection release-1: taken out of it too
    Exit codes: 0 ok (or nothing confirmed), 1 failure (unknown reference, a checkpoint in a collection without
    --force), 2 usage error (a whole run without
    --yes and no terminal to ask on).
    """
    store = open_store(store_path)
    targets, whole = _targets(store, refs)
    if whole and not dry_run and not yes:
        plan = store.delete(targets, dry_run=True, force=force)
        _print_plan(plan, executed=False)
        what = f"every checkpoint of run{'s' if len(whole) > 1 else ''} {', '.join(whole)}"
        if not sys.stdin.isatty():
            raise UsageError(f"'ckpt rm {' '.join(whole)}' removes {what} ({len(plan.checkpoints)} checkpoints);"
                             " nothing was removed.",
                             hint="Add --yes to remove them, or --dry-run to only see the plan.")
        if not click.confirm(f"Remove {what} ({len(plan.checkpoints)} checkpoints)?", default=False, err=True):
            err.print("Nothing removed.")
            return
    plan = store.delete(targets, dry_run=dry_run, force=force)
    if as_json:
        print_json(plan.to_json())
        return
    _print_plan(plan, executed=not dry_run)
