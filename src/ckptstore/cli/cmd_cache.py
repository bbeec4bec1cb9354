from __future__ import annotations

import click

from ..store import Store
from ._app import counted, debug_option, store_option, err, fmt_bytes, json_option, out, print_json
from .cmd_policy import parse_bytes


@click.group("cache", context_settings={"help_option_names": ["-h", "--help"]})
def cache() -> None:
    """The local blob cache of remote stores: what loads from s3://... keep on this machine.

    \b
    Blobs are checked against their hash before they enter; the cache is capped at $CKPT_CACHE_MAX_BYTES
    (default 20 GiB) and lives in $CKPT_CACHE_DIR (default $XDG_CACHE_HOME/ckptstore/blobs).
    Examples:
      ckpt cache du
      ckpt cache prune --max-bytes 5GB
    Exit codes: 0 ok, 1 failure, 2 usage error.
    """


@cache.command("du")
@json_option
@debug_option
@store_option  # accepted like every command's; the cache is the user's, shared by every remote store
def cache_du(as_json: bool, store_path: str | None) -> None:
    """What the cache holds: its folder, blobs and bytes, and its cap.

    \b
    Examples:
      ckpt cache du
      ckpt cache du --json
    Exit codes: 0 ok, 1 failure, 2 usage error.
    """
    usage = Store.cache_usage()
    if as_json:
        print_json(usage.to_json())
        return
    out.print(f"{usage.path}: {counted(usage.blobs, 'blob')}, {fmt_bytes(usage.bytes)}"
              f" (cap {fmt_bytes(usage.max_bytes)})")


@cache.command("prune")
@click.option("--max-bytes", metavar="SIZE", default=None, help="Keep at most this much (e.g. 5GB; 0 empties it).")
@json_option
@debug_option
@store_option
def cache_prune(max_bytes: str | None, as_json: bool, store_path: str | None) -> None:
    """Remove the least recently used blobs until the cache holds at most --max-bytes (default: its cap).

    \b
    Examples:
      ckpt cache prune
      ckpt cache prune --max-bytes 0
    Exit codes: 0 ok, 1 failure, 2 usage error.
    """
    limit = parse_bytes(max_bytes) if max_bytes is not None else None
    removed, freed = Store.prune_cache(limit)
    if as_json:
        print_json({"blobs_removed": removed, "bytes_freed": freed})
        return
    err.print(f"Removed {counted(removed, 'blob')} ({fmt_bytes(freed)}) from the cache.")
