from __future__ import annotations

import sys

import click

from ._app import command, counted, err, fmt_bytes, json_option, open_store, out, print_json


@command("verify")
@click.argument("ref", required=False)
@click.option("--quick", is_flag=True, help="Check structure and sizes only; do not re-hash blob contents.")
@json_option
def verify(ref: str | None, quick: bool, as_json: bool, store_path: str | None) -> None:
    """Re-hash every blob of checkpoint REF (default: all) and report every damaged checkpoint and file.

    \b
    Examples:
      ckpt verify
      ckpt verify bert-sst2:prod --json
    Exit codes: 0 all good, 1 damage found, 2 usage error.
    """
    store = open_store(store_path)
    report = store.verify(ref, deep=not quick)
    if as_json:
        print_json(report.to_json())
    else:
        for p in report.problems:
            out.print(f"DAMAGED {p}")
        status = "OK" if report.ok else f"{len(report.damaged)} damaged: {', '.join(report.damaged)}"
        err.print(
            f"Checked {counted(report.checkpoints, 'checkpoint')}, {counted(report.blobs, 'blob')}"
            f" ({fmt_bytes(report.bytes_checked)} re-hashed): {status}"
        )
    if not report.ok:
        sys.exit(1)
