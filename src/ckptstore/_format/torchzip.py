"""The layout of a `torch.save` file (optimizer.pt, scheduler.pt, rng_state.pth, training_args.bin, a legacy
pytorch_model.bin): an uncompressed zip archive whose tensor storages are entries `<archive>/data/<key>`.

Only the zip container is parsed (the central directory, then each entry's local header), never the pickle inside:
what comes out is where each storage record's bytes sit in the file, so that a save can store every storage as
its own blob (and deduplicate it, and later delta-encode it against the same storage of the previous checkpoint)
while the container between them (local headers, the pickle, the central directory) becomes small blobs of its own.
The blobs end to end are the file, so reassembly needs nothing beyond what any file needs.

Anything unexpected (compression, encryption, entries that overlap or leave the file, a damaged directory) makes the
file "not a torch zip": it is then stored whole, exactly as before.
"""

from __future__ import annotations

import re
import struct
import zipfile
from typing import BinaryIO

MAGIC = b"PK\x03\x04"
SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
_STORAGE = re.compile(r"^[^/]+/data/[0-9]+$")
_LOCAL_HEADER = struct.Struct("<4sHHHHHIIIHH")  # 30 bytes: signature ... name length, extra length


def could_be(path: str) -> bool:
    return path.endswith(SUFFIXES)


def storage_spans(f: BinaryIO, size: int) -> list[tuple[int, int]] | None:
    """The (start, end) file offsets of each non-empty storage record, in file order, or None when `f` is not a
    well-formed uncompressed torch zip archive (then it is stored whole)."""
    try:
        f.seek(0)
        if f.read(4) != MAGIC:
            return None
        f.seek(0)
        # zipfile reads only the end record and the central directory here; no entry is extracted.
        with zipfile.ZipFile(f) as archive:
            infos = archive.infolist()
        spans: list[tuple[int, int]] = []
        records: list[tuple[int, int]] = []
        for info in infos:
            if info.compress_type != zipfile.ZIP_STORED or info.flag_bits & 0x1 or info.compress_size != info.file_size:
                return None
            f.seek(info.header_offset)
            raw = f.read(_LOCAL_HEADER.size)
            if len(raw) != _LOCAL_HEADER.size:
                return None
            fields = _LOCAL_HEADER.unpack(raw)
            if fields[0] != MAGIC or f.read(fields[9]) != info.orig_filename.encode("utf-8"):
                return None  # the directory and the record disagree on what is here
            start = info.header_offset + _LOCAL_HEADER.size + fields[9] + fields[10]
            end = start + info.compress_size
            if end > size:
                return None
            records.append((info.header_offset, end))
            if _STORAGE.match(info.filename) and end > start:
                spans.append((start, end))
        spans.sort()
        records.sort()
        if not spans:
            return None
        for (_, a_end), (b_start, _) in zip(records, records[1:]):
            if b_start < a_end:
                return None  # overlapping records: a crafted archive; stored whole
        return spans
    except Exception:  # noqa: BLE001 - whatever zipfile makes of a hostile archive, it is stored whole
        return None
    finally:
        f.seek(0)


def pieces(spans: list[tuple[int, int]], size: int, chunk_bytes: int) -> list[tuple[int, int, bool]]:
    """The file cut into (start, end, is_storage) pieces: the container between storages, each storage record
    (in chunks of `chunk_bytes`), the container after the last."""
    out: list[tuple[int, int, bool]] = []
    pos = 0
    for start, end in spans:
        for a in range(pos, start, chunk_bytes):
            out.append((a, min(a + chunk_bytes, start), False))
        for a in range(start, end, chunk_bytes):
            out.append((a, min(a + chunk_bytes, end), True))
        pos = end
    for a in range(pos, size, chunk_bytes):
        out.append((a, min(a + chunk_bytes, size), False))
    return out
