from __future__ import annotations

import sys

import click

from ._app import command, open_store


@command("cat")
@click.argument("ref")
@click.argument("file")
def cat(ref: str, file: str, store_path: str | None) -> None:
    """Print FILE of checkpoint REF to stdout, byte for byte (config.json, trainer_state.json, ...).

    FILE is a path inside the checkpoint as 'ckpt show REF' lists it. The bytes are checked against their hash.

    \b
    Examples:
      ckpt cat bert-sst2:best config.json
      ckpt cat bert-sst2/step-500 trainer_state.json | jq .log_history
    Exit codes: 0 ok, 1 failure (unknown reference or file, damaged blob), 2 usage error.
    """
    data = open_store(store_path).read_file(ref, file)
    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()
