from __future__ import annotations

import contextlib

import click
from rich.markup import escape

from ._app import command, err, json_option, open_store, print_json


@contextlib.contextmanager
def hub_output():
    """huggingface_hub's log lines ("No files have been modified since last commit...") are about its steps, and
    the command prints its own summary: keep only its errors. Its progress bars show on a terminal only."""
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars
    from huggingface_hub.utils import logging as hub_logging

    level, bars_off = hub_logging.get_verbosity(), are_progress_bars_disabled()
    hub_logging.set_verbosity_error()
    if not err.is_terminal:
        disable_progress_bars()
    try:
        yield
    finally:
        hub_logging.set_verbosity(level)
        if not bars_off:
            enable_progress_bars()


@command("push")
@click.argument("ref")
@click.argument("repo_id")
@click.option("--revision", metavar="BRANCH", help="Branch to commit to (default main; created from main if new).")
@click.option("--private", is_flag=True, help="Create the repository private (an existing one keeps its visibility).")
@click.option("--tag", metavar="T", help="Also point Hub tag T at the commit (moved if it pointed elsewhere).")
@click.option("-m", "--message", help="Commit message (default: 'Upload NAME (ID) with ckptstore').")
@json_option
def push(ref, repo_id, revision, private, tag, message, as_json, store_path) -> None:
    """Publish checkpoint REF to the Hugging Face Hub repository REPO_ID.

    One commit holds the checkpoint's files exactly as exported plus its model card as README.md (files the
    revision has and the checkpoint does not are removed from it). When the revision already holds these files,
    no commit is made. The repository and commit are recorded on the checkpoint ('ckpt show' lists them); an
    interrupted push records nothing, and running it again uploads what is missing. The token is
    huggingface_hub's: HF_TOKEN, else the one 'hf auth login' saved. HF_ENDPOINT selects another Hub.

    \b
    Examples:
      ckpt push bert-sst2:best ana/bert-sst2
      ckpt push bert-sst2:best ana/bert-sst2 --revision v2 --tag v2.0 --private
    Exit codes: 0 ok, 1 failure (no token, refused, unreachable), 2 usage error.
    """
    store = open_store(store_path)
    with hub_output():
        result = store.push(ref, repo_id, revision=revision, private=private, tag=tag, message=message)
    if as_json:
        print_json(result.to_json())
        return
    where = f"{result.repo_id}@{result.revision}"
    tags = f", tagged {', '.join(result.tags)}" if result.tags else ""
    if result.pushed:
        err.print(f"Pushed [bold]{escape(result.name)}[/] to {escape(where)}: commit {result.commit[:12]}"
                  f" ({result.files} files){escape(tags)}")
    else:
        err.print(f"{escape(where)} already holds {escape(result.name)} (commit {result.commit[:12]}); nothing to"
                  f" push{escape(tags)}")
    click.echo(result.url)
