from __future__ import annotations

import click
from rich.table import Table

from ..errors import InvalidArgument
from ._app import command, err, fmt_bytes, json_option, open_store, out, print_json, progress_bar


class _Bars:
    """One rich progress bar on stderr per checkpoint being written (the ImportProgress protocol)."""

    def __init__(self) -> None:
        self._bar = None
        self._advance = None

    def start(self, label: str, total: int) -> None:
        self._bar = progress_bar(f"importing {label}", total)
        self._advance = self._bar.__enter__()

    def advance(self, n: int) -> None:
        if self._advance is not None:
            self._advance(n)

    def done(self) -> None:
        if self._bar is not None:
            self._bar.__exit__(None, None, None)
        self._bar = self._advance = None


@command("import")
@click.argument("path", required=False, type=click.Path(path_type=str))
@click.option("--run", metavar="RUN", help="Run to import into (default: the folder's name).")
@click.option(
    "--hf-cache", "hf_cache", is_flag=False, flag_value="", default=None, metavar="[DIR]",
    help="Import every snapshot of a Hugging Face hub cache (default: the user's cache).",
)
@click.option("--keep-pickles", is_flag=True, help="Store legacy .bin weights verbatim instead of converting them.")
@json_option
def import_(path, run, hf_cache, keep_pickles, as_json, store_path) -> None:
    """Import checkpoints that already exist on disk.

    PATH is a model folder (save_pretrained output, sharded or not, safetensors or legacy pytorch_model.bin),
    a Trainer output folder (each checkpoint-N becomes RUN/step-N with its eval metrics, RUN:best follows
    best_model_checkpoint, the final model becomes RUN/final), or a hub cache. Legacy weight pickles are converted
    to safetensors, read with torch's restricted unpickler only; a pickle that asks for more than tensors is
    refused. Names already stored are skipped, so importing again is harmless.

    \b
    Examples:
      ckpt import ./bert-finetuned
      ckpt import ./out --run bert-sst2
      ckpt import --hf-cache
      ckpt import --hf-cache ~/.cache/huggingface/hub --json
    Exit codes: 0 ok, 1 a checkpoint could not be imported (unsafe pickle, incomplete folder), 2 usage error.
    """
    if hf_cache is None and path is None:
        raise InvalidArgument("Nothing to import.", hint="Give a PATH, or --hf-cache [DIR] for a Hugging Face cache.")
    if hf_cache is not None and (run or (hf_cache and path)):
        raise InvalidArgument(
            "--hf-cache takes no --run and no second folder.",
            hint="Names come from the cached repos: ckpt import --hf-cache [DIR].",
        )
    store = open_store(store_path, create=True)
    bars = _Bars()
    if hf_cache is not None:
        report = store.import_hf_cache(hf_cache or path or None, keep_pickles=keep_pickles, progress=bars)
    else:
        report = store.import_folder(path, run=run, keep_pickles=keep_pickles, progress=bars)
    if as_json:
        print_json(report.to_json())
    else:
        table = Table(box=None, header_style="bold")
        for col in ("NAME", "STATUS", "ID", "READ", "NEW", "NOTE"):
            table.add_column(col, justify="right" if col in ("READ", "NEW") else "left", no_wrap=col != "NOTE")
        for i in report.items:
            note = i.reason or (f"converted {', '.join(i.converted)}" if i.converted else "")
            table.add_row(i.name, i.status, (i.id or "")[:12], fmt_bytes(i.bytes_read), fmt_bytes(i.bytes_stored), note)
        out.print(table)
    for note in report.notes:
        err.print(f"note: {note}", markup=False)
    err.print(
        f"Imported {len(report.added)} checkpoint(s) from {report.kind} ({len(report.skipped)} already stored,"
        f" {len(report.failed)} failed): read {fmt_bytes(report.bytes_read)},"
        f" {fmt_bytes(report.bytes_stored)} newly stored" + (f"; tags {', '.join(report.tags)}" if report.tags else "")
    )
    if report.failed:
        for i in report.failed:
            err.print(f"error: {i.name}: {i.reason}", markup=False)
        raise SystemExit(1)
