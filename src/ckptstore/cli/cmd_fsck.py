from __future__ import annotations

import sys

import click

from ._app import command, counted, err, json_option, open_store, out, print_json


@command("fsck")
@click.option("--reindex", is_flag=True, help="Rebuild the SQLite index from manifests and refs first.")
@json_option
def fsck(reindex: bool, as_json: bool, store_path: str | None) -> None:
    """Check the store's structure (manifests, blobs present with the right size, tags); fast, no re-hashing.

    The index is a cache: --reindex rebuilds it from the files, losing nothing.

    \b
    Examples:
      ckpt fsck --reindex
    Exit codes: 0 ok, 1 problems found, 2 usage error.
    """
    store = open_store(store_path)
    report = store.fsck(reindex=reindex)
    if as_json:
        print_json({**report.to_json(), "reindexed": reindex})
    else:
        if reindex:
            err.print(f"Rebuilt the index: {counted(len(store.list()), 'checkpoint')}")
        for p in report.problems:
            out.print(f"PROBLEM {p}")
        err.print(f"Checked {counted(report.checkpoints, 'checkpoint')}, {counted(report.blobs, 'blob')}: {'OK' if report.ok else 'problems found'}")
    if not report.ok:
        sys.exit(1)
