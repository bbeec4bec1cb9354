from __future__ import annotations

import click

from ._app import command, err, fmt_bytes, json_option, open_store, print_json


@command("rm")
@click.argument("refs", nargs=-1, required=True, metavar="REF...")
@click.option("--dry-run", is_flag=True, help="Show what would be removed; remove nothing.")
@json_option
def rm(refs: tuple[str, ...], dry_run: bool, as_json: bool, store_path: str | None) -> None:
    """Remove checkpoints and their tags. Blobs shared with other checkpoints stay; run 'ckpt gc' to reclaim the rest.

    \b
    Examples:
      ckpt rm bert-sst2/step-100 bert-sst2/step-200
      ckpt rm bert-sst2:old --dry-run
    Exit codes: 0 ok, 1 failure (unknown reference), 2 usage error.
    """
    store = open_store(store_path)
    plan = store.delete(refs, dry_run=dry_run)
    if as_json:
        print_json(plan.to_json())
        return
    verb = "Would remove" if dry_run else "Removed"
    for c in plan.checkpoints:
        err.print(f"{verb} {c.name} ({c.short_id})")
    if plan.tags:
        err.print(f"{verb} tags: {', '.join(plan.tags)}")
    err.print(f"'ckpt gc' can then reclaim {fmt_bytes(plan.reclaimable_bytes)}")
