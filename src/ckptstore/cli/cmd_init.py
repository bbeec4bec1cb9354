from __future__ import annotations

import click

from ..config import resolve_store_location
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
      ckpt init s3://my-bucket/ckpts     (credentials and endpoint from AWS_* variables)
    Exit codes: 0 ok, 1 failure, 2 usage error.
    """
    where = resolve_store_location(path or store_path)
    if isinstance(where, str):  # a remote store (s3://BUCKET/PREFIX): init says whether one was there already
        existed = Store.exists(where)
        store = Store.init(where, chunk_bytes=chunk_bytes)
        err.print(f"{'Store already exists' if existed else 'Initialized empty store'} at {store.url}")
        return
    root = where
    existed = (root / "store.json").exists()
    store = Store.init(root, chunk_bytes=chunk_bytes)
    err.print(f"{'Store already exists' if existed else 'Initialized empty store'} at {store.root}")
