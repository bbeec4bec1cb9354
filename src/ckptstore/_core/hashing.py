"""Content addressing: BLAKE3 digests and the BlobRef a manifest lists for each blob."""

from __future__ import annotations

import re
from dataclasses import dataclass

import blake3

HEX_LEN = 64
_DIGEST = re.compile(f"[0-9a-f]{{{HEX_LEN}}}")


def flat(data: bytes | memoryview) -> bytes | memoryview:
    """`data` as bytes: a tensor's memoryview is cast to unsigned bytes, so its length counts bytes."""
    return data if isinstance(data, bytes) else memoryview(data).cast("B")


def hash_bytes(data: bytes | memoryview) -> str:
    return blake3.blake3(data).hexdigest()


def is_digest(text: str) -> bool:
    # A regex, not a loop over characters: every blob of every manifest read goes through here.
    return isinstance(text, str) and _DIGEST.fullmatch(text) is not None


@dataclass(frozen=True)
class BlobRef:
    """One blob as a manifest lists it. `encoding` is how it is stored ('raw' in format 2; room for zstd/delta)."""

    digest: str
    size: int
    encoding: str = "raw"

    def to_json(self) -> list:
        return [self.digest, self.size] if self.encoding == "raw" else [self.digest, self.size, self.encoding]

    @classmethod
    def from_json(cls, raw: list) -> "BlobRef":
        return cls(raw[0], int(raw[1]), raw[2] if len(raw) > 2 else "raw")
