from __future__ import annotations

import click

from ..policies import StoragePolicy
from ._app import command, err, json_option, open_store, out, print_json


@command("storage")
@click.argument("run")
@click.option("--pack-after", type=click.IntRange(0), metavar="N",
              help="After each save, pack the checkpoints beyond the newest N (in the background).")
@click.option("--keep-raw/--no-keep-raw", default=True, show_default=True,
              help="Keep the latest, best and tagged checkpoints raw (zero-copy loads) when packing.")
@click.option("--keep-training-state", type=click.IntRange(1), metavar="N",
              help="Drop optimizer, scheduler and RNG state of checkpoints beyond the newest N.")
@click.option("--clear", is_flag=True, help="Remove the run's storage policy (nothing is changed in the store).")
@json_option
def storage(run: str, pack_after: int | None, keep_raw: bool, keep_training_state: int | None, clear: bool,
            as_json: bool, store_path: str | None) -> None:
    """Show or set RUN's storage policy: when to pack checkpoints and how much training state to keep.

    \b
    Examples:
      ckpt storage bert-sst2
      ckpt storage bert-sst2 --pack-after 1 --keep-training-state 2
      ckpt storage bert-sst2 --clear
    Exit codes: 0 ok, 1 failure, 2 usage error.
    """
    store = open_store(store_path)
    if clear:
        store.set_storage(run, None)
        err.print(f"Removed the storage policy of {run}.")
        return
    if pack_after is not None or keep_training_state is not None or not keep_raw:
        store.set_storage(run, StoragePolicy(pack_after, keep_raw, keep_training_state))
    current = store.get_storage(run)
    if as_json:
        print_json({"run": run, "storage": current.to_json() if current else None,
                    "text": str(current) if current else None})
        return
    out.print(f"{run}: {current if current is not None else 'no storage policy (every checkpoint raw and whole)'}")
