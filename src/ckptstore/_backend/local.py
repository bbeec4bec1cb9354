"""LocalBackend: the storage protocols on a local filesystem (a store is a folder).

- blobs: ``objects/ab/cdef...``; a session writes each new blob to ``tmp/``, starts its writeback at once, then on
  commit makes them all durable with one filesystem sync, renames them into place and syncs their directories.
- documents: one file per key under the store folder, written to ``tmp/``, fsynced, then linked (create: the link
  fails when the name is taken) or renamed (replace) into place, and the directory synced. A version is the
  BLAKE3 of the content, compared under a short lock so that compare-and-swap is atomic between processes.
- coordination: flock(2) on files in ``locks/`` (released by the kernel when a process dies); a lease is a file
  ``locks/<key>.<pid>.<token>`` its holder keeps flocked, so it never outlives the process.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import mmap
import os
import secrets
import shutil
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import blake3

from .._core.failpoints import failpoint
from ..errors import CorruptObject, InvalidArgument, StoreLocked, StoreReadOnly
from .posix import fsync_dir, make_tmp_path, map_concat, start_writeback, sync_filesystem

# The failpoint names of document writes, by the folder the key lives in (README's failpoint table).
_FAILPOINTS = {"checkpoints": "manifest", "refs": "ref", "policies": "policy", "names": "name", "deleted": "delete"}


def refuse_link(path: Path | str) -> None:
    """Refuse to write into `path` when it is a symbolic link: a store unpacked from an untrusted archive could
    otherwise send blobs, tags or temporary files anywhere on the machine."""
    if os.path.islink(path):
        raise CorruptObject(
            f"{str(path)!r} inside the store is a symbolic link (to {os.readlink(path)!r}); ckptstore never writes"
            " through links in a store.",
            path=str(path),
            hint="Replace the link with a real folder (move the files it points at into it), then try again.",
        )


def _missing(digest: str) -> CorruptObject:
    return CorruptObject(f"Blob {digest[:12]} is missing from the store.", digest=digest)


class LocalBlobs:
    def __init__(self, root: Path) -> None:
        self.dir = root / "objects"
        self._dir_str = os.fspath(self.dir)
        self.tmp = root / "tmp"

    def fspath(self, digest: str) -> str:
        # A str, not a Path: saves and loads look up hundreds of blobs, and pathlib costs several times more.
        return f"{self._dir_str}{os.sep}{digest[:2]}{os.sep}{digest[2:]}"

    def size(self, digest: str) -> int | None:
        try:
            return os.stat(self.fspath(digest)).st_size
        except FileNotFoundError:
            return None

    def has(self, digest: str) -> bool:
        return os.path.exists(self.fspath(digest))

    def read(self, digest: str, start: int = 0, end: int | None = None) -> bytes:
        try:
            f = open(self.fspath(digest), "rb")
        except FileNotFoundError:
            raise _missing(digest) from None
        with f:
            if start:
                f.seek(start)
            return f.read() if end is None else f.read(end - start)

    def local_path(self, digest: str) -> str | None:
        return self.fspath(digest)

    def map(self, blobs: Sequence[tuple[str, int]]) -> memoryview | None:
        """Private copy-on-write maps of the blob files at consecutive addresses: writes to the buffer never reach
        the store. The sizes are checked first: reading a map past the end of a shorter file kills the process."""
        fds: list[tuple[int, int]] = []
        try:
            for digest, size in blobs:
                path = self.fspath(digest)
                try:
                    fd = os.open(path, os.O_RDONLY)
                except FileNotFoundError:
                    raise _missing(digest) from None
                fds.append((fd, size))
                actual = os.fstat(fd).st_size
                if actual != size:
                    raise CorruptObject(f"Blob {digest[:12]} has {actual} bytes, expected {size}.", digest=digest)
            if len(fds) == 1 and fds[0][1] > 0:
                return memoryview(mmap.mmap(fds[0][0], 0, access=mmap.ACCESS_COPY))
            region = map_concat(fds)
            return None if region is None else memoryview(region)
        finally:
            for fd, _ in fds:
                os.close(fd)

    def session(self) -> "LocalBlobSession":
        return LocalBlobSession(self)

    def iter(self) -> Iterator[tuple[str, int, float]]:
        if not self.dir.is_dir():
            return
        for sub in sorted(os.scandir(self.dir), key=lambda e: e.name):
            if not sub.is_dir(follow_symlinks=False) or len(sub.name) != 2:  # gc never deletes through a link
                continue
            for entry in os.scandir(sub.path):
                if len(entry.name) == 62 and entry.is_file():
                    st = entry.stat()
                    yield sub.name + entry.name, st.st_size, st.st_mtime

    def replace(self, digest: str, data: bytes | memoryview) -> bool:
        """Store `data` as the blob's new stored form (an encoding of the same raw bytes): written to `tmp/`, made
        durable, then renamed over the old form, so a crash leaves one form or the other, whole."""
        final = self.fspath(digest)
        if not os.path.exists(final):
            return False
        tmp = make_tmp_path(self.tmp, ".blob")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            failpoint("pack.write")
            view = memoryview(data)
            while view:
                n = os.write(fd, view)
                view = view[n:]
            failpoint("pack.fsync")
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        os.close(fd)
        failpoint("pack.rename")
        os.replace(tmp, final)
        fsync_dir(Path(os.path.dirname(final)))
        return True

    def delete(self, digest: str) -> None:
        failpoint("gc.unlink")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.fspath(digest))


class LocalBlobSession:
    """New blobs go to ``tmp/`` and become visible only on commit, after one sync has made them all durable."""

    def __init__(self, blobs: LocalBlobs) -> None:
        self._blobs = blobs
        self._lock = threading.Lock()
        self._staged: dict[str, tuple[Path, int]] = {}  # digest -> (temporary file, size): blobs this session writes
        self._tmp_files: list[Path] = []
        # Blobs this session renamed into objects/. Once there another save may reuse them, so an aborted save leaves
        # them for gc (which takes the objects lock exclusively) and only reports them.
        self.published: list[tuple[str, int]] = []
        self.bytes_written = 0
        blobs.tmp.mkdir(parents=True, exist_ok=True)

    def put(self, digest: str, data: bytes | memoryview) -> bool:
        with self._lock:
            if digest in self._staged or self._blobs.has(digest):
                return False
            tmp = make_tmp_path(self._blobs.tmp, ".blob")
            size = len(data) if isinstance(data, bytes) else data.nbytes
            self._staged[digest] = (tmp, size)
            self._tmp_files.append(tmp)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            view = memoryview(data)
            while view:
                failpoint("blob.write")
                n = os.write(fd, view)
                view = view[n:]
            # The disk starts on this blob while the workers hash and write the next ones; without it the whole
            # save waited in the final sync (BERT-base: 0.88 s -> 0.47 s, against 0.55 s for save_pretrained+fsync).
            start_writeback(fd)
        finally:
            os.close(fd)
        with self._lock:
            self.bytes_written += size
        return True

    def commit(self) -> None:
        if not self._staged:
            return
        failpoint("blob.sync")
        sync_filesystem(self._blobs.dir.parent, [tmp for tmp, _ in self._staged.values()])
        parents: set[str] = set()
        for digest, (tmp, size) in self._staged.items():
            failpoint("blob.rename")
            final = self._blobs.fspath(digest)
            parent = os.path.dirname(final)
            if parent not in parents:
                os.makedirs(parent, exist_ok=True)
                refuse_link(parent)
                parents.add(parent)
            os.replace(tmp, final)
            self.published.append((digest, size))
        self._staged.clear()
        # The renames themselves must be durable before a manifest may point at the blobs.
        sync_filesystem(self._blobs.dir.parent, [Path(p) for p in sorted(parents)])

    def abort(self) -> None:
        for tmp in self._tmp_files:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
        self._staged.clear()


def _version(data: bytes) -> str:
    return blake3.blake3(data).hexdigest()[:32]


class LocalDocuments:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.tmp = root / "tmp"
        self._cas_lock = root / "locks" / "documents"

    def _path(self, key: str) -> Path:
        # Keys are built by the repository from checked names; this is the last guard against a path outside.
        if not key or key.startswith("/") or ".." in key.split("/"):
            raise ValueError(f"invalid document key {key!r}")
        return self.root / key

    def get(self, key: str) -> tuple[bytes, str] | None:
        try:
            data = self._path(key).read_bytes()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return None
        return data, _version(data)

    def _stage(self, key: str, data: bytes) -> tuple[Path, Path, str]:
        """Write `data` to a durable temporary file; returns (temporary, final, failpoint prefix)."""
        fp = _FAILPOINTS.get(key.split("/", 1)[0], "write")
        final = self._path(key)
        refuse_link(final.parent)
        self.tmp.mkdir(parents=True, exist_ok=True)
        tmp = make_tmp_path(self.tmp)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            view = memoryview(data)
            while view:
                failpoint(f"{fp}.write")
                n = os.write(fd, view)
                view = view[n:]
            failpoint(f"{fp}.fsync")
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            tmp.unlink(missing_ok=True)
            raise
        os.close(fd)
        final.parent.mkdir(parents=True, exist_ok=True)
        return tmp, final, fp

    def create(self, key: str, data: bytes) -> bool:
        tmp, final, fp = self._stage(key, data)
        try:
            failpoint(f"{fp}.rename")
            os.link(tmp, final)  # atomic, and fails when the name is taken: If-None-Match on a filesystem
        except FileExistsError:
            return False
        finally:
            tmp.unlink(missing_ok=True)
        fsync_dir(final.parent)
        return True

    def put(self, key: str, data: bytes) -> None:
        """Write `data` under `key` whatever was there (files only this store writes, such as store.json)."""
        tmp, final, fp = self._stage(key, data)
        try:
            failpoint(f"{fp}.rename")
            os.replace(tmp, final)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        fsync_dir(final.parent)

    def _cas(self):
        return file_lock(self._cas_lock, what="documents")

    def replace(self, key: str, data: bytes, expected: str) -> bool:
        tmp, final, fp = self._stage(key, data)
        try:
            with self._cas():
                current = self.get(key)
                if current is None or current[1] != expected:
                    return False
                failpoint(f"{fp}.rename")
                os.replace(tmp, final)
        finally:
            tmp.unlink(missing_ok=True)
        fsync_dir(final.parent)
        return True

    def remove(self, key: str, expected: str | None = None) -> bool:
        path = self._path(key)
        fp = _FAILPOINTS.get(key.split("/", 1)[0], "write")
        with self._cas() if expected is not None else contextlib.nullcontext():
            if expected is not None:
                current = self.get(key)
                if current is None or current[1] != expected:
                    return False
            failpoint(f"{fp}.remove")
            try:
                path.unlink()
            except FileNotFoundError:
                return False
        fsync_dir(path.parent)
        with contextlib.suppress(OSError):
            if path.parent != self.root / key.split("/", 1)[0]:
                path.parent.rmdir()  # an emptied sub-folder (a run's tags) goes too
        return True

    def list(self, prefix: str) -> Iterator[str]:
        folder, _, start = prefix.rpartition("/")
        base = self.root / folder if folder else self.root
        if not base.is_dir():
            return
        stack = [(os.fspath(base), folder)]
        while stack:
            path, rel = stack.pop()
            try:
                entries = list(os.scandir(path))
            except (FileNotFoundError, NotADirectoryError):
                continue
            for entry in entries:
                key = f"{rel}/{entry.name}" if rel else entry.name
                if not key.startswith(prefix) and not prefix.startswith(key + "/"):
                    continue
                if entry.is_dir(follow_symlinks=False):
                    stack.append((entry.path, key))
                elif entry.is_file(follow_symlinks=False) and key.startswith(prefix):
                    yield key


@contextlib.contextmanager
def file_lock(path: Path, *, shared: bool = False, timeout: float = 60.0, what: str = "") -> Iterator[None]:
    """flock(2) on `path`: released by the kernel when the process dies. Polls, so a timeout can be honoured."""
    import time

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        # Every write to a store takes one of its locks first, so a store this process cannot write is refused
        # here, before anything is written, with one clear error.
        if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
            raise StoreReadOnly(str(path.parent.parent), exc.errno) from None
        raise
    try:
        mode = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
        deadline = time.monotonic() + timeout
        delay = 0.002
        while True:
            try:
                fcntl.flock(fd, mode | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise StoreLocked(
                        f"Timed out after {timeout:.0f}s waiting for the {what or path.name} lock of the store"
                        f" ({path})."
                    ) from None
                time.sleep(delay)
                delay = min(delay * 2, 0.1)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


class LocalCoordination:
    def __init__(self, root: Path) -> None:
        self.dir = root / "locks"

    def lock(self, name: str, *, exclusive: bool = True, timeout: float = 60.0):
        return file_lock(self.dir / name, shared=not exclusive, timeout=timeout, what=name)

    @contextlib.contextmanager
    def lease(self, key: str) -> Iterator[None]:
        folder, _, item = key.rpartition("/")
        path = self.dir / folder / f"{item}.{os.getpid()}.{secrets.token_hex(4)}"
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)
            yield
        finally:
            os.close(fd)
            path.unlink(missing_ok=True)

    def live_leases(self, prefix: str) -> set[str]:
        folder = prefix.rstrip("/")
        path = self.dir / folder
        if not path.is_dir():
            return set()
        live = set()
        for entry in os.scandir(path):
            item = entry.name.split(".", 1)[0]
            try:
                fd = os.open(entry.path, os.O_RDWR)
            except FileNotFoundError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                live.add(f"{folder}/{item}")
            else:
                Path(entry.path).unlink(missing_ok=True)  # its holder is gone
            finally:
                os.close(fd)
        return live


# What a store folder holds (format 1 and 2); anything else in a folder means it is not a store.
LAYOUT = ("objects", "checkpoints", "names", "refs", "policies", "deleted", "annotations", "tmp", "locks",
          "index.sqlite", "index.sqlite-wal", "index.sqlite-shm", "index.sqlite-journal")


def _writer_alive(name: str) -> bool:
    """Temporary names start with the writer's pid (see make_tmp_path). A reused pid only makes gc keep a file."""
    pid = name.split("-", 1)[0]
    if not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stale_tmp_files(tmp_dir: Path, *, grace: float) -> list[Path]:
    """What gc may delete in tmp/. Blob files (`*.blob`) are written only under the objects lock, which gc holds
    exclusively, so all of them are leftovers of interrupted saves. Anything else (a tag or policy being written,
    a folder materialized for a load) may belong to a command running now: it goes when the process that wrote
    it is gone, or after `grace` seconds."""
    if not tmp_dir.is_dir():
        return []
    now = time.time()
    out = []
    for p in tmp_dir.iterdir():
        try:
            if p.name.endswith(".blob") and p.is_file():
                out.append(p)
            elif not _writer_alive(p.name) or now - p.lstat().st_mtime >= grace:
                out.append(p)
        except FileNotFoundError:
            pass
    return sorted(out)


class LocalBackend:
    """A store in a local folder."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.url = os.fspath(self.root)
        self.blobs = LocalBlobs(self.root)
        self.documents = LocalDocuments(self.root)
        self.coordination = LocalCoordination(self.root)

    def create(self) -> None:
        """Make the folder of a new store; refuse a file, or a folder that holds something other than a store."""
        root = self.root
        if root.exists() and not root.is_dir():
            raise InvalidArgument(f"{str(root)!r} is a file, not a folder.", hint="Choose another path for the store.")
        others = sorted(p.name for p in root.iterdir() if p.name not in LAYOUT) if root.is_dir() else []
        if others:  # a store's own folders alone are an interrupted init, which may simply be re-run
            raise InvalidArgument(
                f"{str(root)!r} already holds files ({', '.join(others[:3])}{', ...' if len(others) > 3 else ''})"
                " and is not a store.",
                hint="A store gets a folder of its own: choose a new or empty path (e.g. ./.ckpt).",
            )
        self._make_layout()

    def _make_layout(self) -> None:
        for sub in ("objects", "checkpoints", "names", "refs/tags", "policies", "deleted", "tmp", "locks"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)

    def open(self) -> None:
        """Check the folder before anything reads through it: no file in its place, no links in it."""
        if self.root.exists() and not self.root.is_dir():
            raise InvalidArgument(
                f"{str(self.root)!r} is a file, not a store.",
                hint="Pass the store's folder with --store (or CKPT_STORE); 'ckpt init NEW_FOLDER' creates one.",
            )
        for sub in LAYOUT[:9]:
            refuse_link(self.root / sub)
        if (self.root / "store.json").is_file() and self.writable:
            self._make_layout()

    def leftovers(self, *, grace: float) -> list[str]:
        """Temporary files of interrupted writes that gc may remove (the caller holds the objects lock)."""
        return [str(p) for p in stale_tmp_files(self.root / "tmp", grace=grace)]

    def remove_leftovers(self, items: list[str] | tuple[str, ...]) -> None:
        for item in items:
            failpoint("gc.tmp")
            path = Path(item)
            if path.parent != self.root / "tmp":  # only what leftovers() named
                continue
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)

    def free_bytes(self) -> int | None:
        """Bytes a write by this process can still use on the store's filesystem (root may use the reserve)."""
        try:
            st = os.statvfs(self.root)
        except OSError:
            return None
        return st.f_frsize * (st.f_bfree if os.geteuid() == 0 else st.f_bavail)

    @property
    def scratch(self) -> str:
        return os.fspath(self.root)

    @property
    def writable(self) -> bool:
        try:
            return os.access(self.root, os.W_OK) and not os.statvfs(self.root).f_flag & os.ST_RDONLY
        except OSError as exc:
            if exc.errno in (errno.EROFS, errno.EACCES):
                return False
            raise

    def __repr__(self) -> str:
        return f"LocalBackend({self.url!r})"
