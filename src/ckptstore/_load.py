"""From blobs back to tensors and folders: a state dict mapped from the blobs, byte-exact export."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

from . import _safetensors
from ._backend import copy_into, write_at
from ._manifest import FileEntry, Manifest, TensorEntry
from ._objects import BlobRef, ObjectStore, hash_bytes
from ._safetensors import torch_shape
from .errors import CorruptObject, DestinationNotEmpty, IncompleteCheckpoint, InvalidArgument

if TYPE_CHECKING:
    import torch


def _check(objects: ObjectStore, blob: BlobRef, data, *, ckpt: str, file: str, tensor: str | None = None) -> None:
    if len(data) != blob.size or hash_bytes(data) != blob.digest:
        what = f"tensor {tensor!r} of {file}" if tensor else file
        raise CorruptObject(
            f"Checkpoint {ckpt!r} is damaged: blob {blob.digest[:12]} of {what} does not match its hash.",
            digest=blob.digest,
            path=file,
        )


def load_tensor(
    objects: ObjectStore, entry: TensorEntry, parts: list[tuple[BlobRef, int]], *, verify: bool, ckpt: str, file: str
) -> torch.Tensor:
    import torch  # here, not at the top: export, verify and show never build a tensor, and torch takes ~1 s to import

    dtype = _safetensors.ST_TO_TORCH.get(entry.dtype)
    if dtype is None:
        raise InvalidArgument(f"Tensor {entry.name!r} has dtype {entry.dtype}, which this torch cannot load.")
    if entry.nbytes == 0:
        return torch.empty(torch_shape(entry.dtype, entry.shape), dtype=dtype)
    try:
        # Zero-copy: the tensor's storage is a private (copy-on-write) map of its blob, or of its chunk blobs side
        # by side, holding no file descriptor. Reading BERT-base's chunked 94 MB embedding into fresh memory instead
        # cost ~50 ms a load (page faults on new memory, then the copy), half of what from_pretrained takes.
        mapped = True
        if len(parts) == 1 and os.name == "posix":
            flat = _map_blob(objects, parts[0][0])
        elif (region := _map_parts(objects, entry, parts)) is not None:
            flat = torch.frombuffer(region, dtype=torch.uint8)
        elif len(parts) == 1:
            blob = parts[0][0]
            mm = objects.map(blob.digest)
            if mm is None or len(mm) != entry.nbytes:
                raise CorruptObject(
                    f"Checkpoint {ckpt!r} is damaged: blob {blob.digest[:12]} of tensor {entry.name!r} in {file} has"
                    f" {0 if mm is None else len(mm)} bytes, expected {entry.nbytes}.",
                    digest=blob.digest,
                    path=file,
                )
            flat = torch.frombuffer(mm, dtype=torch.uint8)
        else:
            mapped = False  # read, and checked as read
            flat = torch.empty(entry.nbytes, dtype=torch.uint8)
            buf = memoryview(flat.numpy())
            for blob, offset in parts:
                with objects.open(blob.digest) as f:
                    dst = buf[offset - entry.start : offset - entry.start + blob.size]
                    n = f.readinto(dst)
                    if n != blob.size:
                        raise CorruptObject(
                            f"Checkpoint {ckpt!r} is damaged: blob {blob.digest[:12]} of tensor {entry.name!r} in"
                            f" {file} is truncated.",
                            digest=blob.digest,
                            path=file,
                        )
                    if verify:
                        _check(objects, blob, dst, ckpt=ckpt, file=file, tensor=entry.name)
        if mapped and verify:
            with memoryview(flat.numpy()) as view:
                for blob, offset in parts:
                    a = offset - entry.start
                    _check(objects, blob, view[a : a + blob.size], ckpt=ckpt, file=file, tensor=entry.name)
    except CorruptObject as exc:
        if "tensor" not in exc.message:
            exc.message = f"Checkpoint {ckpt!r} is damaged: tensor {entry.name!r} in {file}: {exc.message}"
            exc.args = (exc.message,)
        raise
    return flat.view(dtype).reshape(torch_shape(entry.dtype, entry.shape))  # packed fp4: half the last dim


def _map_blob(objects: ObjectStore, blob: BlobRef) -> torch.Tensor:
    """One blob as a uint8 tensor over a private map of its file. torch maps it natively (one call; the descriptor
    is closed at once): 200 tensors map in 3.8 ms this way, 5.4 ms through Python's mmap, which also keeps a
    descriptor open per tensor."""
    import torch

    path = objects.checked_path(blob)
    return torch.empty(0, dtype=torch.uint8).set_(torch.UntypedStorage.from_file(path, False, blob.size))


def _map_parts(objects: ObjectStore, entry: TensorEntry, parts: list[tuple[BlobRef, int]]):
    """The tensor's chunk blobs mapped side by side as one buffer, when they tile it exactly; else None (the
    caller reads them)."""
    position = entry.start
    for blob, offset in parts:
        if offset != position:
            return None
        position += blob.size
    if position != entry.end:
        return None
    return objects.map_many([blob for blob, _ in parts])


def weight_files(manifest: Manifest | Iterable[FileEntry]) -> list[FileEntry]:
    """The safetensors files from_pretrained would read: the root-level model weights (all shards). Takes the
    manifest, or its file list while it is being built."""
    files = manifest.files if isinstance(manifest, Manifest) else manifest
    root = [f for f in files if f.is_safetensors and "/" not in f.path]
    preferred = [f for f in root if f.path.startswith("model")] or root
    return preferred


def load_state_dict(
    objects: ObjectStore, manifest: Manifest, *, files: list[FileEntry] | None = None, verify: bool = False
) -> dict[str, torch.Tensor]:
    files = weight_files(manifest) if files is None else files
    if not files:
        raise IncompleteCheckpoint(
            f"Checkpoint {manifest.name!r} has no safetensors weights to load.",
            hint="Legacy .bin weights are loaded through a materialized folder; 'ckpt import' converts them.",
        )
    out: dict[str, torch.Tensor] = {}
    for f in files:
        parts = f.tensor_blobs()
        for entry in f.tensors:
            out[entry.name] = load_tensor(objects, entry, parts[entry.name], verify=verify, ckpt=manifest.name, file=f.path)
    return out


def read_file_bytes(objects: ObjectStore, entry: FileEntry, *, verify: bool = True) -> bytes:
    return b"".join(objects.read(b.digest, verify=verify) for b in entry.blobs)


def _export_blob(
    objects: ObjectStore, fd: int, blob: BlobRef, offset: int, *, verify: bool, ckpt: str, file: str
) -> None:
    """Write one blob at `offset` of `fd`. A missing or resized blob is caught even without `verify` (one stat),
    and every kind of damage is reported naming the checkpoint and the file, as `ckpt verify` would."""
    path = objects.path(blob.digest)
    damaged = f"Checkpoint {ckpt!r} is damaged: blob {blob.digest[:12]} of {file}"
    try:
        size = os.stat(path).st_size
    except FileNotFoundError:
        raise CorruptObject(f"{damaged} is missing.", digest=blob.digest, path=file) from None
    if size != blob.size:
        raise CorruptObject(f"{damaged} has {size} bytes, expected {blob.size}.", digest=blob.digest, path=file)
    if not verify:
        copy_into(fd, path, blob.size, offset)
        return
    data = objects.read(blob.digest, verify=False)
    _check(objects, blob, data, ckpt=ckpt, file=file)
    write_at(fd, data, offset)


def check_destination(dest: Path) -> bool:
    """Refuse a destination with files in it; return whether the folder already existed."""
    if dest.exists():
        if not dest.is_dir():
            raise DestinationNotEmpty(str(dest), is_file=True)
        if any(dest.iterdir()):
            raise DestinationNotEmpty(str(dest))
        return True
    return False


_OPEN_FILES = 32


def export(
    objects: ObjectStore,
    manifest: Manifest,
    dest: Path,
    *,
    verify: bool = False,
    files: list[FileEntry] | None = None,
    on_progress=None,
    threads: int | None = None,
) -> list[Path]:
    """Write the checkpoint's files under `dest`, byte for byte. On failure, what was written is removed.
    `threads` copy side by side (default: one per core, up to 4)."""
    existed = check_destination(dest)
    dest.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    open_files: list[tuple[int, list[tuple[Future[None], int]]]] = []  # (fd, its blob jobs) in file order

    def finish_oldest() -> None:
        fd, jobs = open_files[0]
        for job, size in jobs:
            job.result()
            if on_progress is not None:
                on_progress(size)
        open_files.pop(0)
        os.close(fd)

    # Every blob goes to its offset in its file from a pool of threads: copying from the page cache is CPU work,
    # and one thread leaves a core idle (bench/bench_limits.py measures 1, 2 and 3 threads against cp -r).
    threads = threads or min(4, os.cpu_count() or 1)
    pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="ckpt-export")
    try:
        for entry in files if files is not None else manifest.files:
            target = dest / entry.path
            if not target.resolve().is_relative_to(dest.resolve()):
                raise CorruptObject(f"Manifest of {manifest.name!r} has an unsafe path {entry.path!r}.")
            if sum(blob.size for blob in entry.blobs) != entry.size:
                raise CorruptObject(
                    f"Checkpoint {manifest.name!r} is damaged: the blobs of {entry.path} do not add up to its"
                    f" {entry.size} bytes.",
                    path=entry.path,
                )
            target.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            jobs: list[tuple[Future[None], int]] = []
            open_files.append((fd, jobs))
            written.append(target)
            offset = 0
            for blob in entry.blobs:
                job = pool.submit(
                    _export_blob, objects, fd, blob, offset, verify=verify, ckpt=manifest.name, file=entry.path
                )
                jobs.append((job, blob.size))
                offset += blob.size
            if len(open_files) > _OPEN_FILES:  # a checkpoint of thousands of files stays within the fd limit
                finish_oldest()
        while open_files:
            finish_oldest()
    except BaseException:
        pool.shutdown(wait=True, cancel_futures=True)
        for fd, _ in open_files:
            os.close(fd)
        if existed:
            for child in dest.iterdir():
                shutil.rmtree(child) if child.is_dir() else child.unlink()
        else:
            shutil.rmtree(dest, ignore_errors=True)
        raise
    finally:
        pool.shutdown(wait=True)
    return written
