from __future__ import annotations

import click
from rich.table import Table

from ._app import command, fmt_bytes, fmt_metrics, json_option, open_store, out, print_json


@command("ls")
@click.argument("run", required=False)
@click.option("--sort", "sort", metavar="KEY", help="step, created (default: newest first), name, or a metric (best"
              " first: ascending for *loss, else descending; checkpoints without it last).")
@click.option("--reverse", is_flag=True, help="Reverse the order.")
@click.option("--where", "where", multiple=True, metavar="'KEY OP VALUE'",
              help="Only checkpoints meeting it (repeatable: all must hold). KEY: model_type, architecture, dtype,"
              " tag, name, run, parameters, step, size or a metric; OP: = != < <= > >= ~ (contains).")
@click.option("--family", "family", metavar="REF", help="Show REF's family tree from lineage instead: its base,"
              " fine-tunes, conversions and the further checkpoints of each run.")
@json_option
def ls(run: str | None, sort: str | None, reverse: bool, where: tuple[str, ...], family: str | None, as_json: bool,
       store_path: str | None) -> None:
    """List checkpoints, newest first (only RUN's when given).

    \b
    Examples:
      ckpt ls
      ckpt ls bert-sst2 --json
      ckpt ls bert-sst2 --sort eval_accuracy     # best first
      ckpt ls bert-sst2 --sort step --reverse
      ckpt ls --where 'eval_accuracy>=0.9' --where model_type=bert   # quote < and >: the shell reads them
      ckpt ls --where 'parameters < 30M' --where dtype=bf16 --where tag~release
      ckpt ls --family sst2:best
    Exit codes: 0 ok, 1 failure, 2 usage error (a --sort metric no checkpoint has, a --where that cannot be read
    or names a metric no checkpoint records).
    """
    store = open_store(store_path)
    if family is not None:
        if run or where or sort or reverse:
            raise click.UsageError("--family shows a tree; it takes no RUN, --where, --sort or --reverse.")
        _print_family(store.family(family), as_json)
        return
    if where:
        if run is not None:
            store.check_run(run)
        infos = store.query(where, run=run, sort=sort, reverse=reverse)
    else:
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


def _print_family(members, as_json: bool) -> None:
    if as_json:
        print_json([m.to_json() for m in members])
        return
    from rich.markup import escape

    width = max(2 * m.depth + len(m.name) for m in members)
    for m in members:
        label = m.relation + (f" ({m.detail})" if m.detail else "")
        mark = "  <-" if m.is_ref else ""
        short = m.id[:12]
        out.print(escape(f"{'  ' * m.depth}{m.name:<{width - 2 * m.depth}}  {short}  {label}{mark}"))
