"""Store configuration: `store.json`, and where a store is when none is named.

Resolution order, applied when a store is opened (never at import time): an explicit argument, then the
environment (`CKPT_STORE`), then the default `./.ckpt`.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path

from .errors import IncompatibleFormat, InvalidArgument

FORMAT_VERSION = 2
# Formats this version reads: 1 is upgraded in place when first opened for writing (see _repo/opening.py).
READABLE_FORMATS = (1, 2)
DEFAULT_STORE = ".ckpt"
ENV_STORE = "CKPT_STORE"
# 16 MiB: large enough that a BERT-base save writes a few hundred files (each file costs a create and a rename),
# small enough that a fine-tune that changes a few rows of a 90 MB embedding rewrites one sixth of it.
DEFAULT_CHUNK_BYTES = 16 * 1024 * 1024
# s3://bucket/x, gs://..., hf://..., file://...: taken as a path, "s3:" became a local folder named "s3:".
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


@dataclass(frozen=True)
class StoreConfig:
    format: int = FORMAT_VERSION
    hash: str = "blake3"
    chunk_bytes: int = DEFAULT_CHUNK_BYTES
    compression: str = "none"
    # A random name given at init (format 2): tells a store from another later made at the same place, so that a
    # reader's cached index of the first is never taken for the second's.
    id: str = ""

    def to_json_bytes(self) -> bytes:
        return (json.dumps(asdict(self), indent=2, sort_keys=True) + "\n").encode()

    @classmethod
    def from_json_bytes(cls, data: bytes, *, path: str) -> "StoreConfig":
        try:
            raw = json.loads(data)
        except ValueError as exc:
            raise IncompatibleFormat(f"{path} is not valid JSON ({exc}).", hint="Restore store.json from a backup.")
        fmt = raw.get("format")
        if fmt not in READABLE_FORMATS:
            raise IncompatibleFormat(
                f"Store at {path} has format {fmt!r}; this ckptstore reads formats 1 and 2.",
            )
        if raw.get("hash") != "blake3" or raw.get("compression", "none") != "none":
            raise IncompatibleFormat(
                f"Store at {path} uses hash={raw.get('hash')!r}, compression={raw.get('compression')!r},"
                " which this ckptstore cannot read."
            )
        chunk = raw.get("chunk_bytes", DEFAULT_CHUNK_BYTES)
        if not isinstance(chunk, int) or chunk < 4096:
            raise IncompatibleFormat(f"Store at {path} has an invalid chunk_bytes {chunk!r}.")
        store_id = raw.get("id", "")
        return cls(format=fmt, hash="blake3", chunk_bytes=chunk, compression="none",
                   id=store_id if isinstance(store_id, str) else "")


def env_seconds(name: str, default: float, *, minimum: float = 0.0) -> float:
    """A duration in seconds from the environment variable `name`: `default` when unset or not a number, never
    below `minimum`. Read at each call, never at import time."""
    raw = os.environ.get(name, "")
    try:
        return max(minimum, float(raw)) if raw else default
    except ValueError:
        return default


def resolve_store_path(path: str | os.PathLike[str] | None = None) -> Path:
    if path is not None and str(path) != "":
        return _local(str(path), "")
    env = os.environ.get(ENV_STORE)
    if env:
        return _local(env, f" (from ${ENV_STORE})")
    return Path(DEFAULT_STORE)


# Schemes of remote stores (object storage); any other URL is refused as before.
REMOTE_SCHEMES = ("s3", "gs", "az", "abfs", "abfss", "azure")


def is_remote_location(location: str | os.PathLike[str] | None) -> bool:
    text = str(location) if location is not None else ""
    return bool(_URL.match(text)) and text.split(":", 1)[0].lower() in REMOTE_SCHEMES


def resolve_store_location(location: str | os.PathLike[str] | None = None) -> str | Path:
    """The store's location: a remote URL (s3://bucket/prefix, gs://, az://) as given, else a local folder."""
    if location is not None and str(location) != "":
        return str(location) if is_remote_location(location) else _local(str(location), "")
    env = os.environ.get(ENV_STORE)
    if env and is_remote_location(env):
        return env
    return resolve_store_path(None)


def _local(path: str, source: str) -> Path:
    """A store is a local folder: refuse a URL rather than create a folder named after its scheme."""
    if _URL.match(path):
        raise InvalidArgument(
            f"Store {path!r}{source} is a URL of a kind ckptstore cannot reach; stores are local folders or"
            " s3://, gs://, az:// URLs.",
            hint="Give a folder path (e.g. --store /data/ckpts) or an object-storage URL (s3://BUCKET/PREFIX).",
        )
    return Path(path)


def check_chunk_bytes(chunk_bytes: int) -> int:
    if chunk_bytes < 4096 or chunk_bytes > 1 << 31:
        raise InvalidArgument(f"chunk_bytes {chunk_bytes} is out of range.", hint="Use 4 KiB to 2 GiB.")
    return chunk_bytes
