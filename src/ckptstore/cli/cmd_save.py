from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path

import click

from ..errors import CheckpointNotFound, InvalidArgument, StoreNotFound
from ..store import Store
from ._app import command, counted, err, fmt_bytes, json_option, open_store, print_json, progress_bar


def _pairs(values: tuple[str, ...], what: str, *, numeric: bool) -> dict:
    out: dict = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InvalidArgument(f"{what} {item!r} is not KEY=VALUE.", hint=f"Write it as --{what} name=value.")
        if numeric:
            try:
                out[key] = float(value)
            except ValueError:
                raise InvalidArgument(
                    f"Metric {key}={value!r} is not a number.", hint=f"Write it as --metric {key}=0.31."
                ) from None
        else:
            try:
                out[key] = json.loads(value)
            except ValueError:
                out[key] = value
    return out


@command("save")
@click.argument("src", type=click.Path(path_type=str))
@click.argument("name")
@click.option("--tag", "tags", multiple=True, metavar="TAG", help="Tag to set (repeatable).")
@click.option("--metric", "metrics", multiple=True, metavar="K=V", help="A metric, e.g. eval_loss=0.31 (repeatable).")
@click.option("--meta", "meta", multiple=True, metavar="K=V", help="Metadata (JSON values allowed; repeatable).")
@click.option("--parent", metavar="REF", help="The checkpoint this one derives from.")
@click.option("--step", type=click.IntRange(min=0), help="Training step (default: from a NAME such as run/step-500,"
              " or a Trainer checkpoint's trainer_state.json).")
@click.option("-m", "--message", help="A note to keep with the checkpoint.")
@json_option
def save(src, name, tags, metrics, meta, parent, step, message, as_json, store_path) -> None:
    """Store the checkpoint folder SRC (save_pretrained or Trainer output) as NAME.

    Only blobs the store does not already hold are written; the checkpoint becomes visible when all are durable.

    \b
    Examples:
      ckpt save ./out/checkpoint-500 bert-sst2/step-500 --metric eval_loss=0.31 --tag v1
      ckpt save ./final bert-sst2/final --parent bert-sst2/step-500 -m "after LR sweep"
    Exit codes: 0 ok, 1 failure, 2 usage error (bad name, missing SRC).
    """
    metrics, meta = _pairs(metrics, "metric", numeric=True), _pairs(meta, "meta", numeric=False)
    # The files the save will read (same walk as the store's), for the progress bar's total: checked once.
    total: int | None = None
    try:
        store = open_store(store_path)
    except StoreNotFound:
        # save may create the store, but not for input it would refuse anyway: a typo must not leave an empty
        # store behind. So check what save checks (name, tags, the folder and every safetensors header) first.
        total = Store.check_source(src, name, tags)
        store = open_store(store_path, create=True)
        # Said out loud: a mistyped --store would otherwise scatter checkpoints over stores nobody knows of.
        err.print(f"Created a new store at {store.url}")

    if total is None:
        total = Store.check_source(src, name, tags) if Path(src).is_dir() else 0
    started = time.time()
    try:
        with progress_bar(f"saving {name}", total) as advance:
            info = store.save(
                src, name, tags=tags, metrics=metrics, metadata=meta, parent=parent, step=step, message=message,
                on_progress=advance,
            )
    except KeyboardInterrupt as exc:
        _interrupted(store, name, started, as_json, getattr(exc, "leftovers", (0, 0)))
        return
    report = info
    if as_json:
        print_json(report.to_json())
        return
    err.print(
        f"Saved [bold]{info.name}[/] ({info.short_id}): {counted(info.file_count, 'file')}, {fmt_bytes(info.logical_bytes)},"
        f" {fmt_bytes(report.new_bytes)} new in the store"
    )
    if report.pruned:
        err.print(f"The retention policy of run {info.run!r} removed {', '.join(report.pruned)}"
                  f" ('ckpt policy {info.run}' shows it; 'ckpt gc' frees their blobs)")


def _interrupted(store, name: str, started: float, as_json: bool, leftovers: tuple[int, int]) -> None:
    """Ctrl-C during a save. The commit is one rename: when it happened before the interrupt the checkpoint is
    stored and the save succeeded (what follows it, tags and the run's policy, can be done again). Otherwise say
    what the save left behind, then let main() report the interrupt (exit 130)."""
    info = _committed_since(store, name, started)
    if info is not None:
        if as_json:
            print_json({**info.to_json(), "interrupted_after_commit": True})
        err.print(f"Saved [bold]{info.name}[/] ({info.short_id}) (interrupted after the commit; 'ckpt prune"
                  f" {info.run}' applies the run's retention policy if it has one)")
        return
    blobs, nbytes = leftovers
    if blobs:
        err.print(f"{fmt_bytes(nbytes)} of unreferenced blobs ({counted(blobs, 'blob')} this save had written):"
                  " 'ckpt gc' reclaims them")
    raise KeyboardInterrupt


def _committed_since(store, name: str, started: float):
    """The checkpoint `name` if a manifest of it committed at or after `started` is on disk, else None. Read
    through a fresh Store: the index of `store` may be mid-update where the interrupt struck."""
    try:
        with contextlib.closing(store.reopen()) as fresh:
            info = fresh.info(name)
    except CheckpointNotFound:
        return None
    # created_at is set just before the commit; an older checkpoint of that name is not this save's (save refuses
    # an existing name, so that one would only be another process's).
    return info if info.created_at >= started else None
