from __future__ import annotations

import click
from rich.table import Table

from ._app import command, err, json_option, open_store, out, print_json


@command("log")
@click.argument("run")
@click.option("--plot", "plot_path", metavar="FILE.png", type=click.Path(dir_okay=False), default=None,
              help="Also draw the metrics over steps to this PNG: the run's logged curves (trainer_state.json of"
              " the latest checkpoint) with the stored checkpoints on them, best and tagged ones marked.")
@json_option
def log(run: str, plot_path: str | None, as_json: bool, store_path: str | None) -> None:
    """List RUN's checkpoints in step order with their metrics and tags.

    \b
    Examples:
      ckpt log bert-sst2
      ckpt log bert-sst2 --plot curves.png
      ckpt log bert-sst2 --json
    Exit codes: 0 ok, 1 failure (unknown run, nothing to plot), 2 usage error.
    """
    store = open_store(store_path)
    infos = store.log(run)
    if plot_path:
        path = store.plot(run, plot_path)
        err.print(f"Plot written to {path}")
    if as_json:
        print_json([
            {"name": c.name, "id": c.id, "step": c.step, "created_at": c.created_at, "tags": list(c.tags),
             "metrics": dict(c.metrics)}
            for c in infos
        ])
        return
    metrics = list(dict.fromkeys(k for c in infos for k in c.metrics))  # in the order checkpoints first record them
    table = Table(box=None, header_style="bold", pad_edge=False)
    for col in ("STEP", "NAME", "ID", "CREATED", "TAGS", *metrics):
        table.add_column(col, justify="right" if col == "STEP" or col in metrics else "left")
    for c in infos:
        values = [f"{c.metrics[m]:.4g}" if m in c.metrics else "" for m in metrics]
        table.add_row("" if c.step is None else str(c.step), c.name, c.short_id, c.created_at_str,
                      ",".join(c.tags), *values)
    out.print(table)
