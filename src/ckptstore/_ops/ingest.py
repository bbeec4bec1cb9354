"""From files to blobs: the sources a save reads (a folder, or tensors in memory) and the streaming ingest that
hashes and writes them as blobs and returns the manifest's file entries."""

from __future__ import annotations

import contextlib
import io
import json
import mmap
import os
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._format.manifest import FileEntry, TensorEntry, file_digest
from .._core.names import file_path_problem
from .._core.hashing import BlobRef
from .._repo.objects import BlobHasher, BlobWriter
from .._format import torchzip
from .._format.safetensors import Layout, read_layout
from ..errors import IncompleteCheckpoint, InvalidCheckpoint, NotACheckpointFolder, SourceNotFound

Reader = Callable[[int, int], Any]  # (start, end) -> a bytes-like view of that range

# Files that hold model weights; a folder with any of them must also say what model they belong to.
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".h5", ".msgpack", ".gguf", ".ckpt")
CONFIG_FILES = ("config.json", "adapter_config.json")
# Training-state pickles Trainer writes beside the weights: stored verbatim, never weights, never opened.
TRAINING_STATE_FILES = ("optimizer.pt", "scheduler.pt", "scaler.pt", "training_args.bin")
SKIP_DIRS = frozenset({".git", ".cache", "__pycache__", ".ipynb_checkpoints"})


@dataclass
class SourceFile:
    """A file to store. For a safetensors file, `read` serves the data section (offsets as in its header);
    otherwise the whole file."""

    path: str
    size: int
    read: Reader
    layout: Layout | None = None
    converted_from: str | None = None
    # A torch zip file (optimizer.pt, ...): the file offsets of its storage records, each stored as blobs of its
    # own (docs/format.md, kind "torchzip"); None for any other file.
    storages: list[tuple[int, int]] | None = None


def _is_weight_file(rel: str) -> bool:
    base = rel.rsplit("/", 1)[-1]
    return base.endswith(WEIGHT_SUFFIXES) and base not in TRAINING_STATE_FILES and not base.startswith("rng_state")


def is_store_folder(path: Path) -> bool:
    """A ckptstore store (store.json beside objects/): never part of a checkpoint, even when it sits inside the
    folder being saved (`ckpt save .` with the default ./.ckpt)."""
    return (path / "store.json").is_file() and (path / "objects").is_dir()


def walk_folder(src: Path) -> list[tuple[str, Path]]:
    """Regular files under `src` (symlinked files followed, as in a hub snapshot), as (posix relative path, path).
    Stores inside `src` are skipped (see is_store_folder)."""
    out = []
    for dirpath, dirnames, filenames in os.walk(src, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS and not is_store_folder(Path(dirpath) / d))
        for fn in sorted(filenames):
            full = Path(dirpath) / fn
            if not full.is_file():
                if full.is_symlink() and not full.exists():
                    # A hub snapshot whose download never finished: saving the folder without the file would
                    # store a checkpoint that silently lacks it.
                    raise IncompleteCheckpoint(
                        f"Incomplete checkpoint in {str(src)!r}: {full.relative_to(src).as_posix()} is a broken link"
                        f" (to {os.readlink(full)!r}).",
                        path=str(src),
                        hint="Download the file again (for a hub cache: huggingface-cli download REPO), or remove"
                        " the link.",
                    )
                continue  # sockets, fifos
            rel = full.relative_to(src).as_posix()
            out.append((rel, full))
    return out


def check_folder(src: Path) -> list[tuple[str, Path]]:
    """The files of a checkpoint folder, or a clear error saying why it is not one."""
    if not src.exists():
        raise SourceNotFound(str(src))
    if not src.is_dir():
        raise NotACheckpointFolder(
            f"Source {str(src)!r} is a file, not a checkpoint folder.",
            path=str(src),
            hint="Give the folder that save_pretrained or Trainer wrote.",
        )
    files = walk_folder(src)
    if not files:
        raise NotACheckpointFolder(f"Source {str(src)!r} is an empty folder: nothing to store.", path=str(src),
                                   hint="Give the folder that save_pretrained or Trainer wrote.")
    names = {rel for rel, _ in files}
    for rel in sorted(names):
        problem = file_path_problem(rel)
        if problem:
            raise InvalidCheckpoint(
                f"Cannot store {rel!r} from {str(src)!r}: {problem}, so it could not be exported safely everywhere.",
                path=str(src),
                hint="Rename the file (no backslashes or control characters) or move it out of the folder.",
            )
    weights = [rel for rel in names if _is_weight_file(rel) and "/" not in rel]
    if weights and not any(c in names for c in CONFIG_FILES):
        raise IncompleteCheckpoint(
            f"Incomplete checkpoint in {str(src)!r}: it has weights ({', '.join(sorted(weights)[:3])}) but no"
            " config.json.",
            path=str(src),
        )
    for rel in sorted(names):
        if rel.endswith(".index.json") and "/" not in rel:
            try:
                index = json.loads((src / rel).read_text())
                shards = set(index.get("weight_map", {}).values())
            except (ValueError, AttributeError, UnicodeDecodeError):
                raise IncompleteCheckpoint(f"Shard index {rel} in {str(src)!r} is not valid JSON.", path=str(src))
            missing = sorted(s for s in shards if s not in names)
            if missing:
                raise IncompleteCheckpoint(
                    f"Incomplete checkpoint in {str(src)!r}: {rel} lists shard(s) that are missing: "
                    + ", ".join(missing[:3])
                    + ".",
                    path=str(src),
                    hint="Copy every shard into the folder (or re-save the model) and try again.",
                )
    return files


@contextlib.contextmanager
def folder_sources(files: list[tuple[str, Path]]) -> Iterator[list[SourceFile]]:
    """Open every file of the folder (mapped, so reads come straight from the page cache) and parse and check
    every safetensors header before a single blob is written: a bad file fails the save with nothing stored."""
    with contextlib.ExitStack() as stack:
        sources = []
        for rel, full in files:
            f = stack.enter_context(open(full, "rb"))
            size = os.fstat(f.fileno()).st_size
            mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if size else None
            if mm is not None:
                stack.callback(_close_map, mm)
            view = memoryview(mm) if mm is not None else memoryview(b"")
            stack.callback(view.release)
            layout = None
            if rel.endswith(".safetensors"):
                layout = read_layout(f, size, path=str(full))
                base = layout.data_start
                sources.append(SourceFile(rel, size, _slicer(view, base), layout))
            else:
                spans = torchzip.storage_spans(f, size) if torchzip.could_be(rel) else None
                sources.append(SourceFile(rel, size, _slicer(view, 0), storages=spans))
        yield sources


def _close_map(mm: mmap.mmap) -> None:
    try:
        mm.close()
    except BufferError:
        # A save that failed part way still holds slices of the map in its traceback (the blob writer's frames).
        # Raising here would replace the real error (EIO, ENOSPC) with this one; the map is unmapped with its
        # last slice instead.
        pass


def _slicer(view: memoryview, base: int) -> Reader:
    return lambda a, b: view[base + a : base + b]


def ingest(
    sources: list[SourceFile],
    writer: BlobWriter | BlobHasher,
    chunk_bytes: int,
    *,
    on_progress: Callable[[int], None] | None = None,
) -> list[FileEntry]:
    """Cut every source into blobs (header, then each tensor in chunks of `chunk_bytes`, or the whole file in
    chunks), hand them to the writer, and return the file entries in the order given."""
    planned: list[tuple[SourceFile, list[Future[BlobRef]]]] = []
    for src in sources:
        futures: list[Future[BlobRef]] = []
        if src.layout is not None:
            futures.append(writer.put(src.layout.header))
            for span in sorted(src.layout.tensors, key=lambda s: (s.start, s.end)):
                for a in range(span.start, span.end, chunk_bytes):
                    futures.append(writer.put(src.read(a, min(a + chunk_bytes, span.end))))
        elif src.storages is not None:
            for a, b, _ in torchzip.pieces(src.storages, src.size, chunk_bytes):
                futures.append(writer.put(src.read(a, b)))
        else:
            for a in range(0, src.size, chunk_bytes):
                futures.append(writer.put(src.read(a, min(a + chunk_bytes, src.size))))
        planned.append((src, futures))
    entries = []
    for src, futures in planned:
        blobs = []
        for fut in futures:
            ref = fut.result()
            blobs.append(ref)
            if on_progress is not None:
                on_progress(ref.size)
        tensors: tuple[TensorEntry, ...] = ()
        if src.layout is not None:
            tensors = tuple(TensorEntry(s.name, s.dtype, tuple(s.shape), s.start, s.end) for s in src.layout.tensors)
        entries.append(
            FileEntry(
                path=src.path,
                size=src.size,
                digest=file_digest(blobs),
                blobs=tuple(blobs),
                kind="safetensors" if src.layout is not None else "torchzip" if src.storages is not None else "blob",
                tensors=tensors,
                converted_from=src.converted_from,
            )
        )
    return entries


def bytes_source(path: str, data: bytes) -> SourceFile:
    view = memoryview(data)
    spans = torchzip.storage_spans(io.BytesIO(data), len(data)) if torchzip.could_be(path) else None
    return SourceFile(path, len(data), lambda a, b: view[a:b], storages=spans)
