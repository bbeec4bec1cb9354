"""Weights into safetensors: legacy weight pickles converted on import, and `Store.convert` (dtype, shards).

A pickle can run any code while it is read, so a weight pickle is only ever read with
``torch.load(weights_only=True)``: torch's restricted unpickler, which builds tensors, dicts and numbers and refuses
every other global. A refusal becomes :class:`~ckptstore.errors.UnsafePickle` and nothing in the file runs.
Training-state pickles (optimizer.pt, scheduler.pt, rng_state*.pth, training_args.bin) are not weights: they are
stored verbatim and never opened at all; only the names below are ever read.

safetensors forbids two names for one memory, which pickles allow (tied embeddings saved by torch.save share their
storage). Aliases are dropped exactly as ``save_pretrained`` drops them, through transformers' own
``remove_tied_weights_from_state_dict`` on the model class built on the meta device. When the class is unknown
(no architectures, remote code), every name is kept: the file then holds the tied tensor twice, which loads the
same, and the store keeps its bytes once since both copies hash to the same blob.
"""

from __future__ import annotations

import collections
import contextlib
import json
import pickle
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from .._core.names import check_name
from .._format.manifest import Manifest
from .._format.safetensors import ST_TO_TORCH
from ..errors import InvalidArgument, InvalidCheckpoint, UnsafePickle
from .capture import capture_model, tensors_source
from .compat import read_config
from .ingest import SourceFile, bytes_source
from .load import load_state_dict, materialized, weight_files
from .save import check_name_free, save_sources

if TYPE_CHECKING:
    from .._core.info import CheckpointInfo
    from .._repo.repository import Repository

# pytorch_model.bin, pytorch_model-00001-of-00003.bin, pytorch_model.fp16.bin, adapter_model.bin: the weight files
# transformers and PEFT wrote before safetensors. Only root-level files with these names are ever unpickled.
_LEGACY_WEIGHTS = re.compile(r"(pytorch_model|adapter_model)((?:\.[A-Za-z0-9_]+)?(?:-\d+-of-\d+)?)\.bin")
_LEGACY_INDEX = re.compile(r"pytorch_model\.bin\.index((?:\.[A-Za-z0-9_]+)?)\.json")
_ST_INDEX = re.compile(r"(?:model|adapter_model)\.safetensors\.index(?:\.[A-Za-z0-9_]+)?\.json")
ST_METADATA = {"format": "pt"}  # what save_pretrained writes; from_pretrained checks it

DTYPES: dict[str, torch.dtype] = {
    "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
    "fp16": torch.float16, "float16": torch.float16, "half": torch.float16,
    "fp32": torch.float32, "float32": torch.float32, "float": torch.float32,
}
_DTYPE_LABEL = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}


# -- names ----------------------------------------------------------------------------------------------------------
def safetensors_name(path: str) -> str | None:
    """The safetensors file a legacy weight pickle becomes ('pytorch_model-00001-of-00002.bin' ->
    'model-00001-of-00002.safetensors'), or None when `path` is not a legacy weight file."""
    m = _LEGACY_WEIGHTS.fullmatch(path)
    if m is None:
        return None
    stem = "model" if m.group(1) == "pytorch_model" else m.group(1)
    return f"{stem}{m.group(2)}.safetensors"


def safetensors_index_name(path: str) -> str | None:
    m = _LEGACY_INDEX.fullmatch(path)
    return f"model.safetensors.index{m.group(1)}.json" if m else None


def is_legacy_weights(path: str) -> bool:
    return safetensors_name(path) is not None


# -- reading a weight pickle ------------------------------------------------------------------------------------------
def read_weight_pickle(path: Path, *, display: str) -> dict[str, torch.Tensor] | None:
    """The tensors of a legacy weight file, read with torch's restricted unpickler only.

    Returns None when the file is safe but holds more than a flat dict of tensors (it is then kept verbatim).
    Raises UnsafePickle when it asks for anything else (a function, a class, an unknown opcode): the restricted
    unpickler stops at the first such request, before anything is called."""
    with open(path, "rb") as f:
        is_zip = f.read(4) == b"PK\x03\x04"
    try:
        # mmap: tensors stay in the page cache instead of being copied into memory (zip format only).
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=is_zip)
    except pickle.UnpicklingError as exc:
        raise UnsafePickle(
            f"Refused {display}: it asks for {_refusal_reason(str(exc))}, not only tensors; nothing in it was run.",
            path=display,
            hint="Load it only if you trust its source, re-save it with save_pretrained (safetensors), and import"
            " that folder; or import with --keep-pickles to store the file verbatim, unread.",
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, IndexError, TypeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InvalidCheckpoint(
            f"{display} cannot be read as a PyTorch weight file ({first[:200]}).",
            path=display,
            hint="The file is truncated or not a torch.save file; copy it again, or import with --keep-pickles.",
        ) from None
    if not isinstance(obj, Mapping) or not obj:
        return None
    if not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
        return None
    return dict(obj)


def _refusal_reason(message: str) -> str:
    """What torch's restricted unpickler refused, without its advice to retry with weights_only=False."""
    m = re.search(r"(?:GLOBAL|global) ([\w.]+)", message)
    if m:
        return repr(m.group(1))
    m = re.search(r"WeightsUnpickler error: ([^\n]+)", message)
    return f"something else ({m.group(1).strip()})" if m else "something else"


# -- tied tensors -----------------------------------------------------------------------------------------------------
def model_class_for(config: Mapping[str, Any] | None) -> tuple[type, Any] | None:
    """The transformers class its `architectures` names and the config object, or None when transformers has no
    such class. Never for remote code: building it would run code the checkpoint ships."""
    if not config or "auto_map" in config:
        return None
    archs = config.get("architectures") or []
    if not archs or not isinstance(archs[0], str):
        return None
    import transformers
    from transformers import PreTrainedModel
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    cls = getattr(transformers, archs[0], None)
    model_type = config.get("model_type")
    if not (isinstance(cls, type) and issubclass(cls, PreTrainedModel)) or model_type not in CONFIG_MAPPING:
        return None
    return cls, CONFIG_MAPPING[model_type].from_dict(dict(config))


def drop_tied_aliases(state_dict: dict[str, torch.Tensor], config: Mapping[str, Any] | None) -> dict[str, torch.Tensor]:
    """`state_dict` without the aliases save_pretrained would drop (see the module docstring)."""
    from transformers.pytorch_utils import id_tensor_storage

    storages = collections.Counter(id_tensor_storage(t) for t in state_dict.values() if t.numel())
    if all(n == 1 for n in storages.values()):
        return state_dict
    found = model_class_for(config)
    if found is None:
        return state_dict
    from transformers.modeling_utils import remove_tied_weights_from_state_dict

    cls, cfg = found
    try:
        with torch.device("meta"):
            model = cls(cfg)
        # It edits the dict it is given; a copy keeps `state_dict` whole for the fallback.
        return remove_tied_weights_from_state_dict(dict(state_dict), model)
    except Exception:  # noqa: BLE001 - any failure to build the class means: class unknown here, keep every name
        return state_dict


# -- import: a folder's pickles ------------------------------------------------------------------------------------
@dataclass
class FolderConversion:
    """What import stores instead of a folder's weight pickles: the safetensors sources (their tensors mapped from
    the pickles), and which original files they replace."""

    sources: list[SourceFile] = field(default_factory=list)
    replaced: set[str] = field(default_factory=set)
    notes: list[str] = field(default_factory=list)


def convert_folder_pickles(files: list[tuple[str, Path]], config: Mapping[str, Any] | None) -> FolderConversion:
    """Convert the root-level legacy weight files (and their shard index) of a checkpoint folder."""
    out = FolderConversion()
    present = {rel for rel, _ in files}
    candidates = [(rel, full) for rel, full in files if "/" not in rel and is_legacy_weights(rel)]
    if not candidates:
        return out
    converted: dict[str, dict[str, torch.Tensor]] = {}
    for rel, full in candidates:
        target = safetensors_name(rel)
        assert target is not None
        if target in present:
            out.notes.append(f"kept {rel} verbatim: the folder already has {target}")
            continue
        tensors = read_weight_pickle(full, display=rel)
        if tensors is None:
            out.notes.append(f"kept {rel} verbatim: it holds more than a flat dict of tensors")
            continue
        converted[rel] = drop_tied_aliases(tensors, config)

    indexes = [(rel, full) for rel, full in files if "/" not in rel and safetensors_index_name(rel)]
    for rel, full in indexes:
        try:
            index = json.loads(full.read_text())
            shards = set(index["weight_map"].values())
        except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError):
            raise InvalidCheckpoint(f"Shard index {rel} is not valid JSON with a weight_map.", path=rel) from None
        if not shards <= set(converted):
            # A sharded checkpoint is converted whole or not at all: half of each format would not load.
            for shard in shards & set(converted):
                del converted[shard]
            out.notes.append(f"kept {rel} and its shards verbatim: not every shard could be converted")
            continue
        target = safetensors_index_name(rel)
        assert target is not None
        weight_map = {name: safetensors_name(shard) for shard in sorted(shards) for name in converted[shard]}
        metadata = dict(index.get("metadata") or {})
        metadata["total_size"] = sum(t.numel() * t.element_size() for s in shards for t in converted[s].values())
        body = {"metadata": metadata, "weight_map": dict(sorted(weight_map.items()))}
        src = bytes_source(target, (json.dumps(body, indent=2, sort_keys=True) + "\n").encode())
        src.converted_from = rel
        out.sources.append(src)
        out.replaced.add(rel)

    for rel, tensors in converted.items():
        target = safetensors_name(rel)
        assert target is not None
        src = tensors_source(target, tensors, ST_METADATA)
        src.converted_from = rel
        out.sources.append(src)
        out.replaced.add(rel)
    return out


# -- Store.convert --------------------------------------------------------------------------------------------------
def parse_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        if dtype is not None and dtype not in _DTYPE_LABEL:
            raise InvalidArgument(f"Unsupported dtype {dtype}.", hint="Use bf16, fp16 or fp32.")
        return dtype
    found = DTYPES.get(str(dtype).lower())
    if found is None:
        raise InvalidArgument(f"Unknown dtype {dtype!r}.", hint="Use bf16, fp16 or fp32.")
    return found


def parse_shard_size(size: int | str | None) -> int | None:
    """Bytes from 2GB (10**9 each, as transformers counts), 2GiB (2**30 each) or a plain number of bytes."""
    if size is None or (isinstance(size, int) and not isinstance(size, bool) and size > 0):
        return size
    from huggingface_hub.serialization._base import parse_size_to_int

    text = str(size).strip().upper()
    binary = {"KIB": 1 << 10, "MIB": 1 << 20, "GIB": 1 << 30, "TIB": 1 << 40}
    try:
        if text.isdigit() and int(text) > 0:
            return int(text)
        for unit, factor in binary.items():
            if text.endswith(unit):
                value = float(text[: -len(unit)])
                if value > 0:
                    return int(value * factor)
                break
        else:
            if (parsed := parse_size_to_int(text)) > 0:
                return parsed
    except ValueError:
        pass
    raise InvalidArgument(f"Invalid shard size {size!r}.", hint="Write it like 2GB, 500MB, 1GiB or a number of bytes.")


def convert_checkpoint(
    repo: "Repository",
    ref: str,
    *,
    to: str = "safetensors",
    dtype: str | torch.dtype | None = None,
    max_shard_size: int | str | None = None,
    name: str | None = None,
) -> "CheckpointInfo":
    """A new checkpoint holding REF's weights as safetensors (in `dtype`, in shards of `max_shard_size`), parent REF.

    When transformers knows the checkpoint's architecture, the model is loaded and captured exactly as
    ``save_pretrained`` would write it (ties, kept-in-fp32 modules, weight renames all as transformers does them).
    Otherwise the tensors themselves are converted. Every other file (tokenizer, training state) is carried over
    by reference, without reading it."""
    if to != "safetensors":
        raise InvalidArgument(f"Cannot convert to {to!r}.", hint="The only target format is safetensors.")
    target = parse_dtype(dtype)
    shard = parse_shard_size(max_shard_size)
    src_id = repo.resolve(ref)
    manifest = repo.manifest(src_id)
    if name is None:
        name = f"{manifest.name}-{_DTYPE_LABEL[target] if target else 'safetensors'}"
    check_name(name)
    check_name_free(repo, name)
    config = read_config(repo.blobs, manifest)
    found = model_class_for(config)
    with contextlib.ExitStack() as stack:
        live = _live_sources(repo, src_id, manifest, found, target, shard, stack) if found is not None else None
        if live is not None:
            (sources, consumed), how = live, "model"
        else:
            sources, consumed = _tensor_sources(repo, src_id, manifest, config, target, shard, stack)
            how = "tensors"
        produced = {s.path for s in sources}
        keep = [f for f in manifest.files if f.path not in produced and f.path not in consumed]
        record = {"from": src_id, "to": to, "dtype": _DTYPE_LABEL.get(target) if target else None, "via": how}
        cid, _ = save_sources(
            repo, sources, name, parent_id=src_id, step=manifest.step, metadata={"converted": record},
            message=f"converted from {manifest.name}", keep=keep,
        )
    # The commit moved the run's tags (a conversion is neither latest nor best of a run that has its source);
    # the run's policy is not applied: converting is not a training save and must not be what deletes checkpoints.
    return repo.info(cid)


def _weight_paths(manifest: Manifest) -> set[str]:
    """The files a conversion replaces: the model weights (safetensors and legacy pickles) and their indexes."""
    out = {f.path for f in weight_files(manifest)}
    out |= set(_pickle_paths(manifest))
    out |= {f.path for f in manifest.files if _LEGACY_INDEX.fullmatch(f.path) or _ST_INDEX.fullmatch(f.path)}
    return out


def _native_dtype(manifest: Manifest) -> torch.dtype | str:
    """The floating dtype most of the stored weights have: a conversion without --dtype keeps it."""
    floats = {k: v for k, v in (manifest.model.get("dtypes") or {}).items() if k in ("F32", "F16", "BF16", "F64")}
    return ST_TO_TORCH[max(floats, key=floats.__getitem__)] if floats else "auto"


def _live_sources(repo, src_id, manifest, found, target, shard, stack) -> tuple[list[SourceFile], set[str]] | None:
    """The weights as save_pretrained writes them, from the loaded model; None when the model and the weights do
    not match exactly (keys missing or left over), since re-saving would then invent or drop tensors."""
    cls, config = found
    dtype = target or _native_dtype(manifest)
    pickles = _pickle_paths(manifest)
    if pickles:
        # Read here, not by from_pretrained: the same restricted unpickler, but a refusal becomes UnsafePickle.
        state = _read_pickles(repo, manifest, pickles, None, stack)
        model, info = cls.from_pretrained(None, config=config, state_dict=state, dtype=dtype, output_loading_info=True)
    else:
        from .modelload import load_model

        model, info = load_model(repo, src_id, cls, dtype=dtype, output_loading_info=True)
    if any(info.get(k) for k in ("missing_keys", "unexpected_keys", "mismatched_keys")):
        return None
    return capture_model(model, None, max_shard_size=shard or "50GB"), _weight_paths(manifest)


def _pickle_paths(manifest: Manifest) -> list[str]:
    return sorted(f.path for f in manifest.files if "/" not in f.path and is_legacy_weights(f.path))


def _read_pickles(repo, manifest, pickles, config, stack) -> dict[str, torch.Tensor]:
    folder = stack.enter_context(materialized(repo, manifest, only=lambda p: p in pickles))
    state: dict[str, torch.Tensor] = {}
    for path in pickles:
        tensors = read_weight_pickle(folder / path, display=path)
        if tensors is None:
            raise InvalidCheckpoint(f"{path} of {manifest.name!r} holds more than a flat dict of tensors.")
        state.update(drop_tied_aliases(tensors, config) if config is not None else tensors)
    return state


def _tensor_sources(repo, src_id, manifest, config, target, shard, stack) -> tuple[list[SourceFile], set[str]]:
    consumed = _weight_paths(manifest)
    st_files = [f for f in manifest.files if f.path in consumed and f.is_safetensors]
    pickles = _pickle_paths(manifest)
    state: dict[str, torch.Tensor] = {}
    if st_files:
        state.update(load_state_dict(repo.blobs, manifest, files=st_files))
    if pickles:
        state.update(_read_pickles(repo, manifest, pickles, config or {}, stack))
    if not state:
        raise InvalidCheckpoint(f"Checkpoint {manifest.name!r} has no weights to convert.", path=manifest.name)
    if target is not None:
        state = {k: v.to(target) if v.is_floating_point() else v for k, v in state.items()}
    stems = {_stem(p) for p in consumed if not p.endswith(".json")}
    sources: list[SourceFile] = []
    if stems <= {"model"}:
        from huggingface_hub import split_torch_state_dict_into_shards

        split = split_torch_state_dict_into_shards(
            state, filename_pattern="model{suffix}.safetensors", max_shard_size=shard or "50GB"
        )
        for path, names in split.filename_to_tensors.items():
            sources.append(tensors_source(path, {n: state[n] for n in names}, ST_METADATA))
        if split.is_sharded:
            index = {"metadata": split.metadata, "weight_map": split.tensor_to_filename}
            sources.append(bytes_source("model.safetensors.index.json", _json_bytes(index)))
    elif len(stems) == 1 and shard is None:
        (stem,) = stems
        sources.append(tensors_source(f"{stem}.safetensors", state, ST_METADATA))
    else:
        raise InvalidArgument(
            f"Checkpoint {manifest.name!r} has weights named {', '.join(sorted(stems))}: cannot tell how to shard them.",
            hint="Convert it without --max-shard-size, or load it and save it with save_pretrained.",
        )
    if target is not None and config is not None:
        # The config records the weights' dtype (from_pretrained's dtype="auto" reads it).
        key = "dtype" if "dtype" in config or "torch_dtype" not in config else "torch_dtype"
        sources.append(bytes_source("config.json", _json_bytes({**config, key: str(target).split(".")[1]})))
    return sorted(sources, key=lambda s: s.path), consumed


def _stem(path: str) -> str:
    stem = re.split(r"[.-]", path, maxsplit=1)[0]
    return "model" if stem == "pytorch_model" else stem


def _json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode()
