"""Loading a stored checkpoint through transformers' own `from_pretrained`, so every option it has works."""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import load as _load
from .compat import read_config
from .loadargs import check_arguments
from .loadguard import LoadGuard
from .._format.manifest import manifest_id
from ..errors import IncompleteCheckpoint, InvalidCheckpoint

if TYPE_CHECKING:
    from .._repo.repository import Repository

# Options that only work when from_pretrained reads a folder (they look for files beside the weights).
# (offload_folder works on both paths: from a state dict, transformers writes the offloaded tensors into it.)
_FOLDER_ONLY = ("trust_remote_code", "gguf_file", "variant", "subfolder", "use_safetensors")
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt", "vocab.json", "merges.txt",
    "added_tokens.json", "spiece.model", "sentencepiece.bpe.model", "tokenizer.model", "preprocessor_config.json",
    "processor_config.json", "chat_template.jinja", "chat_template.json",
)


def _config(manifest, raw: dict[str, Any] | None):
    """The config object of the stored config.json (read once by the caller): it picks the concrete class."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    if raw is None:
        raise IncompleteCheckpoint(f"Checkpoint {manifest.name!r} has no config.json, so no model class can be built.")
    model_type = raw.get("model_type")
    if model_type not in CONFIG_MAPPING:
        import transformers

        raise InvalidCheckpoint(
            f"Checkpoint {manifest.name!r} has model_type {model_type!r}, which transformers {transformers.__version__}"
            " does not know.",
            hint="Upgrade transformers (pip install -U transformers), or load with trust_remote_code=True if the"
            " model ships its own code.",
        )
    return CONFIG_MAPPING[model_type].from_dict(raw)


def concrete_class(cls: Any, config: Any) -> Any:
    """AutoModelForX -> the model class for this config (Auto classes need a path; a concrete class does not)."""
    mapping = getattr(cls, "_model_mapping", None)
    if mapping is None:
        return cls
    from transformers.models.auto.auto_factory import _get_model_class

    try:
        return _get_model_class(config, mapping)
    except ValueError:
        raise InvalidCheckpoint(
            f"{cls.__name__} has no model class for model_type {config.model_type!r}.",
            hint="Pick the Auto class that fits the checkpoint (see its 'architectures' in 'ckpt show').",
        ) from None


def default_class(manifest) -> Any:
    """The class the checkpoint was saved from (config 'architectures'), as a user of store.load(ref) expects;
    AutoModel when transformers does not have it."""
    import transformers

    for arch in manifest.model.get("architectures") or ():
        found = getattr(transformers, arch, None)
        if found is not None:
            return found
    return transformers.AutoModel


def load_model(repo: "Repository", ref: str, cls: Any = None, *, verify: bool = False, materialize: bool | None = None, **kwargs: Any):
    check_arguments(cls, kwargs)
    manifest = repo.manifest(ref)
    cls = cls or default_class(manifest)
    weights = _load.weight_files(manifest)
    if materialize is None:
        materialize = not weights or any(k in kwargs for k in _FOLDER_ONLY) or "config" in kwargs
    raw_config = read_config(repo.blobs, manifest)
    guard = LoadGuard(manifest, raw_config, kwargs)  # clear errors for shape mismatches, OOM, newer transformers
    if materialize:
        # Tensors mapped from the temporary folder stay valid after it is removed: the kernel keeps an unlinked
        # file alive while it is mapped. Disk offload instead reopens the safetensors files by path when the model
        # runs, so with an offload_folder the checkpoint is written inside it and kept.
        offload = kwargs.get("offload_folder")
        place = _kept_folder(repo, manifest, Path(offload)) if offload else _load.materialized(repo, manifest)
        with place as folder, guard:
            return guard.finish(guard.check(cls.from_pretrained(folder, **guard.kwargs)))
    config = _config(manifest, raw_config)
    with guard, tempfile.TemporaryDirectory(prefix="ckpt-config-") as tmp:
        state_dict = _load.load_state_dict(repo.blobs, manifest, files=weights, verify=verify)
        # from_pretrained is given the config as a file, not as the object: then it reads it the way it reads a
        # folder's config.json, and keyword arguments that are config attributes (num_labels=3, output_attentions)
        # go into the config instead of failing in the model's __init__.
        config_file = Path(tmp) / "config.json"
        config_file.write_text(json.dumps(raw_config))
        model = guard.check(
            concrete_class(cls, config).from_pretrained(None, config=str(config_file), state_dict=state_dict, **guard.kwargs)
        )
    gen = manifest.file("generation_config.json")
    if gen is not None and getattr(model, "generation_config", None) is not None:
        from transformers import GenerationConfig

        model.generation_config = GenerationConfig.from_dict(json.loads(_load.read_file_bytes(repo.blobs, gen)))
    return guard.finish(model)


@contextlib.contextmanager
def _kept_folder(repo: "Repository", manifest, offload_folder: Path) -> Iterator[Path]:
    """The checkpoint as a folder inside `offload_folder`, reused when a previous load left it complete."""
    dest = offload_folder / f"checkpoint-{manifest_id(manifest.to_bytes())[:12]}"
    complete = dest.is_dir() and all(
        (dest / f.path).is_file() and (dest / f.path).stat().st_size == f.size for f in manifest.files
    )
    if not complete:
        shutil.rmtree(dest, ignore_errors=True)
        _load.export(repo.blobs, manifest, dest)
    yield dest


def load_tokenizer(repo: "Repository", ref: str, cls: Any = None, **kwargs: Any):
    from transformers import AutoTokenizer

    cls = cls or AutoTokenizer
    manifest = repo.manifest(ref)
    names = {f.path for f in manifest.files}
    if not any(n in names for n in TOKENIZER_FILES):
        raise IncompleteCheckpoint(
            f"Checkpoint {manifest.name!r} has no tokenizer files.",
            hint="Save the tokenizer with the model: store.save(model, name, tokenizer=tok).",
        )
    with _load.materialized(repo, manifest, only=lambda p: "/" not in p and not p.endswith((".safetensors", ".bin", ".pt", ".pth"))) as folder:
        return cls.from_pretrained(folder, **kwargs)
