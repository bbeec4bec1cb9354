from __future__ import annotations

import sys

import click

from ._app import command, counted, err, json_option, open_store, out, print_json


@command("fsck")
@click.option("--reindex", is_flag=True, help="Rebuild the SQLite index from manifests and refs first.")
@click.option("--upgrade", "upgrade_format", is_flag=True,
              help="Upgrade a store of an older format to this version's, in place, first (opening it for writing"
                   " does too; this says so).")
@json_option
def fsck(reindex: bool, upgrade_format: bool, as_json: bool, store_path: str | None) -> None:
    """Check the store's structure (manifests, blobs present with the right size, tags); fast, no re-hashing.

    The index is a cache: --reindex rebuilds it from the files, losing nothing. --upgrade upgrades a format-1 store
    to format 2 on purpose (e.g. before mounting it read-only); older ckptstore versions cannot open it after.

    \b
    Examples:
      ckpt fsck --reindex
      ckpt fsck --upgrade
    Exit codes: 0 ok, 1 problems found, 2 usage error.
    """
    store = open_store(store_path)
    report = store.fsck(reindex=reindex, upgrade_format=upgrade_format)
    fmt = store.config.format
    if as_json:
        extra = {"upgraded_from": store.upgraded_from, "format": fmt} if upgrade_format else {}
        print_json({**report.to_json(), "reindexed": reindex, **extra})
    else:
        if upgrade_format:
            if store.upgraded_from is not None:
                err.print(f"Upgraded the store to format {fmt} (from format {store.upgraded_from}).")
            else:
                err.print(f"The store is already format {fmt}: nothing to upgrade.")
        if reindex:
            err.print(f"Rebuilt the index: {counted(len(store.list()), 'checkpoint')}")
        for p in report.problems:
            out.print(f"PROBLEM {p}")
        err.print(f"Checked {counted(report.checkpoints, 'checkpoint')}, {counted(report.blobs, 'blob')}: {'OK' if report.ok else 'problems found'}")
    if not report.ok:
        sys.exit(1)
