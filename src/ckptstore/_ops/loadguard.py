"""Turn the ways `from_pretrained` fails on a stored checkpoint into one line and a hint.

transformers reports a shape mismatch as a long table in its log followed by "You set `ignore_mismatched_sizes` to
`False`...", and running out of memory as an allocator assertion. Users meet both when they load a checkpoint, so
`Store.load` goes through `LoadGuard`, which names the tensor, or suggests `dtype` / `device_map`, instead.
"""

from __future__ import annotations

import errno
import pickle
import re
import warnings
from typing import TYPE_CHECKING, Any

from . import loadargs as _loadargs
from .compat import Compatibility, compatibility
from .._core.info import human_bytes
from ..errors import (
    CkptError,
    CompatibilityWarning,
    IncompleteCheckpoint,
    InvalidCheckpoint,
    OutOfMemory,
    ShapeMismatch,
    UnsafePickle,
)

if TYPE_CHECKING:
    from .._format.manifest import Manifest

_OOM_MARKERS = ("not enough memory", "can't allocate memory", "out of memory", "cannot allocate memory")


def is_out_of_memory(exc: BaseException) -> bool:
    if isinstance(exc, MemoryError):
        return True
    if isinstance(exc, OSError) and exc.errno == errno.ENOMEM:
        return True
    return isinstance(exc, RuntimeError) and any(m in str(exc).lower() for m in _OOM_MARKERS)


class LoadGuard:
    """Wraps one load: `kwargs` are what to pass to from_pretrained, `check` inspects its result, and the guard as
    a context manager translates failures. `finish` returns what the caller asked for (model, or model and info)."""

    def __init__(self, manifest: "Manifest", config: dict[str, Any] | None, kwargs: dict[str, Any]) -> None:
        self.manifest = manifest
        self.config = config
        self.compat: Compatibility = compatibility(config, manifest)
        self.want_info = bool(kwargs.pop("output_loading_info", False))
        self.given = dict(kwargs)  # the caller's own keywords, to tell their mistakes from the checkpoint's
        self.user_ignores_mismatch = bool(kwargs.get("ignore_mismatched_sizes", False))
        # Asking transformers to tolerate mismatches and report them lets us raise one clear error naming the
        # tensor; it changes nothing else in the load (the flag only gates that final raise).
        self.kwargs = {**kwargs, "ignore_mismatched_sizes": True, "output_loading_info": True}
        self.info: dict[str, Any] = {}
        if self.compat.newer:
            warnings.warn(
                f"Checkpoint {manifest.name!r} was saved by transformers {self.compat.saved_with}, newer than the"
                f" installed {self.compat.installed}; it may not load or behave the same. Upgrade transformers.",
                CompatibilityWarning,
                stacklevel=4,
            )

    def check(self, result: Any) -> Any:
        model, self.info = result
        mismatched = sorted(self.info.get("mismatched_keys") or ())
        if mismatched and not self.user_ignores_mismatch:
            tensor, ckpt_shape, model_shape = mismatched[0]
            raise ShapeMismatch(self.manifest.name, tensor, ckpt_shape, model_shape, others=len(mismatched) - 1)
        return model

    def finish(self, model: Any) -> Any:
        return (model, self.info) if self.want_info else model

    def __enter__(self) -> "LoadGuard":
        return self

    def __exit__(self, exc_type, exc: BaseException | None, tb) -> bool:
        if exc is None or isinstance(exc, CkptError) or not isinstance(exc, Exception):
            return False
        name = self.manifest.name
        # A keyword the caller got wrong is their mistake whatever else looks off (a newer saving transformers).
        usage = _loadargs.usage_error(exc, self.given, self.config)
        if usage is not None:
            raise usage from exc
        if is_out_of_memory(exc):
            weights = sum(f.size for f in self.manifest.files if f.path.endswith((".safetensors", ".bin")))
            asked = self.kwargs.get("dtype", self.kwargs.get("torch_dtype"))
            raise OutOfMemory(
                f"Not enough memory to load {name!r} ({human_bytes(weights)} of weights"
                + (f", as {asked}" if asked is not None else "")
                + f"): {_oom_detail(exc)}."
            ) from exc
        if isinstance(exc, pickle.UnpicklingError) or "Weights only load failed" in str(exc):
            # torch's message ends in advice to retry with weights_only=False, that is, to run the pickle's code.
            raise UnsafePickle(
                f"Cannot load {name!r}: a weight pickle in it holds more than tensors, and ckptstore never unpickles"
                " that.",
                hint="Only plain tensor pickles are read. Convert the weights to safetensors where they were made, or"
                " load the file yourself if you trust whoever made it.",
            ) from exc
        if isinstance(exc, OSError) and "file named" in str(exc):  # from_pretrained found no weights file
            raise IncompleteCheckpoint(
                f"Checkpoint {name!r} has no weights from_pretrained can load ({', '.join(f.path for f in self.manifest.files[:4])}"
                f"{', ...' if len(self.manifest.files) > 4 else ''}).",
                hint="Store the folder save_pretrained wrote, with its model.safetensors (or pytorch_model.bin).",
            ) from exc
        problem = self.compat.problem()
        if problem is not None:
            why, hint = problem
            raise InvalidCheckpoint(f"Cannot load {name!r}: {why} ({first_line(exc)}).", hint=hint) from exc
        usage = _loadargs.blamed_on_arguments(exc, self.given)
        if usage is not None:
            raise usage from exc
        raise InvalidCheckpoint(
            f"Cannot load {name!r}: from_pretrained failed ({type(exc).__name__}: {first_line(exc)}).",
            hint=f"'ckpt validate {name}' reports what is wrong with it; --debug (or the exception's __cause__)"
            " shows from_pretrained's traceback.",
        ) from exc


def first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    line = text[0] if text else type(exc).__name__
    return line if len(line) <= 200 else line[:197] + "..."


def _oom_detail(exc: BaseException) -> str:
    # torch's allocator message is an assertion dump; the size it tried to allocate is the useful part.
    m = re.search(r"tried to allocate (\d+) bytes", str(exc))
    if m:
        return f"allocating {human_bytes(int(m.group(1)))} failed"
    return first_line(exc)
