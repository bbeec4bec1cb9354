"""Export a torch.distributed.checkpoint (DCP) checkpoint of a transformers model as a folder `from_pretrained`
loads: every model tensor consolidated from the shards the ranks saved, written as safetensors shards by size (with
``model.safetensors.index.json`` when there are several), beside the config, generation config and tokenizer files
stored with the DCP state. Optimizer state and other entries stay out: the folder is the model.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from .._core.dcplayout import DATA_DIR, METADATA_PATH, DcpItem, DcpLayout
from ..errors import IncompleteCheckpoint, InvalidArgument
from . import load as _load

if TYPE_CHECKING:
    from .._repo.repository import Repository

SAFE_WEIGHTS_NAME = "model.safetensors"
SAFE_WEIGHTS_INDEX_NAME = "model.safetensors.index.json"


def parse_size(size: int | str) -> int:
    from huggingface_hub.serialization._base import parse_size_to_int

    try:
        return size if isinstance(size, int) else parse_size_to_int(size)
    except ValueError:
        raise InvalidArgument(f"max_shard_size {size!r} is not a size.", hint="Write it like 5GB or 500MB.") from None


def read_layout(repo: "Repository", manifest) -> DcpLayout:
    if manifest.file(METADATA_PATH) is None:
        raise InvalidArgument(
            f"Checkpoint {manifest.name!r} is not a distributed (DCP) checkpoint: it has no {METADATA_PATH}.",
            hint=f"'ckpt export {manifest.name} DEST' writes it as it was saved.",
        )
    data = _load.read_stored_file(repo.blobs, manifest, METADATA_PATH)
    return DcpLayout.from_bytes(data, checkpoint=manifest.name)


def _dtype(name: str) -> torch.dtype:
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise IncompleteCheckpoint(f"Unknown tensor dtype {name!r} in the DCP metadata.")
    return dtype


def export_hf(repo: "Repository", ref: str, dest: Path, *, max_shard_size: int | str = "5GB",
              verify: bool = False) -> Path:
    manifest = repo.manifest(ref)
    layout = read_layout(repo, manifest)
    limit = parse_size(max_shard_size)
    if manifest.file("config.json") is None:
        raise IncompleteCheckpoint(
            f"Checkpoint {manifest.name!r} has no config.json, so from_pretrained could not load an export of it.",
            hint="Save with StoreWriter(store, NAME, model_config=model.config, tokenizer=tokenizer).",
        )
    key = (layout.hf or {}).get("model_key", "model")
    prefix = f"{key}." if key else ""
    items = [i for i in layout.items if i.kind == "tensor" and i.fqn.startswith(prefix)]
    if not items:
        raise IncompleteCheckpoint(
            f"Checkpoint {manifest.name!r} has no tensors under {prefix!r} to export as the model.",
            hint="StoreWriter(model_key=...) names the state dict entry that holds the model ('' for all of it).",
        )
    shards: list[list[DcpItem]] = [[]]
    used = 0
    for item in items:
        nbytes = _numel(item.size) * _dtype(item.dtype).itemsize
        if shards[-1] and used + nbytes > limit:
            shards.append([])
            used = 0
        shards[-1].append(item)
        used += nbytes
    others = [f for f in manifest.files if not f.path.startswith(DATA_DIR)
              and f.path not in (SAFE_WEIGHTS_NAME, SAFE_WEIGHTS_INDEX_NAME)]
    existed = dest.exists()
    _load.export(repo.blobs, manifest, dest, files=others, verify=verify)  # refuses a DEST not new or empty
    try:
        _write_shards(repo, manifest, shards, prefix, dest, verify=verify)
    except BaseException:
        _load.take_back(dest, existed)
        raise
    return dest


def _numel(size: tuple[int, ...]) -> int:
    n = 1
    for d in size:
        n *= d
    return n


def _write_shards(repo: "Repository", manifest, shards: list[list[DcpItem]], prefix: str, dest: Path, *,
                  verify: bool) -> None:
    from safetensors.torch import save_file

    files: dict[str, dict[str, torch.Tensor]] = {}  # a rank file's tensors, mapped from the blobs (no copy)

    def chunk_tensor(path: str, name: str) -> torch.Tensor:
        if path not in files:
            files[path] = _load.load_file_tensors(repo.blobs, manifest, path, verify=verify)
        return files[path][name]

    weight_map: dict[str, str] = {}
    total = 0
    for n, shard in enumerate(shards, start=1):
        filename = SAFE_WEIGHTS_NAME if len(shards) == 1 else f"model-{n:05d}-of-{len(shards):05d}.safetensors"
        tensors: dict[str, torch.Tensor] = {}
        for item in shard:
            full = torch.empty(item.size, dtype=_dtype(item.dtype))
            covered = 0
            for c in item.chunks:
                region = full
                for dim, (o, s) in enumerate(zip(c.offsets, c.sizes)):
                    region = region.narrow(dim, o, s)
                region.copy_(chunk_tensor(c.file, c.tensor).view(c.sizes))
                covered += _numel(c.sizes)
            if covered != full.numel():
                raise IncompleteCheckpoint(
                    f"Checkpoint {manifest.name!r} holds {covered} of the {full.numel()} elements of {item.fqn!r}.",
                    hint="It was saved with a planner that left parts out; load it with dcp.load instead.",
                )
            name = item.fqn[len(prefix):]
            tensors[name] = full
            weight_map[name] = filename
            total += full.numel() * full.element_size()
        save_file(tensors, os.fspath(dest / filename), metadata={"format": "pt"})
        del tensors
    if len(shards) > 1:
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
        (dest / SAFE_WEIGHTS_INDEX_NAME).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
