"""From blobs back to tensors and folders: a state dict mapped from the blobs, byte-exact export."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

from .._format import safetensors as _safetensors
from .._backend.posix import copy_into, map_concat, write_at
from .._format.manifest import FileEntry, Manifest, TensorEntry
from .._format.modelfacts import weight_files  # noqa: F401  (re-exported: callers use _load.weight_files)
from .._backend.protocols import Blobs
from .._core.hashing import BlobRef, hash_bytes
from .._repo.objects import read_blob
from .._format.safetensors import torch_shape
from .._core.suggest import close_matches
from ..errors import CheckpointNotFound, CorruptObject, DestinationNotEmpty, IncompleteCheckpoint, InvalidArgument

if TYPE_CHECKING:
    import torch

    from .._repo.repository import Repository


def _check(blobs: Blobs, blob: BlobRef, data, *, ckpt: str, file: str, tensor: str | None = None) -> None:
    if len(data) != blob.size or hash_bytes(data) != blob.digest:
        what = f"tensor {tensor!r} of {file}" if tensor else file
        raise CorruptObject(
            f"Checkpoint {ckpt!r} is damaged: blob {blob.digest[:12]} of {what} does not match its hash.",
            digest=blob.digest,
            path=file,
        )


def load_tensor(
    blobs: Blobs, entry: TensorEntry, parts: list[tuple[BlobRef, int]], *, verify: bool, ckpt: str, file: str
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
        flat = _map_blob(blobs, parts[0][0]) if len(parts) == 1 and os.name == "posix" else None
        if flat is None and (region := _map_parts(blobs, entry, parts)) is not None:
            flat = torch.frombuffer(region, dtype=torch.uint8)
        if flat is None:
            mapped = False  # read (a backend with no local files), and checked as read
            flat = torch.empty(entry.nbytes, dtype=torch.uint8)
            buf = memoryview(flat.numpy())
            for blob, offset in parts:
                data = blobs.read(blob.digest)
                if len(data) != blob.size:
                    raise CorruptObject(
                        f"Checkpoint {ckpt!r} is damaged: blob {blob.digest[:12]} of tensor {entry.name!r} in"
                        f" {file} has {len(data)} bytes, expected {blob.size}.",
                        digest=blob.digest,
                        path=file,
                    )
                dst = buf[offset - entry.start : offset - entry.start + blob.size]
                dst[:] = data
                if verify:
                    _check(blobs, blob, dst, ckpt=ckpt, file=file, tensor=entry.name)
        if mapped and verify:
            with memoryview(flat.numpy()) as view:
                for blob, offset in parts:
                    a = offset - entry.start
                    _check(blobs, blob, view[a : a + blob.size], ckpt=ckpt, file=file, tensor=entry.name)
    except CorruptObject as exc:
        if "tensor" not in exc.message:
            exc.message = f"Checkpoint {ckpt!r} is damaged: tensor {entry.name!r} in {file}: {exc.message}"
            exc.args = (exc.message,)
        raise
    return flat.view(dtype).reshape(torch_shape(entry.dtype, entry.shape))  # packed fp4: half the last dim


def _map_blob(blobs: Blobs, blob: BlobRef) -> torch.Tensor | None:
    """One blob as a uint8 tensor over a private map of its file (None where the backend keeps no local file).
    torch maps it natively (one call; the descriptor is closed at once): 200 tensors map in 3.8 ms this way,
    5.4 ms through Python's mmap, which also keeps a descriptor open per tensor."""
    import torch

    path = blobs.local_path(blob.digest)
    if path is None:
        return None
    # Checked first: reading a map past the end of a shorter file kills the process (SIGBUS) instead of raising.
    try:
        size = os.stat(path).st_size
    except FileNotFoundError:
        raise CorruptObject(f"Blob {blob.digest[:12]} is missing from the store.", digest=blob.digest) from None
    if size < blob.size:
        return None  # stored encoded (packed), or truncated: the caller reads, which decodes or finds the damage
    if size != blob.size:
        raise CorruptObject(f"Blob {blob.digest[:12]} has {size} bytes, expected {blob.size}.", digest=blob.digest)
    return torch.empty(0, dtype=torch.uint8).set_(torch.UntypedStorage.from_file(path, False, blob.size))


def _map_parts(blobs: Blobs, entry: TensorEntry, parts: list[tuple[BlobRef, int]]):
    """The tensor's chunk blobs mapped side by side as one buffer, when they tile it exactly; else None (the
    caller reads them)."""
    position = entry.start
    for blob, offset in parts:
        if offset != position:
            return None
        position += blob.size
    if position != entry.end:
        return None
    return blobs.map([(blob.digest, blob.size) for blob, _ in parts])


def load_state_dict(
    blobs: Blobs, manifest: Manifest, *, files: list[FileEntry] | None = None, verify: bool = False
) -> dict[str, torch.Tensor]:
    files = weight_files(manifest) if files is None else files
    if not files:
        raise IncompleteCheckpoint(
            f"Checkpoint {manifest.name!r} has no safetensors weights to load.",
            hint="Legacy .bin weights are loaded through a materialized folder; 'ckpt import' converts them.",
        )
    prefetch(blobs, files, ckpt=manifest.name)
    out: dict[str, torch.Tensor] = {}
    blobs = _predecoded(blobs, files, verify=verify)
    for f in files:
        parts = f.tensor_blobs()
        for entry in f.tensors:
            out[entry.name] = load_tensor(blobs, entry, parts[entry.name], verify=verify, ckpt=manifest.name, file=f.path)
    return out


def prefetch(blobs: Blobs, files: Iterable[FileEntry], *, ckpt: str) -> None:
    """Fetch the files' blobs side by side where the backend reads through a local cache (a remote store; each
    blob is checked against its hash on arrival); nothing to do for a local one."""
    fetch = getattr(blobs, "prefetch", None)
    if fetch is None:
        return
    files = list(files)
    try:
        fetch(list({b.digest: (b.digest, b.size) for f in files for b in f.blobs}.values()))
    except CorruptObject as exc:
        where = next((f.path for f in files for b in f.blobs if b.digest == exc.digest), None)
        if where is not None:
            exc.path = where
            exc.message = f"Checkpoint {ckpt!r} is damaged: {where}: {exc.message}"
            exc.args = (exc.message,)
        raise
class _Decoded:
    """The store's blobs, with the packed ones among a load's already decoded: into files of the local blob cache
    (mapped zero-copy like raw blobs), or into memory where they cannot be cached."""

    def __init__(self, blobs: Blobs, paths: dict[str, str], decoded: dict[str, bytes]) -> None:
        self._blobs = blobs
        self._paths = paths
        self._decoded = decoded

    def __getattr__(self, name: str):
        return getattr(self._blobs, name)

    def local_path(self, digest: str) -> str | None:
        if digest in self._decoded:
            return None
        path = self._paths.get(digest)
        if path is None:
            return self._blobs.local_path(digest)
        if not os.path.exists(path):
            # Evicted since it was decoded (a load larger than the cache's cap, or a prune meanwhile): into memory.
            del self._paths[digest]
            self._decoded[digest] = self._blobs.read(digest)
            return None
        return path

    def map(self, blobs):
        """A chunked tensor's blobs mapped side by side, from the cache's files for the decoded ones."""
        if not any(d in self._decoded or d in self._paths for d, _ in blobs):
            return self._blobs.map(blobs)
        paths = [self.local_path(d) for d, _ in blobs]
        if any(p is None for p in paths):
            return None  # one is in memory only: the caller reads them
        fds: list[tuple[int, int]] = []
        try:
            for path, (_, size) in zip(paths, blobs):
                try:
                    fds.append((os.open(path, os.O_RDONLY), size))
                except FileNotFoundError:
                    return None
                if os.fstat(fds[-1][0]).st_size != size:
                    return None  # checked first: a map past the end of a file kills the process; read reports it
            region = map_concat(fds)
            return None if region is None else memoryview(region)
        finally:
            for fd, _ in fds:
                os.close(fd)

    def read(self, digest: str, start: int = 0, end: int | None = None) -> bytes:
        data = self._decoded.get(digest)
        if data is None and (path := self._paths.get(digest)) is not None:
            with contextlib.suppress(FileNotFoundError):  # evicted meanwhile: decoded again below
                with open(path, "rb") as f:
                    data = f.read()
        if data is None:
            return self._blobs.read(digest, start, end)
        return data if not start and end is None else data[start:end]


def _predecoded(blobs: Blobs, files: list[FileEntry], *, verify: bool = False) -> Blobs:
    """Packed blobs (stored shorter than their raw size) are found with one stat per blob, then decoded in a pool
    of threads (zstd and BLAKE3 release the GIL) into the local blob cache, or found there already decoded by an
    earlier load: either way they then map zero-copy, as raw blobs do."""
    stored_size = getattr(blobs, "stored_size", None)
    if stored_size is None or not getattr(blobs, "encodings", False):
        return blobs  # a store whose blobs are all raw (object storage): not one stat for it
    packed = sorted({(b.digest, b.size) for f in files for b in f.blobs[1:]
                     if stored_size(b.digest) not in (None, b.size)})
    if not packed:
        return blobs
    decoded_path = getattr(blobs, "decoded_path", None)

    def one(item: tuple[str, int]) -> str | bytes:
        digest, size = item
        path = decoded_path(digest, size, verify=verify) if decoded_path is not None else None
        return path if path is not None else blobs.read(digest)

    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1), thread_name_prefix="ckpt-decode") as pool:
        got = dict(zip((d for d, _ in packed), pool.map(one, packed)))
    return _Decoded(blobs, {d: v for d, v in got.items() if isinstance(v, str)},
                    {d: v for d, v in got.items() if not isinstance(v, str)})


def read_file_bytes(blobs: Blobs, entry: FileEntry, *, verify: bool = True) -> bytes:
    return b"".join(read_blob(blobs, b.digest, verify=verify) for b in entry.blobs)


def stored_file(manifest: Manifest, path: str) -> FileEntry:
    """The file `path` of the checkpoint; CheckpointNotFound with did-you-mean when it has no such file."""
    entry = manifest.file(path)
    if entry is None:
        close = close_matches(path, [f.path for f in manifest.files], cutoff=0.6)
        exc = CheckpointNotFound(path, close, kind=f"file in {manifest.name!r}:")
        exc.hint = f"'ckpt show {manifest.name}' lists its files."
        raise exc
    return entry


def read_stored_file(blobs: Blobs, manifest: Manifest, path: str, *, verify: bool = True) -> bytes:
    return read_file_bytes(blobs, stored_file(manifest, path), verify=verify)


def load_file_tensors(blobs: Blobs, manifest: Manifest, path: str, *, verify: bool = False) -> dict[str, torch.Tensor]:
    """The tensors of one safetensors file of the checkpoint (e.g. an optimizer state file)."""
    entry = manifest.file(path)
    if entry is None or not entry.is_safetensors:
        raise CheckpointNotFound(f"{manifest.name}/{path}")
    return load_state_dict(blobs, manifest, files=[entry], verify=verify)


@contextlib.contextmanager
def materialized(repo: "Repository", manifest: Manifest, *, only: Callable[[str], bool] | None = None
                 ) -> Iterator[Path]:
    """A temporary folder holding the checkpoint (or the files `only` accepts), removed afterwards. It lives in
    the repository's scratch folder, or the system's when this process cannot write there (a read-only store)."""
    files = [f for f in manifest.files if only is None or only(f.path)]
    scratch = None if repo.read_only else repo.tmp
    if scratch is not None:
        scratch.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{os.getpid()}-ckpt-load-", dir=scratch))
    try:
        export(repo.blobs, manifest, tmp, files=files)
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _export_blob(
    blobs: Blobs, fd: int, blob: BlobRef, offset: int, *, verify: bool, ckpt: str, file: str
) -> None:
    """Write one blob at `offset` of `fd`. A missing or resized blob is caught even without `verify` (one stat),
    and every kind of damage is reported naming the checkpoint and the file, as `ckpt verify` would."""
    damaged = f"Checkpoint {ckpt!r} is damaged: blob {blob.digest[:12]} of {file}"
    path = blobs.local_path(blob.digest)
    raw = False  # stored at its raw size in a local file: neither decoded nor asked its size again
    if path is not None:
        try:
            raw = os.stat(path).st_size == blob.size
        except FileNotFoundError:
            raise CorruptObject(f"{damaged} is missing.", digest=blob.digest, path=file) from None
        if raw and not verify:  # a kernel copy; a packed blob is shorter and is decoded below
            copy_into(fd, path, blob.size, offset)
            return
    if not raw:
        # Packed: decoded once into the local blob cache (hashed there when `verify`), then a kernel copy from it.
        decoded_path = getattr(blobs, "decoded_path", None)
        if decoded_path is not None and (decoded := decoded_path(blob.digest, blob.size, verify=verify)) is not None:
            with contextlib.suppress(FileNotFoundError):  # pruned meanwhile by another process: decoded below
                copy_into(fd, decoded, blob.size, offset)
                return
        size = blobs.size(blob.digest)
        if size is None:
            raise CorruptObject(f"{damaged} is missing.", digest=blob.digest, path=file)
        if size != blob.size:
            raise CorruptObject(f"{damaged} has {size} bytes, expected {blob.size}.", digest=blob.digest, path=file)
    data = blobs.read(blob.digest)
    if len(data) != blob.size:
        raise CorruptObject(f"{damaged} has {len(data)} bytes, expected {blob.size}.", digest=blob.digest, path=file)
    if verify:
        _check(blobs, blob, data, ckpt=ckpt, file=file)
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


def take_back(dest: Path, existed: bool) -> None:
    """Remove what a failed export wrote: everything in `dest` when it was there before (export takes only an
    empty one), else `dest` itself."""
    if existed:
        for child in dest.iterdir():
            shutil.rmtree(child) if child.is_dir() else child.unlink()
    else:
        shutil.rmtree(dest, ignore_errors=True)


def export(
    blobs: Blobs,
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
    prefetch(blobs, files if files is not None else manifest.files, ckpt=manifest.name)
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
                    _export_blob, blobs, fd, blob, offset, verify=verify, ckpt=manifest.name, file=entry.path
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
        take_back(dest, existed)
        raise
    finally:
        pool.shutdown(wait=True)
    return written
