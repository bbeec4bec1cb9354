from __future__ import annotations

from rich.table import Table

from ._app import command, counted, fmt_bytes, json_option, open_store, out, print_json


@command("du")
@json_option
def du(as_json: bool, store_path: str | None) -> None:
    """Disk usage: what the checkpoints would take as plain folders (logical) vs what the store holds (stored).

    \b
    Examples:
      ckpt du
      ckpt du --json
    Exit codes: 0 ok, 1 failure, 2 usage error.
    """
    store = open_store(store_path)
    usage = store.du()
    storage = store.storage_usage()
    if as_json:
        print_json({**usage.to_json(), "storage": storage})
        return
    table = Table(box=None, header_style="bold")
    for col in ("RUN", "CHECKPOINTS", "LOGICAL", "ONLY IN RUN"):
        table.add_column(col, justify="left" if col == "RUN" else "right")
    for r in usage.runs:
        table.add_row(r.run, str(r.checkpoints), fmt_bytes(r.logical_bytes), fmt_bytes(r.unique_bytes))
    out.print(table)
    out.print(
        f"total: {counted(usage.checkpoints, 'checkpoint')}, {fmt_bytes(usage.logical_bytes)} logical,"
        f" {fmt_bytes(usage.stored_bytes)} stored in {counted(usage.blobs, 'blob')}"
        f" (saved {fmt_bytes(usage.saved_bytes)}, {usage.ratio:.2f}x)"
    )
    _print_savings(storage)


def _print_savings(storage: dict) -> None:
    """Per run: logical bytes, what the store holds for it, and what dedup, zstd and deltas each saved."""
    table = Table(box=None, header_style="bold")
    for col in ("RUN", "LOGICAL", "STORED", "DEDUP SAVED", "ZSTD SAVED", "DELTA SAVED"):
        table.add_column(col, justify="left" if col == "RUN" else "right")
    rows = sorted(storage["runs"].items()) + [("(all)", storage["total"])]
    for run, r in rows:
        table.add_row(run, fmt_bytes(r["logical_bytes"]), fmt_bytes(r["stored_bytes"]),
                      fmt_bytes(r["dedup_saved_bytes"]), fmt_bytes(r["zstd_saved_bytes"]),
                      fmt_bytes(r["delta_saved_bytes"]))
    out.print(table)
    total = storage["total"]
    ratio = total["stored_bytes"] / total["logical_bytes"] if total["logical_bytes"] else 1.0
    out.print(f"stored: {fmt_bytes(total['store_bytes'])} of blobs on disk (delta bases included),"
              f" {ratio:.2f}x of the checkpoints as plain folders")
