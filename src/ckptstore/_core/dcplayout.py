"""The layout of a torch.distributed.checkpoint (DCP) checkpoint in the store, as plain JSON records.

DCP keeps its own metadata (which tensor chunk lives where) as a pickle; the store never unpickles what it stores,
so a DCP checkpoint carries ``dcp/metadata.json`` instead, written and read by these records. Every rank's items
are tensors of one safetensors file, ``dcp/rank-NNNNN.safetensors`` (a non-tensor item is the bytes DCP gives for
it, stored as a uint8 tensor), so they are hashed, deduplicated and chunked like any safetensors data.

    {"format": "ckptstore-dcp", "version": 1, "dcp_version": "1.0.0",
     "items": [{"fqn": "model.w", "kind": "tensor", "dtype": "float32", "size": [16, 8], "requires_grad": true,
                "chunks": [{"offsets": [0, 0], "sizes": [8, 8], "file": "dcp/rank-00000.safetensors",
                            "tensor": "model.w@0,0"}, ...]},
               {"fqn": "optim.param_groups.0.lr", "kind": "bytes", "file": "...", "tensor": "..."}],
     "planner_data": {"model.w": ["model", "w"]}, "storage_meta": {...} | null,
     "hf": {"model_key": "model"} | null}
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from ..errors import CorruptObject

DCP_FORMAT = "ckptstore-dcp"
DCP_VERSION = 1
METADATA_PATH = "dcp/metadata.json"
DATA_DIR = "dcp/"


def rank_file(rank: int) -> str:
    return f"{DATA_DIR}rank-{rank:05d}.safetensors"


@dataclass(frozen=True)
class DcpChunk:
    offsets: tuple[int, ...]
    sizes: tuple[int, ...]
    file: str
    tensor: str


@dataclass(frozen=True)
class DcpItem:
    """One entry of the state dict: a tensor in chunks (one per shard that was saved), or bytes (`file`, `tensor`)."""

    fqn: str
    kind: str  # "tensor" or "bytes"
    dtype: str = ""  # torch's name without "torch.": float32, bfloat16, int64, ...
    size: tuple[int, ...] = ()
    requires_grad: bool = False
    chunks: tuple[DcpChunk, ...] = ()
    file: str = ""
    tensor: str = ""

    def to_json(self) -> dict[str, Any]:
        if self.kind == "bytes":
            return {"fqn": self.fqn, "kind": "bytes", "file": self.file, "tensor": self.tensor}
        return {"fqn": self.fqn, "kind": "tensor", "dtype": self.dtype, "size": list(self.size),
                "requires_grad": self.requires_grad,
                "chunks": [{"offsets": list(c.offsets), "sizes": list(c.sizes), "file": c.file, "tensor": c.tensor}
                           for c in self.chunks]}


@dataclass(frozen=True)
class DcpLayout:
    items: tuple[DcpItem, ...]
    dcp_version: str | None = None
    planner_data: dict[str, list[str | int]] | None = None
    storage_meta: dict[str, Any] | None = None
    hf: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def files(self) -> list[str]:
        out: dict[str, None] = {}
        for item in self.items:
            for c in item.chunks:
                out[c.file] = None
            if item.file:
                out[item.file] = None
        return list(out)

    def to_bytes(self) -> bytes:
        raw = {"format": DCP_FORMAT, "version": DCP_VERSION, "dcp_version": self.dcp_version,
               "items": [i.to_json() for i in self.items], "planner_data": self.planner_data,
               "storage_meta": self.storage_meta, "hf": self.hf}
        return (json.dumps(raw, sort_keys=True, separators=(",", ":"), allow_nan=False) + "\n").encode()

    @classmethod
    def from_bytes(cls, data: bytes, *, checkpoint: str = "") -> "DcpLayout":
        where = f" of {checkpoint!r}" if checkpoint else ""
        try:
            raw = json.loads(data)
            if raw.get("format") != DCP_FORMAT or raw.get("version") != DCP_VERSION:
                raise ValueError(f"format {raw.get('format')!r} version {raw.get('version')!r}")
            return cls(
                items=tuple(_item(r) for r in raw["items"]),
                dcp_version=raw.get("dcp_version"),
                planner_data=_planner_data(raw.get("planner_data")),
                storage_meta=raw.get("storage_meta"),
                hf=raw.get("hf"),
            )
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise CorruptObject(
                f"The DCP metadata {METADATA_PATH}{where} cannot be read ({type(exc).__name__}: {str(exc)[:100]}).",
                hint="Run 'ckpt verify' on the checkpoint; a DCP checkpoint is written by ckptstore's StoreWriter.",
            ) from None


def _ints(raw: Any) -> tuple[int, ...]:
    out = tuple(raw)
    if not all(type(x) is int and x >= 0 for x in out):
        raise ValueError(f"not a list of whole numbers: {raw!r}")
    return out


def _item(raw: dict[str, Any]) -> DcpItem:
    fqn = raw["fqn"]
    if not isinstance(fqn, str):
        raise TypeError("fqn is not a string")
    if raw["kind"] == "bytes":
        return DcpItem(fqn, "bytes", file=str(raw["file"]), tensor=str(raw["tensor"]))
    if raw["kind"] != "tensor":
        raise ValueError(f"item kind {raw['kind']!r}")
    size = _ints(raw["size"])
    chunks = []
    for c in raw["chunks"]:
        offsets, sizes = _ints(c["offsets"]), _ints(c["sizes"])
        if len(offsets) != len(size) or len(sizes) != len(size) or any(
            o + s > n for o, s, n in zip(offsets, sizes, size)
        ):
            raise ValueError(f"chunk {offsets}+{sizes} does not fit {fqn!r} of size {list(size)}")
        chunks.append(DcpChunk(offsets, sizes, str(c["file"]), str(c["tensor"])))
    return DcpItem(fqn, "tensor", dtype=str(raw["dtype"]), size=size, requires_grad=bool(raw.get("requires_grad")),
                   chunks=tuple(chunks))


def _planner_data(raw: Any) -> dict[str, list[str | int]] | None:
    if raw is None:
        return None
    if not isinstance(raw, dict) or not all(
        isinstance(v, list) and all(type(p) in (str, int) for p in v) for v in raw.values()
    ):
        raise ValueError("planner_data is not a map of key paths")
    return raw
