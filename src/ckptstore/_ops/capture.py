"""A live model as the files `save_pretrained` would write, without writing them.

The store writes exactly the tensors `save_pretrained` would (tied weights removed, weight conversions reverted,
same shards, same safetensors header), straight from the model's memory into blobs: no temporary folder written and
read back. Config, generation config and tokenizer files are small and written by their own save_pretrained.
"""

from __future__ import annotations

import bisect
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

from .ingest import SourceFile, bytes_source
from .._format.safetensors import TORCH_TO_ST, Layout, build_header, st_shape, tensor_bytes
from ..errors import InvalidArgument

SAFE_WEIGHTS_NAME = "model.safetensors"
SAFE_WEIGHTS_INDEX_NAME = "model.safetensors.index.json"


def tensors_source(path: str, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None) -> SourceFile:
    """An in-memory safetensors file: header built as safetensors builds it, data served from tensor memory."""
    prepared: dict[str, torch.Tensor] = {}
    for name, t in tensors.items():
        if not isinstance(t, torch.Tensor):
            raise InvalidArgument(f"Cannot store {name!r}: it is a {type(t).__name__}, not a tensor.")
        if t.dtype not in TORCH_TO_ST:
            raise InvalidArgument(f"Cannot store tensor {name!r}: safetensors has no dtype for {t.dtype}.")
        prepared[name] = t.detach().to("cpu").contiguous()
    header, spans = build_header([(n, TORCH_TO_ST[t.dtype], st_shape(t)) for n, t in prepared.items()], metadata)
    by_start = {}
    for span in spans:
        if span.end > span.start:
            by_start[span.start] = (span, tensor_bytes(prepared[span.name]))

    # Ingest reads each tensor in chunks that never cross a tensor boundary: find the tensor holding `a`.
    starts = sorted(by_start)

    def read(a: int, b: int):
        i = bisect.bisect_right(starts, a) - 1
        span, view = by_start[starts[i]]
        return view[a - span.start : b - span.start]

    size = len(header) + (spans[-1].end if spans else 0)
    layout = Layout(header=header, data_start=len(header), tensors=tuple(spans), metadata=metadata, file_size=size)
    src = SourceFile(path, size, read, layout)
    src._keepalive = prepared  # type: ignore[attr-defined]  # the views point into these tensors
    return src


def capture_model(model: Any, tokenizer: Any = None, *, max_shard_size: int | str = "50GB") -> list[SourceFile]:
    # A model can only be a PreTrainedModel if transformers is imported already; not importing it for a plain
    # torch module keeps a training loop that never uses transformers from paying its import (seconds).
    transformers = sys.modules.get("transformers")
    if transformers is None or not isinstance(model, transformers.PreTrainedModel):
        if isinstance(model, torch.nn.Module):
            # A plain PyTorch module: its state dict as model.safetensors; shared tensors are stored once anyway
            # (same bytes, same blob), so there is nothing to untie.
            state = {k: v for k, v in model.state_dict().items() if isinstance(v, torch.Tensor)}
            return [tensors_source(SAFE_WEIGHTS_NAME, state, {"format": "pt"})]
        raise InvalidArgument(
            f"Cannot save a {type(model).__name__}: give a folder path, a transformers PreTrainedModel or a torch module.",
            hint="store.save('./out/checkpoint-500', NAME) for a folder; store.save(model, NAME) for a live model.",
        )
    if getattr(model, "_hf_peft_config_loaded", False) or getattr(model, "hf_quantizer", None) is not None:
        raise InvalidArgument(
            "Saving a PEFT or quantized model directly is not supported yet.",
            hint="Call model.save_pretrained(DIR) and then store the folder: ckpt save DIR NAME.",
        )
    from huggingface_hub import split_torch_state_dict_into_shards
    from transformers.core_model_loading import revert_weight_conversion
    from transformers.modeling_utils import remove_tied_weights_from_state_dict, unwrap_model

    model_to_save = unwrap_model(model)
    sources: list[SourceFile] = []
    with tempfile.TemporaryDirectory(prefix="ckpt-capture-") as tmp:
        # The same config edits save_pretrained makes before writing config.json.
        model_to_save.config.dtype = str(model_to_save.dtype).split(".")[1]
        model_to_save.config.architectures = [model_to_save.__class__.__name__.removeprefix("FSDP")]
        if model.is_remote_code():
            from transformers.dynamic_module_utils import custom_object_save

            custom_object_save(model, tmp, config=model.config)
        model_to_save.config.save_pretrained(tmp)
        if model.can_generate():
            model_to_save.generation_config.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        for path in sorted(Path(tmp).rglob("*")):
            if path.is_file():
                sources.append(bytes_source(path.relative_to(tmp).as_posix(), path.read_bytes()))

    state_dict = model_to_save.state_dict()
    for key in model._keys_to_ignore_on_save or ():
        state_dict.pop(key, None)
    state_dict = remove_tied_weights_from_state_dict(state_dict, model_to_save)
    state_dict = revert_weight_conversion(model_to_save, state_dict)
    split = split_torch_state_dict_into_shards(
        state_dict, filename_pattern="model{suffix}.safetensors", max_shard_size=max_shard_size
    )
    for shard_file, names in split.filename_to_tensors.items():
        sources.append(tensors_source(shard_file, {n: state_dict[n] for n in names}, {"format": "pt"}))
    if split.is_sharded:
        index = {
            "metadata": {"total_parameters": model.num_parameters(), **split.metadata},
            "weight_map": split.tensor_to_filename,
        }
        sources.append(bytes_source(SAFE_WEIGHTS_INDEX_NAME, (json.dumps(index, indent=2, sort_keys=True) + "\n").encode()))
    return sorted(sources, key=lambda s: s.path)



def capture_files(model: Any, tokenizer: Any = None) -> dict[str, Any]:
    """The files a save of `model` stores, as `extra_files` takes them: bytes, or (safetensors files) the dict of
    tensors the file is built from, in its order, without a copy."""
    out: dict[str, Any] = {}
    for src in capture_model(model, tokenizer):
        if src.layout is None:
            out[src.path] = bytes(src.read(0, src.size))
        else:
            prepared = src._keepalive  # type: ignore[attr-defined]  # set by tensors_source
            out[src.path] = {span.name: prepared[span.name] for span in src.layout.tensors}
    return out
