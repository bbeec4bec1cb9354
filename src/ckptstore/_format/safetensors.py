"""Split a ``.safetensors`` file into its header and per-tensor byte ranges, and predict headers.

The store keeps a safetensors file as two kinds of blob (docs/format.md, "Manifest"): the header, verbatim
(8-byte little-endian length, JSON, padding), and one blob per tensor's data (large tensors in chunks). Writing
the header and then the tensor blobs in file order gives back the original bytes, so reassembly needs no knowledge
of the format beyond the :class:`Layout` this module computes.

Three jobs live here:

* :func:`read_layout` parses and strictly validates a header, reading only the header. It never accepts a
  file that safetensors itself would refuse (it is stricter in a few places, listed in its docstring), so a
  layout it returns can be trusted to cut the data section into exactly the tensors safetensors would see.
* :func:`build_header` predicts the header :func:`safetensors.torch.save_file` writes for given names,
  dtypes and shapes, so a live model can be stored without first serializing it to a temporary file.
* :func:`tensor_bytes` exposes a tensor's bytes without copying them, for hashing and writing blobs.

Facts about the format were checked against safetensors 0.8.0 (the installed Rust extension and its
behaviour), not only its documentation; the tests cross-check them against the installed library.
"""

from __future__ import annotations

import functools
import json
import operator
import struct
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any

from ckptstore.errors import InvalidSafetensors

if TYPE_CHECKING:
    import torch

__all__ = [
    "DTYPES",
    "DTYPE_ORDER",
    "MAX_HEADER_SIZE",
    "ST_TO_TORCH",
    "TORCH_TO_ST",
    "Layout",
    "TensorSpan",
    "build_header",
    "read_layout",
    "st_shape",
    "tensor_bytes",
    "torch_shape",
]

#: safetensors refuses headers longer than this (``MAX_HEADER_SIZE`` in its Rust crate; a length equal to it
#: is still accepted). Checking it before reading bounds the memory a hostile file can make us allocate.
MAX_HEADER_SIZE = 100_000_000

#: The safetensors ``Dtype`` enum in declaration order. The Rust enum derives ``Ord`` from this order, and
#: the writer sorts tensors by *descending* dtype, then by name: so files start with the 8-byte types and end
#: with BOOL, which keeps every tensor aligned to its element size. Read from the variant table compiled into
#: safetensors 0.8.0's extension; ``test_dtype_order_matches_installed_safetensors`` re-derives it for every
#: dtype torch can express, so a reordering in a future safetensors release fails the tests loudly.
DTYPE_ORDER: tuple[str, ...] = (
    "BOOL",
    "F4",
    "F6_E2M3",
    "F6_E3M2",
    "U8",
    "I8",
    "F8_E5M2",
    "F8_E4M3",
    "F8_E8M0",
    "F8_E4M3FNUZ",
    "F8_E5M2FNUZ",
    "I16",
    "U16",
    "F16",
    "BF16",
    "I32",
    "U32",
    "F32",
    "C64",
    "F64",
    "I64",
    "U64",
)

#: Bits per element for every dtype safetensors 0.8 accepts. Bits, not bytes, because F4 and F6 pack
#: several elements per byte.
DTYPES: dict[str, int] = {
    "BOOL": 8,
    "F4": 4,
    "F6_E2M3": 6,
    "F6_E3M2": 6,
    "U8": 8,
    "I8": 8,
    "F8_E5M2": 8,
    "F8_E4M3": 8,
    "F8_E8M0": 8,
    "F8_E4M3FNUZ": 8,
    "F8_E5M2FNUZ": 8,
    "I16": 16,
    "U16": 16,
    "F16": 16,
    "BF16": 16,
    "I32": 32,
    "U32": 32,
    "F32": 32,
    "C64": 64,
    "F64": 64,
    "I64": 64,
    "U64": 64,
}
assert set(DTYPES) == set(DTYPE_ORDER)

_DTYPE_RANK: dict[str, int] = {name: i for i, name in enumerate(DTYPE_ORDER)}


def _torch_dtype_map() -> dict[torch.dtype, str]:
    import torch

    # getattr: the float8/float4 and unsigned types appeared in different torch releases.
    candidates = {
        "bool": "BOOL",
        "uint8": "U8",
        "int8": "I8",
        "float8_e5m2": "F8_E5M2",
        "float8_e4m3fn": "F8_E4M3",
        "float8_e8m0fnu": "F8_E8M0",
        "float8_e4m3fnuz": "F8_E4M3FNUZ",
        "float8_e5m2fnuz": "F8_E5M2FNUZ",
        "float4_e2m1fn_x2": "F4",
        "int16": "I16",
        "uint16": "U16",
        "float16": "F16",
        "bfloat16": "BF16",
        "int32": "I32",
        "uint32": "U32",
        "float32": "F32",
        "complex64": "C64",
        "float64": "F64",
        "int64": "I64",
        "uint64": "U64",
    }
    return {getattr(torch, attr): st for attr, st in candidates.items() if hasattr(torch, attr)}


#: torch dtype -> safetensors dtype name, for every torch dtype ``safetensors.torch.save_file`` can write.
#: ``torch.float4_e2m1fn_x2`` holds two F4 values per element, so its header shape is the torch shape with
#: the last dimension doubled: use :func:`st_shape`, not ``tensor.shape``, when building a header.
#: The inverse, ``ST_TO_TORCH``, has no F6_E2M3 or F6_E3M2: they have no torch dtype.
#: Both maps are built on first use (module ``__getattr__``): importing torch costs ~1 s, and the commands that
#: only read manifests (`ckpt ls`, `show`, `verify`) use this module without ever touching a tensor.
@functools.cache
def _dtype_maps() -> tuple[dict[torch.dtype, str], dict[str, torch.dtype]]:
    to_st = _torch_dtype_map()
    return to_st, {st: dt for dt, st in to_st.items()}


def __getattr__(name: str) -> Any:
    if name == "TORCH_TO_ST":
        return _dtype_maps()[0]
    if name == "ST_TO_TORCH":
        return _dtype_maps()[1]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")



_U64_MAX = 2**64 - 1

# Builds the error to raise, with the file's path attached (see read_layout).
_Bad = Callable[[str], InvalidSafetensors]


@dataclass(frozen=True)
class TensorSpan:
    """One tensor's place in the data section.

    ``start`` and ``end`` are offsets from the start of the data section (the first byte after the header),
    exactly as the header's ``data_offsets`` records them; add :attr:`Layout.data_start` for file offsets.
    """

    name: str
    dtype: str
    shape: tuple[int, ...]
    start: int
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.start


@dataclass(frozen=True)
class Layout:
    """Where everything is in one safetensors file.

    ``header`` is the file's first ``data_start`` bytes, verbatim: length prefix, JSON and padding. The
    ``tensors`` cover the data section exactly, without gaps or overlaps, in file order; so
    ``header + b"".join(data[s.start:s.end] for s in tensors)`` is the whole file.
    """

    header: bytes
    data_start: int
    tensors: tuple[TensorSpan, ...]
    metadata: dict[str, str] | None
    file_size: int

    @property
    def data_size(self) -> int:
        return self.file_size - self.data_start


# --------------------------------------------------------------------------------------------- reading


def read_layout(f: IO[bytes], file_size: int, *, path: str | None = None) -> Layout:
    """Parse and validate the header of the safetensors file open as ``f`` (positioned at its start).

    ``file_size`` is the file's size in bytes (from ``os.fstat``); the tensor data is never read. Every
    violation raises :class:`InvalidSafetensors` with a one-line message that names the problem and the
    numbers involved, and ``path`` attached for the caller's error report.

    This accepts a subset of what safetensors accepts, never more: whatever passes here also opens with
    ``safetensors.safe_open``, and every file ``safetensors.torch.save_file`` writes passes. It is stricter
    where leniency would only hide a damaged or hand-made file: it also refuses a zero-length header,
    duplicate JSON keys, tensor entries with keys beyond ``dtype``/``shape``/``data_offsets``, a
    ``__metadata__`` that is ``null``, and a header that does not start with ``{``.
    """

    def bad(message: str) -> InvalidSafetensors:
        where = f"{path}: " if path else ""
        return InvalidSafetensors(where + message, path=path)

    if file_size < 8:
        raise bad(f"file is {file_size} bytes, too short for the 8-byte header length")
    prefix = f.read(8)
    if len(prefix) != 8:
        raise bad(f"file ended after {len(prefix)} bytes while reading the 8-byte header length")
    (n,) = struct.unpack("<Q", prefix)
    # Check the length against the cap and the file size before reading: a corrupt prefix can claim 2**64.
    if n == 0:
        raise bad("header length is 0; a safetensors header is at least '{}'")
    if n > MAX_HEADER_SIZE:
        raise bad(f"header length {n} exceeds the {MAX_HEADER_SIZE}-byte limit safetensors enforces")
    if 8 + n > file_size:
        raise bad(f"truncated: header length {n} needs the file to be at least {8 + n} bytes but it has {file_size}")
    raw = f.read(n)
    if len(raw) != n:
        raise bad(f"file ended after {8 + len(raw)} bytes while reading a {n}-byte header (was it being written?)")

    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise bad(f"header is not valid UTF-8 (byte {8 + e.start})") from None
    if not text.startswith("{"):
        raise bad(f"header does not start with '{{' (it starts with {text[:16]!r})")
    obj = _parse_json(text, bad)

    metadata: dict[str, str] | None = None
    spans: list[TensorSpan] = []
    for name, entry in obj.items():
        if name == "__metadata__":
            metadata = _check_metadata(entry, bad)
        else:
            spans.append(_check_entry(name, entry, bad))

    # Sorting by offsets is how safetensors validates too. The tie-breakers only order zero-size tensors that
    # share an offset; they reproduce the writer's order (dtype descending, then name).
    spans.sort(key=lambda s: (s.start, s.end, -_DTYPE_RANK[s.dtype], s.name))
    position = 0
    previous: TensorSpan | None = None
    for span in spans:
        if span.start != position:
            if previous is None:
                raise bad(f"data does not start at offset 0: the first tensor {span.name!r} starts at {span.start}")
            if span.start > position:
                raise bad(
                    f"gap of {span.start - position} bytes in the data: {previous.name!r} ends at {position} "
                    f"but the next tensor {span.name!r} starts at {span.start}"
                )
            raise bad(
                f"tensors {previous.name!r} [{previous.start}, {previous.end}) and {span.name!r} "
                f"[{span.start}, {span.end}) overlap"
            )
        position = span.end
        previous = span

    data_start = 8 + n
    data_end = data_start + position
    if data_end > file_size:
        raise bad(f"truncated: header says data ends at byte {data_end} but the file has {file_size} bytes")
    if data_end < file_size:
        raise bad(
            f"trailing bytes: header says data ends at byte {data_end} but the file has {file_size} bytes "
            f"({file_size - data_end} extra)"
        )
    return Layout(
        header=prefix + raw, data_start=data_start, tensors=tuple(spans), metadata=metadata, file_size=file_size
    )


class _Reject(Exception):
    """Raised from inside the JSON parser's hooks; turned into InvalidSafetensors by _parse_json."""


def _pairs_no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _Reject(f"duplicate key {key!r} in header JSON")
        out[key] = value
    return out


def _reject_constant(token: str) -> Any:
    raise _Reject(f"header JSON contains {token}, which is not JSON")


def _parse_int(token: str) -> int | float:
    value = int(token)
    # serde_json reads "-0" as the float -0.0 and safetensors then refuses it; keep it a non-integer here too.
    return -0.0 if value == 0 and token.startswith("-") else value


def _parse_json(text: str, bad: _Bad) -> dict[str, Any]:
    try:
        obj = json.loads(
            text,
            object_pairs_hook=_pairs_no_duplicates,
            parse_constant=_reject_constant,
            parse_int=_parse_int,
        )
    except _Reject as e:
        raise bad(str(e)) from None
    except json.JSONDecodeError as e:
        raise bad(f"header is not valid JSON: {e.msg} at byte {8 + len(text[: e.pos].encode('utf-8'))}") from None
    except (ValueError, RecursionError) as e:
        # ValueError: an integer with more digits than int() converts; RecursionError: absurd nesting.
        raise bad(f"header is not valid JSON: {type(e).__name__}: {str(e)[:80]}") from None
    if not isinstance(obj, dict):
        raise bad(f"header is JSON {type(obj).__name__}, not an object")
    return obj


def _is_utf8(s: str) -> bool:
    # JSON "\ud800" escapes decode to lone surrogates in Python; Rust strings cannot hold them.
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _check_metadata(entry: Any, bad: _Bad) -> dict[str, str]:
    if not isinstance(entry, dict):
        raise bad(f"__metadata__ must be an object of strings, got JSON {_json_type(entry)}")
    for key, value in entry.items():
        if not isinstance(value, str):
            raise bad(f"__metadata__[{key!r}] must be a string, got JSON {_json_type(value)}")
        if not (_is_utf8(key) and _is_utf8(value)):
            raise bad(f"__metadata__[{key!r}] contains an unpaired UTF-16 surrogate escape")
    return entry


_ENTRY_KEYS = frozenset({"dtype", "shape", "data_offsets"})


def _check_entry(name: str, entry: Any, bad: _Bad) -> TensorSpan:
    if not _is_utf8(name):
        raise bad(f"tensor name {name!r} contains an unpaired UTF-16 surrogate escape")
    if not isinstance(entry, dict):
        raise bad(f"tensor {name!r} must be an object with dtype, shape and data_offsets, got JSON {_json_type(entry)}")
    if entry.keys() != _ENTRY_KEYS:
        missing = sorted(_ENTRY_KEYS - entry.keys())
        extra = sorted(entry.keys() - _ENTRY_KEYS)
        detail = "; ".join(
            part for part in (f"missing {missing}" if missing else "", f"unexpected {extra}" if extra else "") if part
        )
        raise bad(f"tensor {name!r} must have exactly dtype, shape and data_offsets ({detail})")
    dtype = entry["dtype"]
    if not isinstance(dtype, str) or dtype not in DTYPES:
        raise bad(f"tensor {name!r} has unknown dtype {dtype!r}")
    shape = entry["shape"]
    if not isinstance(shape, list) or not all(_is_u64(d) for d in shape):
        raise bad(f"tensor {name!r} shape must be a list of non-negative 64-bit integers, got {shape!r}")
    offsets = entry["data_offsets"]
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_u64(o) for o in offsets)):
        raise bad(f"tensor {name!r} data_offsets must be two non-negative 64-bit integers, got {offsets!r}")
    start, end = offsets
    if end < start:
        raise bad(f"tensor {name!r} data_offsets [{start}, {end}] end before they start")

    # Mirror safetensors' checked arithmetic: it multiplies the dims left to right in a u64 and refuses the
    # file on overflow, even when a later dim is 0.
    count = 1
    for dim in shape:
        count *= dim
        if count > _U64_MAX:
            raise bad(f"tensor {name!r} shape {shape} overflows a 64-bit element count")
    bits = count * DTYPES[dtype]
    if bits > _U64_MAX:
        raise bad(f"tensor {name!r} shape {shape} overflows a 64-bit bit count for {dtype}")
    if bits % 8:
        raise bad(
            f"tensor {name!r} ({dtype}, shape {shape}) is {bits} bits, which does not end on a byte boundary"
        )
    if bits // 8 != end - start:
        raise bad(
            f"tensor {name!r} ({dtype}, shape {shape}) needs {bits // 8} bytes but data_offsets "
            f"[{start}, {end}] span {end - start}"
        )
    return TensorSpan(name=name, dtype=dtype, shape=tuple(shape), start=start, end=end)


def _is_u64(value: Any) -> bool:
    # bool is an int subclass in Python; JSON true is not a number.
    return type(value) is int and 0 <= value <= _U64_MAX


def _json_type(value: Any) -> str:
    names = {dict: "object", list: "array", str: "string", bool: "boolean", int: "number", float: "number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


# --------------------------------------------------------------------------------------------- writing


def build_header(
    tensors: Iterable[tuple[str, str, tuple[int, ...]]], metadata: Mapping[str, str] | None
) -> tuple[bytes, list[TensorSpan]]:
    """Return the header bytes ``safetensors.torch.save_file`` writes for these tensors, and their spans.

    ``tensors`` gives ``(name, safetensors_dtype, header_shape)`` per tensor, in any order (for a torch
    tensor: ``TORCH_TO_ST[t.dtype]`` and :func:`st_shape`). The header includes the 8-byte length prefix;
    the spans come back in file order, which is safetensors' order: dtype descending (:data:`DTYPE_ORDER`),
    then name. Writing the header and then each tensor's bytes in that order gives the file ``save_file``
    would have written.

    One difference is unavoidable: safetensors keeps ``__metadata__`` in a Rust ``HashMap`` and writes its
    keys in a random order that changes from run to run. With zero or one metadata key the bytes are exact;
    with more, this writes the keys sorted, so the same checkpoint always yields the same header blob.
    And for no tensors with ``metadata={}``, safetensors 0.8 writes ``{},"__metadata__":{}}``, which is not
    JSON and which it cannot read back; this writes the valid ``{"__metadata__":{}}``.

    Raises ``ValueError`` for input ``save_file`` would also refuse: a duplicate or reserved name, an
    unknown dtype, a negative dimension, or a sub-byte tensor that does not fill whole bytes.
    """
    entries: list[tuple[str, str, tuple[int, ...]]] = []
    seen: set[str] = set()
    for name, dtype, shape in tensors:
        if not isinstance(name, str) or not _is_utf8(name):
            raise ValueError(f"tensor name {name!r} is not a valid UTF-8 string")
        if name == "__metadata__":
            raise ValueError("'__metadata__' is reserved and cannot name a tensor")
        if name in seen:
            raise ValueError(f"duplicate tensor name {name!r}")
        seen.add(name)
        if dtype not in DTYPES:
            raise ValueError(f"tensor {name!r} has unknown safetensors dtype {dtype!r}")
        try:
            shape = tuple(operator.index(d) for d in shape)
        except TypeError:
            raise ValueError(f"tensor {name!r} shape must be integers, got {shape!r}") from None
        if not all(0 <= d <= _U64_MAX for d in shape):
            raise ValueError(f"tensor {name!r} shape must be non-negative integers, got {shape!r}")
        entries.append((name, dtype, shape))

    entries.sort(key=lambda e: (-_DTYPE_RANK[e[1]], e[0]))
    spans: list[TensorSpan] = []
    offset = 0
    for name, dtype, shape in entries:
        bits = _prod(shape) * DTYPES[dtype]
        if bits % 8:
            raise ValueError(f"tensor {name!r} ({dtype}, shape {list(shape)}) does not fill whole bytes")
        spans.append(TensorSpan(name=name, dtype=dtype, shape=shape, start=offset, end=offset + bits // 8))
        offset += bits // 8

    doc: dict[str, Any] = {}
    if metadata is not None:
        for key, value in metadata.items():
            if not (isinstance(key, str) and isinstance(value, str) and _is_utf8(key) and _is_utf8(value)):
                raise ValueError(f"metadata must map UTF-8 strings to UTF-8 strings, got {key!r}: {value!r}")
        doc["__metadata__"] = dict(sorted(metadata.items()))
    for s in spans:
        doc[s.name] = {"dtype": s.dtype, "shape": list(s.shape), "data_offsets": [s.start, s.end]}
    # Compact separators and raw UTF-8 match serde_json::to_string byte for byte, escapes included
    # (both write \n-style short escapes and lowercase \u00XX for other control characters).
    body = json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    body += b" " * (-len(body) % 8)
    return struct.pack("<Q", len(body)) + body, spans


def _prod(shape: Iterable[int]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


# --------------------------------------------------------------------------------------------- tensors


def st_shape(t: torch.Tensor) -> tuple[int, ...]:
    """The shape safetensors records for ``t``: its torch shape, except for packed float4.

    ``torch.float4_e2m1fn_x2`` stores two F4 values per element and safetensors records the logical shape,
    doubling the last dimension. A 0-d float4 tensor has no last dimension, and safetensors refuses it.
    """
    shape = tuple(t.shape)
    if _dtype_maps()[0].get(t.dtype) == "F4":
        if not shape:
            raise ValueError("a 0-d float4_e2m1fn_x2 tensor cannot be stored in safetensors")
        return shape[:-1] + (shape[-1] * 2,)
    return shape


def torch_shape(dtype: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    """The torch shape of a tensor safetensors records as `dtype` and `shape`: the inverse of :func:`st_shape`."""
    if dtype == "F4":
        return tuple(shape[:-1]) + (shape[-1] // 2,)
    return tuple(shape)


def tensor_bytes(t: torch.Tensor) -> memoryview:
    """A read-only view of a CPU tensor's bytes as safetensors stores them, without copying when possible.

    Hashing and writing gigabytes of weights must not double peak memory, so the bytes are viewed in
    place: reinterpret the (flattened) tensor as uint8, which shares its storage, and hand that to the
    buffer protocol through numpy. The values are never converted. The returned view keeps the tensor's
    storage alive. A copy happens only when the tensor is not contiguous or carries a lazy conjugate/negative
    bit, since then its memory does not hold the bytes safetensors would write.
    """
    if t.device.type != "cpu":
        raise ValueError(f"tensor_bytes needs a CPU tensor, got one on {t.device}")
    import torch

    if t.dtype not in _dtype_maps()[0]:
        raise ValueError(f"torch dtype {t.dtype} has no safetensors equivalent")
    if sys.byteorder != "little" and t.element_size() > 1:
        raise NotImplementedError("safetensors data is little-endian; big-endian hosts are not supported")
    t = t.detach().resolve_conj().resolve_neg()
    if not t.is_contiguous():
        t = t.contiguous()
    # reshape(-1) first: view(dtype) to a smaller element size refuses 0-d tensors.
    raw = t.reshape(-1).view(torch.uint8)
    return memoryview(raw.numpy()).toreadonly()
