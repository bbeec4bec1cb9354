from __future__ import annotations

import click
from rich.markup import escape

from ._app import command, err, fmt_metrics, json_option, open_store, print_json
from .cmd_save import _pairs


@command("annotate")
@click.argument("ref")
@click.option("--metric", "metrics", multiple=True, metavar="K=V", help="A metric, e.g. test_accuracy=0.91 (repeatable).")
@click.option("--meta", "meta", multiple=True, metavar="K=V", help="Metadata (JSON values allowed; repeatable).")
@click.option("-m", "--message", help="A note to keep with the checkpoint (replaces the one it has).")
@json_option
def annotate(ref, metrics, meta, message, as_json, store_path) -> None:
    """Add metrics, metadata or a message to a stored checkpoint after its save.

    The checkpoint itself stays as saved; the annotation overrides or extends its metrics and metadata wherever it
    is listed (ckpt ls, --sort, ckpt show) and ranked (retention, RUN:best).

    \b
    Examples:
      ckpt annotate bert-sst2/step-500 --metric test_accuracy=0.91
      ckpt annotate bert-sst2:best --meta reviewed_by=ana -m "ships in v2"
    Exit codes: 0 ok, 1 failure (unknown reference), 2 usage error (nothing to add, a metric that is not a number).
    """
    metrics, meta = _pairs(metrics, "metric", numeric=True), _pairs(meta, "meta", numeric=False)
    store = open_store(store_path)
    info = store.annotate(ref, metrics=metrics, metadata=meta, message=message)
    if as_json:
        print_json(info.to_json())
        return
    err.print(f"Annotated [bold]{info.name}[/] ({info.short_id}): {escape(fmt_metrics(info.metrics, limit=8)) or 'no metrics'}"
              + (f"; tags {', '.join(info.tags)}" if info.tags else ""))
