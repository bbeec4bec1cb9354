"""`Store.validate`: prove a checkpoint loads and runs before it ships.

Everything goes through the real `from_pretrained` and a real forward pass, because that is what a deployment does;
a check that only reads the manifest would miss a config that no longer matches its weights. Every problem found is
reported (not only the first), each as one line and a hint.
"""

from __future__ import annotations

import contextlib
import inspect
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from . import load as _load
from .compat import UPGRADE_HINT, Compatibility, compatibility, read_config
from .loadguard import first_line as _first_line
from .modelload import load_model, load_tokenizer
from ..errors import CkptError, CompatibilityWarning, IncompleteCheckpoint, InvalidArgument, ValidationFailed

if TYPE_CHECKING:
    import torch

    from .._format.manifest import Manifest
    from .._repo.repository import Repository

DEFAULT_TEXT = "ckptstore checks that this model loads and runs."
DUMMY_LENGTH = 8
_SCAN_ELEMENTS = 1 << 24  # scan big tensors in slices so the NaN/Inf masks stay small


@dataclass(frozen=True)
class Finding:
    severity: str  # "error" (the checkpoint is not fit to ship) or "warning"
    message: str
    hint: str = ""

    def to_json(self) -> dict[str, str]:
        return {"severity": self.severity, "message": self.message, "hint": self.hint}


@dataclass(frozen=True)
class NonFiniteTensor:
    name: str
    nan: int
    inf: int


@dataclass(frozen=True)
class ValidationReport:
    """What `validate` found. `ok` is False when any finding is an error."""

    ref: str
    id: str
    name: str
    compatibility: Compatibility
    model_class: str | None = None
    tokenizer_class: str | None = None
    parameters: int = 0
    dtypes: dict[str, int] = field(default_factory=dict)  # dtype -> number of parameters in the loaded model
    missing_keys: tuple[str, ...] = ()
    unexpected_keys: tuple[str, ...] = ()
    mismatched_keys: tuple[tuple[str, tuple[int, ...], tuple[int, ...]], ...] = ()  # (name, checkpoint, model)
    nonfinite_tensors: tuple[NonFiniteTensor, ...] = ()
    input_kind: str | None = None  # "text" or "dummy ids"
    output_shape: tuple[int, ...] | None = None
    output_finite: bool | None = None
    findings: tuple[Finding, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.errors

    @property
    def errors(self) -> tuple[Finding, ...]:
        return tuple(f for f in self.findings if f.severity == "error")

    @property
    def warnings(self) -> tuple[Finding, ...]:
        return tuple(f for f in self.findings if f.severity == "warning")

    def raise_for_errors(self) -> "ValidationReport":
        """Raise `ValidationFailed` (carrying this report) when the checkpoint is invalid; return self otherwise."""
        if self.errors:
            first = self.errors[0]
            more = f" (and {len(self.errors) - 1} more problems)" if len(self.errors) > 1 else ""
            raise ValidationFailed(f"Checkpoint {self.name!r} is invalid: {first.message}{more}", report=self,
                                   hint=first.hint or None)
        return self

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "ref": self.ref,
            "id": self.id,
            "name": self.name,
            "model_class": self.model_class,
            "tokenizer_class": self.tokenizer_class,
            "parameters": self.parameters,
            "dtypes": dict(self.dtypes),
            "missing_keys": list(self.missing_keys),
            "unexpected_keys": list(self.unexpected_keys),
            "mismatched_keys": [
                {"name": n, "checkpoint_shape": list(a), "model_shape": list(b)} for n, a, b in self.mismatched_keys
            ],
            "nonfinite_tensors": [{"name": t.name, "nan": t.nan, "inf": t.inf} for t in self.nonfinite_tensors],
            "forward": {"input": self.input_kind, "output_shape": None if self.output_shape is None
                        else list(self.output_shape), "output_finite": self.output_finite},
            "compatibility": self.compatibility.to_json(),
            "errors": [f.to_json() for f in self.errors],
            "warnings": [f.to_json() for f in self.warnings],
        }


def _model_class(cls: Any, compat: Compatibility) -> Any:
    """The class to load with: the one asked for, else the checkpoint's own architecture (so a classifier is loaded
    with its head and its keys all match), else AutoModel."""
    import transformers

    if isinstance(cls, str):
        found = getattr(transformers, cls, None) if cls.isidentifier() else None
        if found is None or not hasattr(found, "from_pretrained"):
            raise InvalidArgument(
                f"transformers {transformers.__version__} has no model class {cls!r}.",
                hint="Give a class such as AutoModelForSequenceClassification or BertForMaskedLM.",
            )
        return found
    if cls is not None:
        return cls
    known = [a for a in compat.architectures if a not in compat.unknown_architectures]
    return getattr(transformers, known[0]) if known else transformers.AutoModel


def _count_nonfinite(t: "torch.Tensor") -> tuple[int, int]:
    import torch

    if not t.is_floating_point() and not t.is_complex():
        return 0, 0
    flat = t.reshape(-1)
    nan = inf = 0
    for start in range(0, flat.numel(), _SCAN_ELEMENTS):
        part = flat[start : start + _SCAN_ELEMENTS]
        if part.dtype not in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
            part = part.float()  # float8 and friends have no isnan kernel
        nan += int(torch.isnan(part).sum())
        inf += int(torch.isinf(part).sum())
    return nan, inf


def _scan_tensors(tensors) -> tuple[NonFiniteTensor, ...]:
    found = []
    for name, t in tensors:
        nan, inf = _count_nonfinite(t)
        if nan or inf:
            found.append(NonFiniteTensor(name, nan, inf))
    return tuple(found)


def _inputs(model: Any, tokenizer: Any, text: str) -> tuple[dict[str, Any], str]:
    import torch

    if tokenizer is not None:
        enc = dict(tokenizer(text, return_tensors="pt"))
        accepted = inspect.signature(model.forward).parameters
        # Tokenizers return fields some models do not take (token_type_ids for RoBERTa-likes, ...).
        inputs = {k: v for k, v in enc.items() if k in accepted} if "kwargs" not in accepted else enc
        kind = "text"
    else:
        vocab = int(getattr(model.config, "vocab_size", None) or 2)
        inputs = {"input_ids": (torch.arange(1, DUMMY_LENGTH + 1) % vocab).unsqueeze(0)}
        kind = "dummy ids"
    if getattr(model.config, "is_encoder_decoder", False) and "decoder_input_ids" not in inputs:
        start = getattr(model.config, "decoder_start_token_id", None) or 0
        inputs["decoder_input_ids"] = torch.full((1, 1), int(start), dtype=torch.long)
    device = getattr(model, "device", None)
    if device is not None and device.type != "meta":
        inputs = {k: v.to(device) for k, v in inputs.items()}
    return inputs, kind


def _output_tensors(out: Any, prefix: str = "") -> list[tuple[str, "torch.Tensor"]]:
    import torch

    if isinstance(out, torch.Tensor):
        return [(prefix or "output", out)]
    if isinstance(out, dict):
        items = list(out.items())
    elif isinstance(out, (list, tuple)):
        items = [(str(i), v) for i, v in enumerate(out)]
    else:
        return []  # caches and other objects: not outputs a caller reads
    found = []
    for key, value in items:
        found += _output_tensors(value, f"{prefix}.{key}" if prefix else str(key))
    return found


class _Checker:
    """Collects what `validate` finds, step by step."""

    def __init__(self, repo: "Repository", manifest: "Manifest", ref: str, cid: str) -> None:
        self.repo, self.manifest = repo, manifest
        self.compat = compatibility(read_config(repo.blobs, manifest), manifest)
        self.fields: dict[str, Any] = {"ref": ref, "id": cid, "name": manifest.name, "compatibility": self.compat}
        self.findings: list[Finding] = []

    def error(self, message: str, hint: str = "") -> None:
        self.findings.append(Finding("error", message, hint))

    def warn(self, message: str, hint: str = "") -> None:
        self.findings.append(Finding("warning", message, hint))

    def report(self) -> ValidationReport:
        return ValidationReport(**self.fields, findings=tuple(self.findings))

    def check_compatibility(self) -> bool:
        """Report what the installed transformers cannot understand; False when the model cannot be built."""
        c = self.compat
        if c.model_type is None:
            self.error("config.json names no model_type.", "Re-save the config with save_pretrained.")
        elif not c.model_type_known:
            self.error(*c.problem())  # type: ignore[misc]
        elif c.newer:
            self.warn(*c.problem())  # type: ignore[misc]
        if c.model_type_known and c.unknown_architectures:
            self.warn(
                f"architecture {', '.join(c.unknown_architectures)} is unknown to transformers {c.installed};"
                " validated with AutoModel instead",
                f"{UPGRADE_HINT}, or pass --cls with the Auto class that fits the checkpoint.",
            )
        return c.model_type_known

    def load_model(self, cls: Any) -> Any:
        try:
            model, info = load_model(
                self.repo,
                self.fields["id"], _model_class(cls, self.compat), output_loading_info=True, ignore_mismatched_sizes=True
            )
        except InvalidArgument:
            raise  # a wrong --cls is the caller's mistake, not the checkpoint's
        except CkptError as exc:
            self.error(exc.message, exc.hint)
            return None
        except Exception as exc:  # noqa: BLE001 - any failure to load is the finding, reported in one line
            problem = self.compat.problem()
            self.error(f"from_pretrained failed: {_first_line(exc)}", problem[1] if problem else "")
            return None
        self.fields["model_class"] = type(model).__name__
        self.fields["missing_keys"] = missing = tuple(sorted(info.get("missing_keys") or ()))
        self.fields["unexpected_keys"] = unexpected = tuple(sorted(info.get("unexpected_keys") or ()))
        self.fields["mismatched_keys"] = mismatched = tuple(
            (n, tuple(a), tuple(b)) for n, a, b in sorted(info.get("mismatched_keys") or ())
        )
        if missing:
            self.error(
                f"{len(missing)} weights missing from the checkpoint (randomly initialized): {_listing(missing)}",
                "Save the full model, or pick the --cls the checkpoint was trained as (see 'architectures').",
            )
        for name, ckpt_shape, model_shape in mismatched:
            self.error(
                f"tensor {name!r} has shape {list(ckpt_shape)}, the config expects {list(model_shape)}",
                "The weights were saved with another config; store them with their own config.json.",
            )
        if unexpected:
            self.warn(f"{len(unexpected)} stored weights the model does not use: {_listing(unexpected)}",
                      "Expected when loading a head-less class; otherwise check --cls.")
        params = {id(p): p for p in model.parameters()}.values()
        self.fields["parameters"] = sum(p.numel() for p in params)
        dtypes: dict[str, int] = {}
        for p in params:
            key = str(p.dtype).removeprefix("torch.")
            dtypes[key] = dtypes.get(key, 0) + p.numel()
        self.fields["dtypes"] = dtypes
        return model

    def scan_weights(self, model: Any) -> None:
        weights = _load.weight_files(self.manifest)
        if weights:
            # The stored tensors, under the names they have in the files: mapped from the blobs, never copied.
            tensors = _load.load_state_dict(self.repo.blobs, self.manifest, files=weights).items()
        elif model is not None:
            tensors = ((n, t) for n, t in model.state_dict().items() if t.device.type != "meta")
        else:
            return
        bad = _scan_tensors(tensors)
        self.fields["nonfinite_tensors"] = bad
        for t in bad:
            counts = ", ".join(f"{n} {k}" for n, k in ((t.nan, "NaN"), (t.inf, "Inf")) if n)
            self.error(f"tensor {t.name!r} contains {counts}",
                       "Training diverged or the file is damaged; use an earlier checkpoint ('ckpt log').")

    def load_tokenizer(self) -> Any:
        try:
            tok = load_tokenizer(self.repo, self.fields["id"])
        except IncompleteCheckpoint:
            self.warn("no tokenizer stored; the forward pass used dummy token ids",
                      "Save the tokenizer with the model: store.save(model, name, tokenizer=tok).")
            return None
        except Exception as exc:  # noqa: BLE001 - a tokenizer that fails to load fails the deployment too
            self.error(f"tokenizer failed to load: {_first_line(exc)}", "Re-save it with save_pretrained.")
            return None
        self.fields["tokenizer_class"] = type(tok).__name__
        return tok

    def forward(self, model: Any, tokenizer: Any, text: str) -> None:
        import torch

        main_input = getattr(model, "main_input_name", "input_ids")
        if main_input != "input_ids":
            self.warn(f"forward pass skipped: the model takes {main_input!r}, not token ids")
            return
        try:
            inputs, kind = _inputs(model, tokenizer, text)
            model.eval()
            with torch.inference_mode():
                out = model(**inputs)
        except Exception as exc:  # noqa: BLE001 - a model that cannot run is the finding
            vocab = getattr(model.config, "vocab_size", None)
            if tokenizer is not None and isinstance(vocab, int) and len(tokenizer) > vocab:
                self.error(f"forward pass failed: the tokenizer has {len(tokenizer):,} tokens but the model's"
                           f" embedding only {vocab:,} ({_first_line(exc)})",
                           "Save the tokenizer the model was trained with, or resize the embeddings"
                           " (model.resize_token_embeddings(len(tokenizer))) and save again.")
            else:
                self.error(f"forward pass failed: {_first_line(exc)}",
                           "Check the config against the weights and the --cls; store.validate(ref) in Python, then"
                           " store.load(ref) and call the model, shows the full error.")
            return
        self.fields["input_kind"] = kind
        tensors = [(n, t) for n, t in _output_tensors(out) if t.is_floating_point()]
        if tensors:
            self.fields["output_shape"] = tuple(tensors[0][1].shape)
        bad = [n for n, t in tensors if not bool(torch.isfinite(t).all())]
        self.fields["output_finite"] = not bad
        if bad:
            self.error(f"forward pass output {', '.join(bad)} is not finite (NaN or Inf)",
                       "Check the tensors reported above; the model computes NaN even from finite weights if"
                       " its dtype overflows (try dtype=float32).")


def _listing(names: tuple[str, ...], limit: int = 5) -> str:
    return ", ".join(names[:limit]) + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")


def validate(repo: "Repository", ref: str, cls: Any = None, text: str | None = None) -> ValidationReport:
    cid = repo.resolve(ref)
    manifest = repo.manifest(cid)
    check = _Checker(repo, manifest, ref, cid)
    if manifest.file("config.json") is None:
        check.error("the checkpoint has no config.json, so no model can be built from it",
                    "Save the model with save_pretrained (it writes config.json beside the weights).")
        check.scan_weights(None)
        return check.report()
    with _quiet_transformers():
        model = check.load_model(cls) if check.check_compatibility() else None
        check.scan_weights(model)
        if model is not None:
            tokenizer = check.load_tokenizer()
            check.forward(model, tokenizer, text or DEFAULT_TEXT)
    return check.report()


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """The report says what transformers would log (its load report, the newer-version warning), once and
    readably; its progress bars and log lines would only repeat it on stderr."""
    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", CompatibilityWarning)
            yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
