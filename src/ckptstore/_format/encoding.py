"""Blob encodings: how a blob may be stored other than raw, without changing its identity (the BLAKE3 hash of its
raw bytes), so manifests, dedup and verify never see the difference.

A stored object is either the raw bytes, or an 80-byte header followed by a zstd frame:

    magic "\\x89CKB" | version u8 = 1 | encoding u8 (1 zstd, 2 delta) | width u8 | depth u8
    | raw size u64 LE | raw digest (32 bytes) | base digest (32 bytes, zeros for zstd) | zstd frame

- `zstd`: the raw bytes grouped by `width` (byte i of every value, then byte i+1, ...: the planes of a float tensor
  compress far better than the values; ZipNN's idea), then zstd.
- `delta`: the raw bytes XORed with the raw bytes of the base blob (same length: the same tensor one checkpoint
  earlier, where most sign and exponent bits are equal), then grouped and zstd'd like `zstd`.

How a reader tells them apart without any other document: an encoded object is always strictly shorter than its raw
bytes (a packer keeps the raw form otherwise), and its header holds the digest of the raw bytes, which no raw blob
can hold at that place (it would have to contain its own hash). `depth` is the delta chain length when it was
written (0 for zstd), for display; readers bound chains themselves.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

MAGIC = b"\x89CKB"
VERSION = 1
HEADER = struct.Struct("<4sBBBBQ32s32s")
HEADER_SIZE = HEADER.size  # 80
ZSTD = 1
DELTA = 2
NAMES = {ZSTD: "zstd", DELTA: "delta"}
MAX_DECODE_CHAIN = 64  # a chain longer than any packer writes: a loop or a crafted object


@dataclass(frozen=True)
class Header:
    encoding: int
    width: int
    depth: int
    raw_size: int
    digest: str
    base: str | None

    @property
    def name(self) -> str:
        return NAMES.get(self.encoding, "unknown")


def parse_header(prefix: bytes | memoryview, digest: str) -> Header | None:
    """The header of an encoded object stored under `digest`, or None when the object is the raw blob."""
    if len(prefix) < HEADER_SIZE or bytes(prefix[:4]) != MAGIC:
        return None
    magic, version, encoding, width, depth, raw_size, raw_digest, base = HEADER.unpack(bytes(prefix[:HEADER_SIZE]))
    if raw_digest.hex() != digest:
        return None  # raw bytes that happen to start like a header: they cannot hold their own hash
    return Header(encoding if version == VERSION else 0, width, depth, raw_size, digest,
                  base.hex() if encoding == DELTA else None)


def group(data: bytes | memoryview, width: int) -> bytes:
    """Byte planes: the i-th byte of every `width`-byte value together (a tail shorter than a value kept last)."""
    import numpy as np

    raw = np.frombuffer(data, dtype=np.uint8)
    if width <= 1 or len(raw) < width:
        return raw.tobytes()
    n = len(raw) // width
    planes = raw[: n * width].reshape(n, width).T.tobytes()
    return planes + raw[n * width :].tobytes()


def ungroup(data: bytes, width: int) -> bytes:
    import numpy as np

    raw = np.frombuffer(data, dtype=np.uint8)
    if width <= 1 or len(raw) < width:
        return data
    n = len(raw) // width
    values = raw[: n * width].reshape(width, n).T.tobytes()
    return values + raw[n * width :].tobytes()


def xor(a: bytes | memoryview, b: bytes | memoryview) -> bytes:
    import numpy as np

    return np.bitwise_xor(np.frombuffer(a, dtype=np.uint8), np.frombuffer(b, dtype=np.uint8)).tobytes()


def encode(raw: bytes | memoryview, digest: str, *, width: int, level: int, base: bytes | memoryview | None = None,
           base_digest: str | None = None, depth: int = 0) -> bytes:
    """The stored object for `raw` (zstd, or delta when a base of the same length is given)."""
    import zstandard

    if base is not None:
        if len(base) != len(raw) or base_digest is None:
            raise ValueError("a delta base must have the blob's length and a digest")
        body = group(xor(raw, base), width)
        head = HEADER.pack(MAGIC, VERSION, DELTA, width, depth, len(raw), bytes.fromhex(digest),
                           bytes.fromhex(base_digest))
    else:
        body = group(raw, width)
        head = HEADER.pack(MAGIC, VERSION, ZSTD, width, 0, len(raw), bytes.fromhex(digest), bytes(32))
    return head + zstandard.ZstdCompressor(level=level).compress(body)


def decode(stored: bytes | memoryview, header: Header, base: bytes | None = None) -> bytes:
    """The raw bytes of an encoded object (the caller supplies the base's raw bytes for a delta and checks the
    result against the digest). ValueError when the object cannot be decoded."""
    import zstandard

    if header.encoding not in NAMES:
        raise ValueError(f"unknown encoding {header.encoding}")
    try:
        body = zstandard.ZstdDecompressor().decompress(bytes(stored[HEADER_SIZE:]), max_output_size=header.raw_size)
    except zstandard.ZstdError as exc:
        raise ValueError(f"zstd: {exc}") from None
    if len(body) != header.raw_size:
        raise ValueError(f"decoded {len(body)} bytes, expected {header.raw_size}")
    plain = ungroup(body, header.width)
    if header.encoding == DELTA:
        if base is None or len(base) != header.raw_size:
            raise ValueError("the delta base has the wrong length")
        plain = xor(plain, base)
    return plain
