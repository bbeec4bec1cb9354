"""What every command shares: the store option, --json, --debug, output to stdout (data) and stderr (messages).

Each command module defines one click command and uses the decorators here; `cli/__init__.py` lists them.
"""

from __future__ import annotations

import contextlib
import functools
import json
import sys
from collections.abc import Callable
from typing import Any

import click
from rich.console import Console

from .._core.info import human_bytes
from ..store import Store

# Data goes to stdout; messages, progress and errors to stderr, so `ckpt ls --json | jq` always works.
# Piped output is not cut to 80 columns: tables stay one row per line for grep and awk.
out = Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 400)
err = Console(stderr=True, highlight=False, soft_wrap=True, width=None if sys.stderr.isatty() else 400)

STORE_HELP = "Store folder or URL (s3://BUCKET/PREFIX) (default: $CKPT_STORE, else ./.ckpt)."


_GROUP_STORE = "ckpt.store"  # where `ckpt --store PATH COMMAND` leaves PATH for the command


def _store_or_group_store(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    return value if value is not None else ctx.find_root().meta.get(_GROUP_STORE)


def store_option(f: Callable) -> Callable:
    """--store PATH, given after the command or before it (`ckpt --store PATH ls`, as `git -C`)."""
    return click.option("--store", "store_path", metavar="PATH", envvar=None, default=None, help=STORE_HELP,
                        callback=_store_or_group_store)(f)


def group_store_option(f: Callable) -> Callable:
    def remember(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
        ctx.meta[_GROUP_STORE] = value

    return click.option("--store", metavar="PATH", default=None, expose_value=False, callback=remember,
                        help=STORE_HELP + " Also accepted after the command.")(f)


def json_option(f: Callable) -> Callable:
    return click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON to stdout.")(f)


def verbose_option(f: Callable) -> Callable:
    return click.option("--verbose", is_flag=True,
                        help="Show transformers' own progress bars and load reports (hidden by default).")(f)


@contextlib.contextmanager
def transformers_output(verbose: bool):
    """Hide transformers' progress bars ("Loading weights", "Writing model shards") and its LOAD REPORT tables while
    a command loads or writes a model: the command prints its own summary, and those reports are about an internal
    step (a checkpoint converted or validated), not something the user did. `--verbose` lets them through."""
    if verbose:
        yield
        return
    from transformers.utils import logging as hf_logging

    level, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


def debug_option(f: Callable) -> Callable:
    # Parsed by main() before click runs (it decides whether tracebacks are shown); declared here for --help.
    return click.option("--debug", is_flag=True, expose_value=False, help="Show the full traceback on errors.")(f)


def command(name: str, **kwargs: Any) -> Callable[[Callable], click.Command]:
    """A ckpt sub-command with the options every command takes."""

    def wrap(f: Callable) -> click.Command:
        f = debug_option(store_option(f))
        return click.command(name, context_settings={"help_option_names": ["-h", "--help"]}, **kwargs)(f)

    return wrap


def open_store(store_path: str | None, *, create: bool = False) -> Store:
    store = Store.open(store_path, create=create)
    if store.read_only:
        err.print(f"note: the store at {store.url} is read-only for this user; running read-only (its index is"
                  " kept in your cache folder).")
    return store


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def fmt_metrics(metrics: dict[str, float], limit: int = 3) -> str:
    items = list(metrics.items())[:limit]
    text = " ".join(f"{k}={v:.4g}" for k, v in items)
    return text + (" …" if len(metrics) > limit else "")


def fmt_bytes(n: int) -> str:
    return human_bytes(n)


def counted(n: int, noun: str) -> str:
    """'1 checkpoint', '2 checkpoints', '0 blobs'."""
    return f"{n:,} {noun}" if n == 1 else f"{n:,} {noun}s"


def progress_columns() -> list:
    """Description, bar, bytes done of total and speed, all in binary units (KiB, MiB, GiB) as every summary
    prints them (human_bytes): rich's defaults are decimal, and "1.1 GB" of a "1.0 GiB" save reads as a bug."""
    from rich.progress import BarColumn, DownloadColumn, ProgressColumn, TextColumn
    from rich.text import Text

    class BinarySpeedColumn(ProgressColumn):
        def render(self, task) -> Text:
            speed = task.finished_speed or task.speed
            return Text("?" if speed is None else f"{human_bytes(speed)}/s", style="progress.data.speed")

    return [TextColumn("{task.description}"), BarColumn(), DownloadColumn(binary_units=True), BinarySpeedColumn()]


def progress_bar(description: str, total: int):
    """A rich progress bar on stderr (silent when stderr is not a terminal). Use as a context manager; the returned
    callable advances it by a number of bytes."""
    from rich.progress import Progress

    progress = Progress(*progress_columns(), console=err, transient=True, disable=not err.is_terminal)

    class _Bar:
        def __enter__(self):
            progress.__enter__()
            task = progress.add_task(description, total=total)
            return functools.partial(progress.advance, task)

        def __exit__(self, *exc):
            return progress.__exit__(*exc)

    return _Bar()
