"""``ckpt ls --where KEY OP VALUE``: the parsed form of one condition, and the keys it can name (no I/O).

A condition is ``KEY OP VALUE`` in one string (``eval_accuracy>=0.9``, ``"parameters < 30M"``); OP is one of
``= == != < <= > >= ~`` (``~``: contains, ignoring case). The keys:

==============  =========================================================  ===================
key             what it matches                                            operators
==============  =========================================================  ===================
model_type      config.json's model_type                                   = != ~
architecture    any of config.json's architectures                         = != ~
dtype           any dtype of the parameters (F32, BF16; fp32, bf16 too)    = !=
tag             a tag pointing at it now (TAG or RUN:TAG)                  = != ~
name, run       its name, its run                                          = != ~
parameters      parameters, buffers left out (``22M``, ``1.5B`` allowed)   = != < <= > >=
step, size      its step; its size as exported (``100MB``, ``2GiB``)       = != < <= > >=
anything else   a metric, saved or annotated (``eval_accuracy``)            = != < <= > >=
==============  =========================================================  ===================

``!=`` on a text key is the negation of ``=`` (a checkpoint with no tag matches ``tag!=prod``); on a number a
checkpoint without the value never matches, as in SQL.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import InvalidArgument, did_you_mean
from .suggest import close_matches

OPERATORS = ("==", "!=", "<=", ">=", "=", "<", ">", "~")
TEXT_KEYS = ("model_type", "architecture", "dtype", "tag", "name", "run")
NUMBER_KEYS = ("parameters", "step", "size")
KEYS = TEXT_KEYS + NUMBER_KEYS
_TEXT_OPS = ("=", "!=", "~")
_NUMBER_OPS = ("=", "!=", "<", "<=", ">", ">=")

_FORM = "KEY OP VALUE, e.g. eval_accuracy>=0.9 or model_type=bert (OP: = != < <= > >= ~)"
_EXPR = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_.\-/]*)\s*(==|!=|<=|>=|=|<|>|~)\s*(.*?)\s*$")

# Safetensors dtype names, and the names people write for them (torch's, numpy's, the short ones).
_DTYPES = {
    "f64": "F64", "float64": "F64", "double": "F64", "fp64": "F64",
    "f32": "F32", "float32": "F32", "float": "F32", "fp32": "F32",
    "f16": "F16", "float16": "F16", "half": "F16", "fp16": "F16",
    "bf16": "BF16", "bfloat16": "BF16",
    "f8_e4m3": "F8_E4M3", "float8_e4m3fn": "F8_E4M3", "fp8": "F8_E4M3", "f8_e5m2": "F8_E5M2", "float8_e5m2": "F8_E5M2",
    "i64": "I64", "int64": "I64", "i32": "I32", "int32": "I32", "i16": "I16", "int16": "I16", "i8": "I8",
    "int8": "I8", "u8": "U8", "uint8": "U8", "bool": "BOOL",
}
_COUNT_SUFFIX = {"": 1, "k": 10**3, "m": 10**6, "b": 10**9, "g": 10**9, "t": 10**12}
_BYTE_SUFFIX = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12, "kib": 2**10, "mib": 2**20,
                "gib": 2**30, "tib": 2**40}


@dataclass(frozen=True)
class Condition:
    """One parsed ``--where`` condition. `value` is a float for number keys and metrics, else a string."""

    key: str
    op: str  # one of = != < <= > >= ~ ("==" is read as "=")
    value: float | str
    text: str  # as the user wrote it, for messages

    @property
    def is_metric(self) -> bool:
        return self.key not in KEYS

    def __str__(self) -> str:
        return self.text


def _number(raw: str, suffixes: dict[str, int], what: str, text: str) -> float:
    m = re.fullmatch(r"([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*([A-Za-z]*)", raw)
    if not m or m.group(2).lower() not in suffixes:
        units = ", ".join(s for s in suffixes if s) or "none"
        raise InvalidArgument(f"--where {text!r}: {raw!r} is not {what}.",
                              hint=f"Give a number{' (units: ' + units + ')' if units != 'none' else ''}; {_FORM}.")
    return float(m.group(1)) * suffixes[m.group(2).lower()]


def parse_condition(text: str) -> Condition:
    """``"eval_accuracy>=0.9"`` -> Condition('eval_accuracy', '>=', 0.9). A malformed one: InvalidArgument (exit 2)
    naming it, with the form as the hint."""
    if not isinstance(text, str):
        raise InvalidArgument(f"A --where condition must be a string, got {type(text).__name__}.", hint=_FORM)
    m = _EXPR.match(text)
    if not m or not m.group(3):
        raise InvalidArgument(f"Cannot read --where {text!r}.", hint=f"Write {_FORM}.")
    key, op, raw = m.group(1), m.group(2), m.group(3)
    op = "=" if op == "==" else op
    if key in TEXT_KEYS:
        if op not in _TEXT_OPS:
            raise InvalidArgument(f"--where {text!r}: {key} is text; it takes = != or ~, not {op}.",
                                  hint=f"e.g. {key}={'bert' if key == 'model_type' else 'VALUE'}; {_FORM}.")
        value: float | str = raw
        if key == "dtype":
            if op == "~":
                raise InvalidArgument(f"--where {text!r}: dtype takes = or !=.", hint="e.g. dtype=bf16 or dtype=F32.")
            value = _DTYPES.get(raw.lower(), raw.upper())
        return Condition(key, op, value, text)
    if op not in _NUMBER_OPS:
        raise InvalidArgument(f"--where {text!r}: {key} is a number; {op} needs text.",
                              hint=f"Use = != < <= > or >=; {_FORM}.")
    if key == "parameters":
        return Condition(key, op, _number(raw, _COUNT_SUFFIX, "a count", text), text)
    if key == "size":
        return Condition(key, op, _number(raw, _BYTE_SUFFIX, "a size", text), text)
    try:
        return Condition(key, op, _number(raw, {"": 1}, "a number", text), text)
    except InvalidArgument as exc:
        # A metric compared with text is most often a misspelt text key ('model_tpye=bert').
        close = close_matches(key, KEYS)
        if close:
            exc.message = f"--where {text!r}: {key!r} is no key, and a metric takes a number." + did_you_mean(close)
            exc.args = (exc.message,)
        raise
