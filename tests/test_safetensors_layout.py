"""The safetensors split layer against the installed safetensors: real files, no mocks.

The contract under test: `build_header` predicts `save_file`'s header byte for byte, `read_layout` cuts a real
file into header + tensor ranges that concatenate back to the file, and `read_layout` never accepts a file
safetensors refuses and never fails with anything but InvalidSafetensors.
"""

from __future__ import annotations

import io
import json
import random
import struct
from pathlib import Path

import numpy as np
import pytest
import safetensors
import safetensors.torch
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ckptstore._format.safetensors import (
    DTYPE_ORDER,
    DTYPES,
    MAX_HEADER_SIZE,
    ST_TO_TORCH,
    TORCH_TO_ST,
    Layout,
    TensorSpan,
    build_header,
    read_layout,
    st_shape,
    tensor_bytes,
)
from ckptstore.errors import InvalidSafetensors

# ----------------------------------------------------------------------------------------------- helpers


def make_tensor(dtype: torch.dtype, shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    """A tensor of any storable dtype filled with random bytes (valid 0/1 for bool)."""
    g = torch.Generator().manual_seed(seed)
    numel = 1
    for d in shape:
        numel *= d
    if dtype == torch.bool:
        return torch.randint(0, 2, shape, generator=g).bool()
    raw = torch.randint(0, 256, (numel * dtype.itemsize,), dtype=torch.uint8, generator=g)
    return raw.view(dtype).reshape(shape)


def spec(tensors: dict[str, torch.Tensor]) -> list[tuple[str, str, tuple[int, ...]]]:
    return [(name, TORCH_TO_ST[t.dtype], st_shape(t)) for name, t in tensors.items()]


def header_of(blob: bytes) -> bytes:
    (n,) = struct.unpack("<Q", blob[:8])
    return blob[: 8 + n]


def layout_of(blob: bytes) -> Layout:
    return read_layout(io.BytesIO(blob), len(blob), path="mem.safetensors")


def reassemble(layout: Layout, blob: bytes) -> bytes:
    data = blob[layout.data_start :]
    return layout.header + b"".join(data[s.start : s.end] for s in layout.tensors)


def raw_file(
    header: bytes | str | dict, data: bytes | int = b"", *, pad: bool = True, length: int | None = None
) -> bytes:
    """Hand-make a file: header JSON (dict/str/bytes), optional padding, data bytes or a count of zeros."""
    if isinstance(header, dict):
        header = json.dumps(header, separators=(",", ":"))
    if isinstance(header, str):
        header = header.encode("utf-8")
    if pad:
        header += b" " * (-len(header) % 8)
    if isinstance(data, int):
        data = bytes(data)
    return struct.pack("<Q", len(header) if length is None else length) + header + data


def safetensors_accepts(blob: bytes, tmp_dir: Path) -> bool:
    path = tmp_dir / "probe.safetensors"
    path.write_bytes(blob)
    try:
        with safetensors.safe_open(str(path), framework="pt") as f:
            f.keys()
    except Exception:
        return False
    return True


STORABLE = sorted(TORCH_TO_ST, key=lambda d: DTYPE_ORDER.index(TORCH_TO_ST[d]))


# ----------------------------------------------------------------------------------------------- dtype tables


def test_dtype_tables_are_consistent() -> None:
    assert list(DTYPES) == list(DTYPE_ORDER)
    assert all(DTYPES[k] in (4, 6, 8, 16, 32, 64) for k in DTYPES)
    assert {v: k for k, v in ST_TO_TORCH.items()} == TORCH_TO_ST
    for dtype, name in TORCH_TO_ST.items():
        bits = 4 if name == "F4" else dtype.itemsize * 8
        assert DTYPES[name] == bits, name


def test_torch_to_st_covers_every_dtype_save_file_writes() -> None:
    writable: dict[torch.dtype, str] = {}
    for dtype in {v for v in vars(torch).values() if isinstance(v, torch.dtype)}:
        try:
            t = torch.zeros(2, dtype=torch.uint8).view(dtype) if dtype.itemsize == 1 else torch.zeros(2, dtype=dtype)
            blob = safetensors.torch.save({"x": t})
        except Exception:
            continue  # torch cannot make it, or safetensors has no name for it
        writable[dtype] = json.loads(header_of(blob)[8:])["x"]["dtype"]
    assert writable == TORCH_TO_ST
    for name in ("F8_E4M3", "F8_E5M2", "F8_E8M0", "BOOL", "U16", "U32", "U64", "BF16", "F4"):
        assert name in ST_TO_TORCH


def test_dtype_order_matches_installed_safetensors() -> None:
    # One tensor per dtype, named so that name order is the reverse of the expected dtype order: the data
    # order can then only come from the dtype sort.
    tensors = {f"t{len(STORABLE) - i:02d}": make_tensor(d, (2,)) for i, d in enumerate(STORABLE)}
    blob = safetensors.torch.save(tensors)
    header = json.loads(header_of(blob)[8:])
    written = [header[k]["dtype"] for k in sorted(header, key=lambda k: header[k]["data_offsets"])]
    expected = [d for d in reversed(DTYPE_ORDER) if d in ST_TO_TORCH]
    assert written == expected


# ----------------------------------------------------------------------------------------------- build_header


def _cases() -> dict[str, tuple[dict[str, torch.Tensor], dict[str, str] | None]]:
    every = {f"w.{TORCH_TO_ST[d].lower()}": make_tensor(d, (3, 2), i) for i, d in enumerate(STORABLE)}
    zero = {f"z.{TORCH_TO_ST[d]}": make_tensor(d, (0, 4) if i % 2 else (4, 0), i) for i, d in enumerate(STORABLE)}
    scalars = {f"s{i}": make_tensor(d, ()) for i, d in enumerate(STORABLE) if TORCH_TO_ST[d] != "F4"}
    many = {f"model.layers.{i}.weight": make_tensor(STORABLE[i % len(STORABLE)], (i % 5, 3), i) for i in range(60)}
    unicode = {
        "héllo": make_tensor(torch.float32, (2,)),
        "名前": make_tensor(torch.float16, (3,)),
        "emoji😀": make_tensor(torch.bfloat16, (1,)),
        'quote"back\\slash': make_tensor(torch.int64, (1,)),
        "ctrl\n\t\x01\x1f\x7f": make_tensor(torch.uint8, (5,)),
        "": make_tensor(torch.bool, (3,)),
        "Z": make_tensor(torch.float32, (1,)),
        "a": make_tensor(torch.float32, (1,)),
    }
    return {
        "empty": ({}, None),
        "empty-meta": ({}, {"format": "pt"}),
        "one": ({"w": make_tensor(torch.float32, (4, 4))}, None),
        "one-meta": ({"w": make_tensor(torch.float32, (4, 4))}, {"format": "pt"}),
        "meta-empty-dict": ({"w": make_tensor(torch.int8, (3,))}, {}),
        "meta-unicode": ({"w": make_tensor(torch.int8, (3,))}, {"clé\n": 'vàl"😀\x00'}),
        "every-dtype": (every, None),
        "every-dtype-meta": (every, {"format": "pt"}),
        "zero-size": (zero, {"format": "pt"}),
        "scalars": (scalars, None),
        "many": (many, {"format": "pt"}),
        "unicode-names": (unicode, None),
        "padding-0..7": ({"x" * k: make_tensor(torch.float32, (1,)) for k in range(1, 9)}, None),
    }


@pytest.mark.parametrize("case", list(_cases()))
def test_build_header_matches_save_file(case: str, tmp_path: Path) -> None:
    tensors, metadata = _cases()[case]
    path = tmp_path / "m.safetensors"
    safetensors.torch.save_file(tensors, str(path), metadata=metadata)
    blob = path.read_bytes()

    header, spans = build_header(spec(tensors), metadata)
    assert header == header_of(blob)
    assert len(header) % 8 == 0
    with path.open("rb") as f:
        layout = read_layout(f, len(blob), path=str(path))
    assert spans == list(layout.tensors)
    assert layout.metadata == metadata
    # The spans really describe save_file's data: tensor bytes laid out in span order rebuild the file.
    assert header + b"".join(bytes(tensor_bytes(tensors[s.name])) for s in spans) == blob


@pytest.mark.parametrize("length", [0, 1, 5, 8])
def test_build_header_padding(length: int) -> None:
    header, spans = build_header([("n" * length, "F32", (1,))], None)
    assert header == header_of(safetensors.torch.save({"n" * length: torch.zeros(1)}))
    assert spans == [TensorSpan("n" * length, "F32", (1,), 0, 4)]


def test_build_header_random_dicts_match_save_file() -> None:
    rng = random.Random(1234)
    alphabet = "abcXYZ._-09é名😀"
    for _ in range(40):
        tensors = {}
        for _ in range(rng.randint(0, 12)):
            dtype = rng.choice(STORABLE)
            shape = tuple(rng.randint(0, 3) for _ in range(rng.randint(0 if TORCH_TO_ST[dtype] != "F4" else 1, 3)))
            tensors["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 6)))] = make_tensor(dtype, shape)
        metadata = rng.choice([None, {}, {"format": "pt"}, {"k": "".join(rng.choice(alphabet) for _ in range(9))}])
        if not tensors and metadata == {}:
            continue  # safetensors writes invalid JSON here; see test_empty_file_with_empty_metadata
        blob = safetensors.torch.save(tensors, metadata=metadata)
        header, spans = build_header(spec(tensors), metadata)
        assert header == header_of(blob)
        assert spans == list(layout_of(blob).tensors)


def test_empty_file_with_empty_metadata() -> None:
    # safetensors 0.8 writes '{},"__metadata__":{}}' for no tensors and metadata={}: not JSON, and
    # safetensors cannot read it back. build_header writes the valid header instead; read_layout refuses
    # the broken one like safetensors does.
    blob = safetensors.torch.save({}, metadata={})
    if safetensors_accepts_bytes(blob):  # fixed upstream: then build_header must match it exactly
        assert build_header([], {})[0] == header_of(blob)
    else:
        with pytest.raises(InvalidSafetensors, match="not valid JSON"):
            layout_of(blob)
    header, spans = build_header([], {})
    assert header[8:] == b'{"__metadata__":{}}     ' and spans == []
    assert layout_of(header).metadata == {}


def test_build_header_sorts_metadata_keys_deterministically() -> None:
    # safetensors writes __metadata__ from a HashMap: key order is random per call. The content must agree,
    # and build_header must be stable whatever order the caller's dict has.
    metadata = {k: f"v{k}" for k in "qwertyuiop"}
    tensors = {"w": make_tensor(torch.float32, (2,))}
    header, _ = build_header(spec(tensors), metadata)
    reversed_header, _ = build_header(spec(tensors), dict(reversed(list(metadata.items()))))
    assert header == reversed_header
    real = header_of(safetensors.torch.save(tensors, metadata=metadata))
    assert len(header) == len(real)
    assert json.loads(header[8:]) == json.loads(real[8:])
    assert list(json.loads(header[8:])["__metadata__"]) == sorted(metadata)


@pytest.mark.parametrize(
    ("tensors", "metadata", "match"),
    [
        ([("a", "F32", (1,)), ("a", "F16", (1,))], None, "duplicate tensor name"),
        ([("__metadata__", "F32", (1,))], None, "reserved"),
        ([("a", "F128", (1,))], None, "unknown safetensors dtype"),
        ([("a", "F32", (-1,))], None, "non-negative"),
        ([("a", "F32", (1.5,))], None, "integers"),
        ([("a", "F4", (3,))], None, "whole bytes"),
        ([("a", "F4", ())], None, "whole bytes"),
        ([("\ud800", "F32", (1,))], None, "UTF-8"),
        ([("a", "F32", (1,))], {"k": 1}, "metadata"),
    ],
)
def test_build_header_refuses_what_save_file_refuses(tensors, metadata, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        build_header(tensors, metadata)


def test_build_header_accepts_f6_dtypes() -> None:
    header, spans = build_header([("a", "F6_E2M3", (4,)), ("b", "F6_E3M2", (8,)), ("c", "F4", (2,))], None)
    assert [(s.name, s.nbytes) for s in spans] == [("b", 6), ("a", 3), ("c", 1)]
    blob = header + bytes(10)
    assert safetensors_accepts_bytes(blob)
    assert list(layout_of(blob).tensors) == spans


def safetensors_accepts_bytes(blob: bytes) -> bool:
    try:
        safetensors.deserialize(blob)
    except Exception:
        return False
    return True


# ----------------------------------------------------------------------------------------------- read_layout


@pytest.mark.parametrize("case", ["empty", "every-dtype-meta", "zero-size", "scalars", "unicode-names", "many"])
def test_read_layout_round_trips_real_files(case: str, tmp_path: Path) -> None:
    tensors, metadata = _cases()[case]
    path = tmp_path / "m.safetensors"
    safetensors.torch.save_file(tensors, str(path), metadata=metadata)
    blob = path.read_bytes()
    with path.open("rb") as f:
        layout = read_layout(f, path.stat().st_size, path=str(path))
    assert reassemble(layout, blob) == blob
    assert layout.file_size == len(blob)
    assert layout.data_start == len(layout.header)
    assert layout.data_size == sum(s.nbytes for s in layout.tensors)
    assert [s.start for s in layout.tensors] == sorted(s.start for s in layout.tensors)
    assert {s.name for s in layout.tensors} == set(tensors)
    for s in layout.tensors:
        t = tensors[s.name]
        assert (s.dtype, s.shape) == (TORCH_TO_ST[t.dtype], st_shape(t))
        assert blob[layout.data_start + s.start : layout.data_start + s.end] == bytes(tensor_bytes(t))


class CountingReader(io.BytesIO):
    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.requested = 0

    def read(self, size: int | None = -1) -> bytes:  # type: ignore[override]
        assert size is not None and size >= 0, "read_layout must never read to EOF"
        self.requested += size
        return super().read(size)


def test_read_layout_reads_only_the_header() -> None:
    blob = safetensors.torch.save({"w": make_tensor(torch.float32, (256, 256))})
    reader = CountingReader(blob)
    layout = read_layout(reader, len(blob))
    assert reader.requested == layout.data_start < len(blob)


@pytest.mark.parametrize("claimed", [2**64 - 1, 2**40, MAX_HEADER_SIZE + 1, 1000])
def test_read_layout_checks_length_before_reading(claimed: int) -> None:
    reader = CountingReader(struct.pack("<Q", claimed) + b"{}      ")
    with pytest.raises(InvalidSafetensors):
        read_layout(reader, 16)
    assert reader.requested == 8


def test_read_layout_notices_a_file_shorter_than_its_stated_size() -> None:
    blob = safetensors.torch.save({"w": torch.zeros(4)})
    with pytest.raises(InvalidSafetensors, match="file ended after"):
        read_layout(io.BytesIO(blob[:20]), len(blob))
    with pytest.raises(InvalidSafetensors, match="file ended after 3 bytes"):
        read_layout(io.BytesIO(blob[:3]), len(blob))


def test_error_carries_path_and_hint() -> None:
    with pytest.raises(InvalidSafetensors) as info:
        read_layout(io.BytesIO(b"abc"), 3, path="/x/model.safetensors")
    assert info.value.path == "/x/model.safetensors"
    assert str(info.value).startswith("/x/model.safetensors: ")
    assert "\n" not in str(info.value)
    assert info.value.hint


U8 = {"dtype": "U8", "shape": [4], "data_offsets": [0, 4]}

# (id, file bytes, message regex, does safetensors itself refuse it too?)
MALFORMED: list[tuple[str, bytes, str, bool]] = [
    ("empty-file", b"", r"file is 0 bytes, too short", True),
    ("short-file", b"\x02\x00\x00", r"file is 3 bytes, too short", True),
    ("header-len-0", struct.pack("<Q", 0), r"header length is 0", True),
    ("header-too-big", struct.pack("<Q", MAX_HEADER_SIZE + 1) + b"{}", r"header length 100000001 exceeds", True),
    ("header-past-eof", raw_file("{}", pad=False, length=64), r"truncated: header length 64 needs .* 72 bytes but it has 10", True),
    ("not-utf8", raw_file(b'{"\xff":1}'), r"not valid UTF-8 \(byte 10\)", True),
    ("leading-space", raw_file(b" {}"), r"does not start with '\{'", False),
    ("bom", raw_file("\ufeff{}"), r"does not start with '\{'", True),
    ("not-json", raw_file('{"a":'), r"not valid JSON", True),
    ("trailing-garbage", raw_file('{}x'), r"not valid JSON: Extra data", True),
    ("nan", raw_file('{"a":{"dtype":"U8","shape":[NaN],"data_offsets":[0,0]}}'), r"contains NaN", True),
    ("huge-int", raw_file('{"a":{"dtype":"U8","shape":[' + "9" * 5000 + '],"data_offsets":[0,0]}}'), r"not valid JSON", True),
    ("deep-nesting", raw_file('{"a":' + "[" * 100_000 + "]" * 100_000 + "}"), r"not valid JSON|must be an object", True),
    ("duplicate-key", raw_file('{"a":' + json.dumps(U8) + ',"a":' + json.dumps(U8) + "}", 4), r"duplicate key 'a'", False),
    ("entry-not-object", raw_file({"a": [1]}), r"tensor 'a' must be an object .* got JSON array", True),
    ("entry-missing-key", raw_file({"a": {"dtype": "U8", "shape": [0]}}), r"tensor 'a' must have exactly .*missing \['data_offsets'\]", True),
    ("entry-extra-key", raw_file({"a": {**U8, "x": 1}}, 4), r"unexpected \['x'\]", False),
    ("unknown-dtype", raw_file({"a": {**U8, "dtype": "F128"}}, 4), r"tensor 'a' has unknown dtype 'F128'", True),
    ("lowercase-dtype", raw_file({"a": {**U8, "dtype": "f32"}}, 4), r"unknown dtype 'f32'", True),
    ("dtype-not-string", raw_file({"a": {**U8, "dtype": 8}}, 4), r"unknown dtype 8", True),
    ("negative-shape", raw_file({"a": {**U8, "shape": [-4]}}, 4), r"shape must be a list of non-negative", True),
    ("float-shape", raw_file({"a": {**U8, "shape": [4.0]}}, 4), r"shape must be .* got \[4\.0\]", True),
    ("minus-zero-shape", raw_file('{"a":{"dtype":"U8","shape":[-0],"data_offsets":[0,0]}}'), r"shape must be", True),
    ("bool-shape", raw_file({"a": {**U8, "shape": [True]}}, 1), r"shape must be .* got \[True\]", True),
    ("shape-not-list", raw_file({"a": {**U8, "shape": 4}}, 4), r"shape must be a list", True),
    ("shape-over-u64", raw_file({"a": {**U8, "shape": [2**64, 0]}}), r"64-bit", True),
    ("offsets-three", raw_file({"a": {**U8, "data_offsets": [0, 4, 4]}}, 4), r"data_offsets must be two", True),
    ("offsets-negative", raw_file({"a": {**U8, "data_offsets": [-1, 3]}}, 4), r"data_offsets must be two non-negative", True),
    ("offsets-float", raw_file({"a": {**U8, "data_offsets": [0, 4.0]}}, 4), r"data_offsets must be two", True),
    ("end-before-start", raw_file({"a": {**U8, "shape": [0], "data_offsets": [4, 0]}}, 4), r"\[4, 0\] end before they start", True),
    ("size-mismatch", raw_file({"a": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 12]}}, 12), r"needs 16 bytes but data_offsets \[0, 12\] span 12", True),
    ("subbyte-misaligned", raw_file({"a": {"dtype": "F4", "shape": [3], "data_offsets": [0, 2]}}, 2), r"12 bits, which does not end on a byte boundary", True),
    ("subbyte-ceil", raw_file({"a": {"dtype": "F6_E3M2", "shape": [5], "data_offsets": [0, 4]}}, 4), r"30 bits", True),
    ("element-overflow", raw_file({"a": {**U8, "shape": [2**63, 2**63, 0], "data_offsets": [0, 0]}}), r"overflows a 64-bit element count", True),
    ("bit-overflow", raw_file({"a": {"dtype": "F64", "shape": [2**61], "data_offsets": [0, 0]}}), r"overflows a 64-bit bit count", True),
    ("not-from-zero", raw_file({"a": {**U8, "data_offsets": [2, 6]}}, 6), r"does not start at offset 0: the first tensor 'a' starts at 2", True),
    ("gap", raw_file({"a": U8, "b": {**U8, "data_offsets": [6, 10]}}, 10), r"gap of 2 bytes .* 'a' ends at 4 .* 'b' starts at 6", True),
    ("overlap", raw_file({"a": U8, "b": {**U8, "data_offsets": [2, 6]}}, 6), r"'a' \[0, 4\) and 'b' \[2, 6\) overlap", True),
    ("same-range", raw_file({"a": U8, "b": U8}, 4), r"overlap", True),
    ("truncated-data", raw_file({"a": U8}, 3), r"truncated: header says data ends at byte 68 but the file has 67 bytes", True),
    ("trailing-bytes", raw_file({"a": U8}, 7), r"trailing bytes: header says data ends at byte 68 but the file has 71 bytes \(3 extra\)", True),
    ("metadata-not-object", raw_file({"__metadata__": "pt"}), r"__metadata__ must be an object of strings, got JSON string", True),
    ("metadata-null", raw_file({"__metadata__": None}), r"__metadata__ must be an object .* got JSON null", False),
    ("metadata-number", raw_file({"__metadata__": {"step": 5}}), r"__metadata__\['step'\] must be a string, got JSON number", True),
    ("metadata-nested", raw_file({"__metadata__": {"a": {"b": "c"}}}), r"__metadata__\['a'\] must be a string, got JSON object", True),
    ("surrogate-name", raw_file('{"\\ud800":' + json.dumps(U8) + "}", 4), r"unpaired UTF-16 surrogate", True),
    ("surrogate-metadata", raw_file('{"__metadata__":{"k":"\\udfff"}}'), r"unpaired UTF-16 surrogate", True),
]


@pytest.mark.parametrize(("blob", "match", "refused_upstream"), [c[1:] for c in MALFORMED], ids=[c[0] for c in MALFORMED])
def test_read_layout_rejects_malformed(blob: bytes, match: str, refused_upstream: bool) -> None:
    with pytest.raises(InvalidSafetensors, match=match) as info:
        layout_of(blob)
    assert "\n" not in str(info.value)
    if refused_upstream:
        assert not safetensors_accepts_bytes(blob)


@pytest.mark.parametrize(
    "blob",
    [
        raw_file({}),
        raw_file("{}", pad=False),
        raw_file({"__metadata__": {}}),
        raw_file({"a": {**U8, "shape": [0, 2**63, 2**63], "data_offsets": [0, 0]}}),  # zero first: no overflow
        raw_file({n: {**U8, "shape": [0], "data_offsets": [0, 0]} for n in "ab"}),  # zero-size tensors share 0
        raw_file({"b": {**U8, "data_offsets": [4, 8]}, "a": U8}, 8),  # header order is not data order
        raw_file({"a": {"dtype": "F6_E2M3", "shape": [4], "data_offsets": [0, 3]}}, 3),
        raw_file({"a": {"dtype": "F4", "shape": [2, 3, 2], "data_offsets": [0, 6]}}, 6),
        raw_file('{"a":{"dtype":"U8","shape":[\n4 ],"data_offsets":[0,4]}\t}\r\n', 4),
        raw_file({"__metadata__": {"k": "v"}, "a": U8}, 4, length=None),
    ],
)
def test_read_layout_accepts_valid_hand_made_files(blob: bytes) -> None:
    layout = layout_of(blob)
    assert safetensors_accepts_bytes(blob)
    assert reassemble(layout, blob) == blob


# ----------------------------------------------------------------------------------------------- fuzz

_SEED_TENSORS = [
    {},
    {"w": make_tensor(torch.float32, (3, 2)), "b": make_tensor(torch.bfloat16, (2,)), "m": make_tensor(torch.bool, ())},
    {f"l{i}": make_tensor(STORABLE[i], (i % 3, 2), i) for i in range(len(STORABLE))},
]
_SEEDS = [
    safetensors.torch.save(t, metadata=m) for t in _SEED_TENSORS for m in (None, {"format": "pt"})
]


def _json_value() -> st.SearchStrategy:
    small = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-3, 70),
        st.sampled_from([2**63, 2**64, 2**64 - 1, 0.5, -0.0]),
        st.text(max_size=4),
        st.sampled_from(sorted(DTYPES) + ["f32", "F128"]),
    )
    return st.recursive(
        small,
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=2),
        max_leaves=6,
    )


@st.composite
def mutated_files(draw: st.DrawFn) -> bytes:
    blob = draw(st.sampled_from(_SEEDS))
    (n,) = struct.unpack("<Q", blob[:8])
    kind = draw(st.sampled_from(["truncate", "bytes", "json", "prefix", "append"]))
    if kind == "truncate":
        return blob[: draw(st.integers(0, len(blob)))]
    if kind == "append":
        return blob + draw(st.binary(min_size=1, max_size=9))
    if kind == "prefix":
        return struct.pack("<Q", draw(st.one_of(st.integers(0, n + 64), st.integers(0, 2**64 - 1)))) + blob[8:]
    if kind == "bytes":
        out = bytearray(blob)
        for _ in range(draw(st.integers(1, 4))):
            i = draw(st.integers(8, 8 + n - 1))
            out[i] = draw(st.integers(0, 255))
        return bytes(out)
    # JSON-level edits reach the deeper checks that random bytes rarely get past the parser to.
    doc = json.loads(blob[8 : 8 + n])
    for _ in range(draw(st.integers(1, 3))):
        keys = list(doc)
        target = draw(st.sampled_from(keys)) if keys else None
        op = draw(st.sampled_from(["field", "dim", "offset", "drop", "add", "meta"]))
        if op == "field" and target and isinstance(doc[target], dict):
            doc[target][draw(st.sampled_from(["dtype", "shape", "data_offsets", "extra"]))] = draw(_json_value())
        elif op == "dim" and target and isinstance(doc[target], dict) and isinstance(doc[target].get("shape"), list):
            doc[target]["shape"] = draw(st.lists(st.integers(0, 6), max_size=3))
        elif op == "offset" and target and isinstance(doc[target], dict):
            offsets = doc[target].get("data_offsets")
            if isinstance(offsets, list):
                doc[target]["data_offsets"] = [o + draw(st.integers(-4, 4)) for o in offsets if isinstance(o, int)]
        elif op == "drop" and target:
            del doc[target]
        elif op == "add":
            doc[draw(st.text(max_size=3))] = draw(_json_value())
        elif op == "meta":
            doc["__metadata__"] = draw(_json_value())
    header = json.dumps(doc, separators=(",", ":"), ensure_ascii=draw(st.booleans())).encode("utf-8")
    header += b" " * draw(st.sampled_from([-len(header) % 8, 0, 1]))
    data = blob[8 + n :]
    return struct.pack("<Q", len(header)) + header + data[: draw(st.integers(max(0, len(data) - 2), len(data)))]


@settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(blob=mutated_files())
def test_fuzz_read_layout_never_accepts_what_safetensors_refuses(
    blob: bytes, tmp_path_factory: pytest.TempPathFactory
) -> None:
    try:
        layout = layout_of(blob)
    except InvalidSafetensors:
        return
    tmp = tmp_path_factory.mktemp("fuzz", numbered=True)
    assert safetensors_accepts(blob, tmp), "read_layout accepted a file safetensors refuses"
    assert reassemble(layout, blob) == blob
    with safetensors.safe_open(str(tmp / "probe.safetensors"), framework="pt") as f:
        assert set(f.keys()) == {s.name for s in layout.tensors}
        assert f.metadata() == layout.metadata


# ----------------------------------------------------------------------------------------------- tensor_bytes


@pytest.mark.parametrize(
    ("dtype", "shape"),
    [
        (d, s)
        for d in STORABLE
        for s in [(), (0,), (3, 0, 2), (5,), (2, 3, 4)]
        if not (TORCH_TO_ST[d] == "F4" and s == ())  # safetensors cannot store a 0-d float4 tensor
    ],
    ids=str,
)
def test_tensor_bytes_is_a_zero_copy_view(dtype: torch.dtype, shape: tuple[int, ...]) -> None:
    t = make_tensor(dtype, shape, seed=7)
    view = tensor_bytes(t)
    assert view.readonly
    assert view.nbytes == t.numel() * t.element_size()
    assert bytes(view) == bytes(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    if view.nbytes:
        assert np.frombuffer(view, dtype=np.uint8).ctypes.data == t.data_ptr()
    blob = safetensors.torch.save({"t": t})
    assert blob[layout_of(blob).data_start :] == bytes(view)


def test_tensor_bytes_views_into_a_larger_storage() -> None:
    big = make_tensor(torch.bfloat16, (4, 8))
    row = big[2]
    view = tensor_bytes(row)
    assert np.frombuffer(view, dtype=np.uint8).ctypes.data == row.data_ptr()
    blob = safetensors.torch.save({"r": row.clone()})
    assert bytes(view) == blob[layout_of(blob).data_start :]


def test_tensor_bytes_view_outlives_the_tensor_name() -> None:
    view = tensor_bytes(torch.arange(1000, dtype=torch.int64))
    expected = torch.arange(1000, dtype=torch.int64).numpy().tobytes()
    assert bytes(view) == expected


def test_tensor_bytes_copies_only_when_it_must() -> None:
    t = make_tensor(torch.float32, (4, 6)).t()
    assert not t.is_contiguous()
    assert bytes(tensor_bytes(t)) == t.contiguous().numpy().tobytes()

    c = torch.tensor([1 + 2j, 3 - 4j], dtype=torch.complex64).conj()
    assert c.is_conj()
    assert bytes(tensor_bytes(c)) == c.resolve_conj().numpy().tobytes()

    p = torch.nn.Parameter(torch.ones(3))
    view = tensor_bytes(p)
    assert np.frombuffer(view, dtype=np.uint8).ctypes.data == p.data_ptr()


def test_tensor_bytes_refuses_what_it_cannot_view() -> None:
    with pytest.raises(ValueError, match="CPU"):
        tensor_bytes(torch.empty(2, device="meta"))
    with pytest.raises(ValueError, match="no safetensors equivalent"):
        tensor_bytes(torch.zeros(2, dtype=torch.complex128))


def test_st_shape() -> None:
    f4 = torch.zeros((3, 5), dtype=torch.uint8).view(torch.float4_e2m1fn_x2)
    assert st_shape(f4) == (3, 10)
    assert st_shape(torch.zeros(2, 3)) == (2, 3)
    assert st_shape(torch.tensor(1.0)) == ()
    with pytest.raises(ValueError):
        st_shape(torch.zeros((), dtype=torch.uint8).view(torch.float4_e2m1fn_x2))
