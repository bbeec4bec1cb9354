from __future__ import annotations

import click

from .._core.info import human_bytes
from ._app import command, counted, err, json_option, open_store, print_json


@command("pack")
@click.argument("refs", nargs=-1)
@click.option("--dry-run", is_flag=True, help="Say which checkpoints and blobs would be packed; change nothing.")
@click.option("--level", type=click.IntRange(1, 22), default=None, help="zstd level (default 1: the bench's level table).")
@click.option("--due", "due", default=None, metavar="RUN",
              help="Pack what RUN's storage policy says is due (what a save starts in the background).")
@click.option("--include-tagged", is_flag=True,
              help="Pack the latest, best and tagged checkpoints too (their loads then decode).")
@click.option("--quiet", is_flag=True, help="Print nothing.")
@json_option
def pack(refs: tuple[str, ...], dry_run: bool, level: int | None, due: str | None, include_tagged: bool, quiet: bool, as_json: bool,
         store_path: str | None) -> None:
    """Store checkpoints' blobs compressed: zstd over byte planes, or deltas against the checkpoint before.

    RUN packs every checkpoint of the run, REF one checkpoint (even a tagged one); with no argument, the whole
    store. A run's latest, best and tagged checkpoints stay raw, so they load zero-copy. Nothing changes for
    readers: every blob keeps its hash, exports stay byte-exact, and a kill at any point leaves every checkpoint
    whole.

    \b
    Examples:
      ckpt pack bert-sst2
      ckpt pack bert-sst2/step-500 --dry-run
      ckpt pack
    Exit codes: 0 ok, 1 failure, 2 usage error.
    """
    store = open_store(store_path)
    if due is not None:
        report = store.pack_due(due)
    else:
        report = store.pack(list(refs) or None, dry_run=dry_run, level=level,
                            keep_raw=False if include_tagged else None)
    if quiet:
        return
    if as_json:
        print_json(report.to_json())
        return
    n = counted(len(report.checkpoints), "checkpoint")
    if report.dry_run:
        err.print(f"Would pack {n}: {counted(report.candidates, 'blob')} ({human_bytes(report.candidate_bytes)})"
                  f" raw; {report.kept_raw} stay raw.")
        return
    mix = ", ".join(f"{k} {v}" for k, v in sorted(report.encodings.items())) or "none"
    err.print(f"Packed {n}: {counted(report.blobs_encoded, 'blob')} ({mix}), {human_bytes(report.raw_bytes)} ->"
              f" {human_bytes(report.stored_bytes)} (saved {human_bytes(report.saved_bytes)}) in"
              f" {report.seconds:.1f} s; {report.kept_raw} stay raw.")
