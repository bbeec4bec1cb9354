from __future__ import annotations

import click

from ._app import command, err, json_option, open_store, print_json


@command("slim")
@click.argument("run")
@click.option("--keep", type=click.IntRange(1), metavar="N",
              help="Keep training state in the newest N (default: the run's --keep-training-state).")
@click.option("--dry-run", is_flag=True, help="Say which checkpoints would lose their training state.")
@json_option
def slim(run: str, keep: int | None, dry_run: bool, as_json: bool, store_path: str | None) -> None:
    """Drop the optimizer, scheduler and RNG state of RUN's checkpoints beyond the newest N.

    They keep their names, tags, metrics and lineage and stay loadable and exportable; 'ckpt checkout' refuses
    them and names the newest resumable one. 'ckpt gc' then reclaims the dropped state.

    \b
    Examples:
      ckpt slim bert-sst2 --keep 2 --dry-run
      ckpt slim bert-sst2
    Exit codes: 0 ok, 1 failure, 2 usage error.
    """
    store = open_store(store_path)
    names = store.slim(run, keep, dry_run=dry_run)
    if as_json:
        print_json({"run": run, "slimmed": names, "dry_run": dry_run})
        return
    verb = "Would drop" if dry_run else "Dropped"
    err.print(f"{verb} the training state of {len(names)} checkpoint(s)" + (f": {', '.join(names)}" if names else ""))
