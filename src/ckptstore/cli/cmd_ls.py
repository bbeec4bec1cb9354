from __future__ import annotations

import click
from rich.table import Table

from ._app import command, fmt_bytes, fmt_metrics, json_option, open_store, out, print_json


@command("ls")
@click.argument("run", required=False)
@click.option("--sort", "sort", metavar="KEY", help="step, created (default: newest first), name, or a metric (best"
              " first: ascending for *loss, else descending; checkpoints without it last).")
@click.option("--reverse", is_flag=True, help="Reverse the order.")
@json_option
def ls(run: str | None, sort: str | None, reverse: bool, as_json: bool, store_path: str | None) -> None:
    """List checkpoints, newest first (only RUN's when given).

    \b
    Examples:
      ckpt ls
      ckpt ls bert-sst2 --json
      ckpt ls bert-sst2 --sort eval_accuracy     # best first
      ckpt ls bert-sst2 --sort step --reverse
    Exit codes: 0 ok, 1 failure, 2 usage error (a --sort metric no checkpoint has).
    """
    store = open_store(store_path)
    infos = store.list(run, sort=sort, reverse=reverse)
    if run is not None and not infos:
        store.check_run(run)  # a typo gets "Unknown run, did you mean", not an empty table
    if as_json:
        print_json([i.to_json() for i in infos])
        return
    table = Table(box=None, header_style="bold")
    for col in ("NAME", "ID", "CREATED", "STEP", "SIZE", "TAGS", "METRICS"):
        table.add_column(col, justify="right" if col in ("STEP", "SIZE") else "left", no_wrap=col != "METRICS")
    for i in infos:
        table.add_row(
            i.name, i.short_id, i.created_at_str, "" if i.step is None else str(i.step), fmt_bytes(i.logical_bytes),
            ",".join(i.tags), fmt_metrics(i.metrics),
        )
    out.print(table)
