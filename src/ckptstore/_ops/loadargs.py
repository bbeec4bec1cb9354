"""`store.load`'s arguments: checked before anything is loaded, and failures of from_pretrained traced back to them.

Every keyword of `store.load` goes to `from_pretrained`, which fails on a bad one with whatever its internals raise:
a `TypeError` from the model's `__init__` for a typo (`dtyp=`), an `AssertionError` from torch for
`device_map='cuda'` on a machine without CUDA, a `ValueError` for an unknown dtype string. Those are usage errors,
and the user should read them as such, never as a problem of the checkpoint or of the transformers version.
"""

from __future__ import annotations

import functools
import inspect
import re
from typing import Any

from . import loadguard as _loadguard
from .._core.suggest import suggest
from ..errors import InvalidArgument

# Keywords the load path itself adds or consumes; they say how to report, not what to load.
_OWN = frozenset({"output_loading_info", "ignore_mismatched_sizes"})
# from_pretrained pops these from **kwargs (transformers 5); read from its source when possible, so a newer
# release's additions are known too.
_POPPED = (
    "state_dict", "proxies", "output_loading_info", "dtype", "torch_dtype", "device_map", "max_memory",
    "offload_folder", "offload_buffers", "quantization_config", "subfolder", "variant", "adapter_kwargs",
    "adapter_name", "generation_config", "gguf_file", "distributed_config", "device_mesh", "tp_plan", "tp_size",
    "trust_remote_code", "use_kernels", "kernel_config", "key_mapping", "attn_implementation", "low_cpu_mem_usage",
)
_UNEXPECTED = re.compile(r"got an unexpected keyword argument '(\w+)'")
_NO_CUDA = ("torch not compiled with cuda", "found no nvidia driver", "no cuda gpus are available",
            "cuda driver initialization failed")
_COMMON_WORDS = frozenset({"config", "state_dict", "revision", "token", "variant", "subfolder"})
_DEVICE_HINT = "use device_map='cpu' or 'auto' (or leave it out)."


@functools.cache
def _from_pretrained_keywords() -> frozenset[str]:
    from transformers import PreTrainedModel

    method = PreTrainedModel.from_pretrained
    names = {p for p in inspect.signature(method).parameters if p not in ("cls", "model_args", "kwargs")}
    try:
        names |= set(re.findall(r"""kwargs\.pop\(\s*["'](\w+)["']""", inspect.getsource(method)))
    except (OSError, TypeError):
        pass  # no source (a frozen install): the list above still holds the common ones
    return frozenset(names | set(_POPPED))


def known_keywords(config: dict[str, Any] | None) -> set[str]:
    """What a keyword of store.load may be: its own, from_pretrained's, or an attribute of the config."""
    from transformers import PretrainedConfig
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    names = {"cls", "verify", "materialize", *_from_pretrained_keywords(), *(config or {})}
    config_class = CONFIG_MAPPING.get((config or {}).get("model_type"), PretrainedConfig)
    names |= {p for p in inspect.signature(config_class.__init__).parameters if p not in ("self", "kwargs")}
    # Properties such as num_labels are set through from_pretrained's keywords too, but appear in no signature.
    names |= {n for n in dir(config_class) if isinstance(getattr(config_class, n, None), property)}
    return {n for n in names if not n.startswith("_")}


def _device_type(value: Any) -> str | None:
    """The accelerator a device_map value names ('cuda', 'mps', ...), None for cpu/disk/meta and strategies."""
    import torch

    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return "cuda"  # an index means a CUDA device to accelerate and torch
    if isinstance(value, torch.device):
        value = value.type
    if isinstance(value, str):
        kind = value.split(":", 1)[0].strip().lower()
        return None if kind in ("cpu", "disk", "meta", "auto", "balanced", "balanced_low_0", "sequential") else kind
    return None


def _unavailable(kind: str) -> bool:
    import torch

    backend = getattr(torch, kind, None) if kind != "mps" else getattr(torch.backends, "mps", None)
    is_available = getattr(backend, "is_available", None)
    return callable(is_available) and not is_available()


def check_arguments(cls: Any, kwargs: dict[str, Any]) -> None:
    """Refuse, before loading, what cannot work on this machine or is not a model class."""
    if cls is not None:
        _check_class(cls)
    device_map = kwargs.get("device_map")
    values = list(device_map.values()) if isinstance(device_map, dict) else [device_map]
    for value in values:
        kind = _device_type(value)
        if kind is not None and _unavailable(kind):
            what = "CUDA" if kind == "cuda" else kind.upper()
            raise InvalidArgument(
                f"{what} is not available on this machine (device_map={device_map!r}).",
                hint=f"Load on the CPU: {_DEVICE_HINT}",
            )


def _check_class(cls: Any) -> None:
    from transformers import PreTrainedModel

    if not inspect.isclass(cls) or not callable(getattr(cls, "from_pretrained", None)):
        shown = repr(cls) if not isinstance(cls, str) else f"the string {cls!r}"
        raise InvalidArgument(
            f"cls must be a model class, got {shown}.",
            hint="Pass the class itself, e.g. cls=AutoModelForSequenceClassification (from transformers import ...).",
        )
    is_model = issubclass(cls, PreTrainedModel) or cls.__name__.startswith("AutoModel")
    if not is_model and cls.__module__.startswith("transformers."):
        # A tokenizer, processor or config class: from_pretrained exists, but builds no model.
        raise InvalidArgument(
            f"{cls.__name__} is not a model class.",
            hint="Use store.load_tokenizer(ref) for a tokenizer; store.load takes a model class such as AutoModel.",
        )


def _shown(kwargs: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}"[:80] for k, v in kwargs.items())


def usage_error(exc: BaseException, kwargs: dict[str, Any], config: dict[str, Any] | None) -> InvalidArgument | None:
    """The usage error behind a failed from_pretrained, when the caller's keywords explain it; None otherwise."""
    user = {k: v for k, v in kwargs.items() if k not in _OWN}
    text = str(exc)
    m = _UNEXPECTED.search(text) if isinstance(exc, TypeError) else None
    if m and m.group(1) in user:
        key = m.group(1)
        guess = suggest(key, sorted(known_keywords(config)))
        return InvalidArgument(
            f"store.load got an unexpected keyword argument {key!r}: neither from_pretrained nor the model's config"
            f" takes it.{guess}",
            hint="Keywords go to from_pretrained (dtype, device_map, low_cpu_mem_usage, ...) or set config attributes"
            " (num_labels, ...); check the spelling.",
        )
    if isinstance(exc, (AssertionError, RuntimeError)) and any(s in text.lower() for s in _NO_CUDA):
        return InvalidArgument(f"CUDA is not available on this machine ({_loadguard.first_line(exc)}).",
                               hint=f"Load on the CPU: {_DEVICE_HINT}")
    # Words any load error may say ("config", "state_dict") do not show that the caller's value was the cause.
    named = [k for k in user if k not in _COMMON_WORDS and re.search(rf"(?<!\w){re.escape(k)}(?!\w)", text)]
    if named and isinstance(exc, (TypeError, ValueError, ImportError, AssertionError)):
        return InvalidArgument(
            f"from_pretrained refused {_shown({k: user[k] for k in named})}: {_loadguard.first_line(exc)}",
            hint=f"Give {named[0]} a value from_pretrained accepts (see its documentation), or leave it out.",
        )
    return None


def blamed_on_arguments(exc: BaseException, kwargs: dict[str, Any]) -> InvalidArgument | None:
    """A failure nothing else explains, when the caller passed keywords: say so, and how to tell whose it is."""
    user = {k: v for k, v in kwargs.items() if k not in _OWN}
    if not user or not isinstance(exc, (TypeError, ValueError, ImportError, AssertionError)):
        return None
    return InvalidArgument(
        f"from_pretrained failed with the arguments given ({_shown(user)}): {_loadguard.first_line(exc)}",
        hint="Check those arguments against from_pretrained's documentation; store.validate(ref) (or"
        " 'ckpt validate REF') loads the checkpoint without them.",
    )
