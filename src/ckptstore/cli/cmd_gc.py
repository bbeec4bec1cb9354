from __future__ import annotations

import click

from ._app import command, counted, err, json_option, open_store, print_json


@command("gc")
@click.option("--dry-run", is_flag=True, help="Show what would be deleted; delete nothing.")
@click.option("--wait", type=float, default=60.0, show_default=True, help="Seconds to wait for saves in progress.")
@json_option
def gc(dry_run: bool, wait: float, as_json: bool, store_path: str | None) -> None:
    """Delete blobs that no checkpoint references, and leftovers of interrupted saves.

    Waits for saves in progress (their new blobs are not referenced yet) and never deletes a blob a checkpoint needs.

    \b
    Examples:
      ckpt rm bert/step-100 && ckpt gc
      ckpt gc --dry-run
    Exit codes: 0 ok, 1 failure (store locked, unreadable manifest), 2 usage error.
    """
    store = open_store(store_path)
    plan = store.gc(dry_run=dry_run, timeout=wait)
    if as_json:
        print_json(plan.to_json())
        return
    verb = "Would reclaim" if dry_run else "Reclaimed"
    err.print(f"{verb} {plan.bytes_freed_str} in {counted(len(plan.blobs), 'blob')} ({counted(len(plan.tmp_files), 'temporary file')})")
    if plan.saves_in_progress:
        err.print("A save is in progress: the blobs it has written but not committed yet are counted above; gc"
                  " waits for it and keeps them.")
