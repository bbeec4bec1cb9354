from __future__ import annotations

import click

from ..config import resolve_store_path
from ..store import Store
from ._app import command, err


@command("init")
@click.argument("path", required=False)
@click.option("--chunk-bytes", type=click.IntRange(4096, 1 << 31), default=None, help="Blob size for large tensors.")
def init(path: str | None, store_path: str | None, chunk_bytes: int | None) -> None:
    """Create a store at PATH (default: $CKPT_STORE, else ./.ckpt). Does nothing to an existing store.

    \b
    Examples:
      ckpt init
      ckpt init /data/ckpts
    Exit codes: 0 ok, 1 failure, 2 usage error.
    """
    root = resolve_store_path(path or store_path)
    existed = (root / "store.json").exists()
    store = Store.init(root, chunk_bytes=chunk_bytes)
    err.print(f"{'Store already exists' if existed else 'Initialized empty store'} at {store.root}")
