"""`Store`: the public Python API of a checkpoint store (docs/format.md describes what it writes)."""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import functools
import json
import os
import platform
import shutil
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import _annotations, _deletions, _load, _retention
from ._backend import atomic_write_bytes, fsync_dir
from ._catalog import Catalog, open_catalog
from ._failpoints import failpoint
from ._gc import GcPlan, stale_tmp_files
from ._info import CheckpointInfo, DiskUsage, RunUsage, SaveReport
from ._ingest import SourceFile, bytes_source, check_folder, folder_sources, ingest
from ._locks import file_lock
from ._manifest import FileEntry, Manifest, manifest_id
from ._names import RESERVED_TAGS, check_name, check_tag, run_of, split_tag_ref, step_from_name
from ._objects import BlobWriter, ObjectStore, is_digest, refuse_link
from ._refs import Refs
from ._space import check_room, store_full_on_enospc
from ._verify import Problem, VerifyReport, verify_manifests
from ._diff import DiffReport
from ._validate import ValidationReport
from .config import StoreConfig, check_chunk_bytes, resolve_store_path
from .errors import (
    AmbiguousReference,
    CheckpointNotFound,
    CkptError,
    CorruptObject,
    InvalidArgument,
    NameExists,
    RetentionWarning,
    StoreFull,
    StoreLocked,
    StoreNotFound,
)

MIN_ID_PREFIX = 4
# Temporary files not written under the objects lock (tag and policy writes, folders materialized for a load) may
# belong to a command running now; gc leaves them this long.
TMP_GRACE_SECONDS = 3600.0


@functools.lru_cache(maxsize=1)  # importlib.metadata costs ~40 ms a call; versions do not change mid-process
def _environment() -> dict[str, str]:
    import importlib.metadata as md

    env = {"python": platform.python_version(), "platform": platform.platform()}
    for pkg in ("ckptstore", "transformers", "torch", "safetensors", "tokenizers", "huggingface_hub"):
        try:
            env[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return env


def _model_facts(files: list[FileEntry], read_config: Callable[[str], bytes | None]) -> dict[str, Any]:
    import json

    facts: dict[str, Any] = {}
    raw = read_config("config.json")
    if raw is not None:
        try:
            cfg = json.loads(raw)
        except ValueError:
            cfg = {}
        if isinstance(cfg, dict):
            for key in ("model_type", "architectures", "transformers_version"):
                if key in cfg:
                    facts[key] = cfg[key]
            if "dtype" in cfg or "torch_dtype" in cfg:
                facts["config_dtype"] = cfg.get("dtype", cfg.get("torch_dtype"))
    from ._inspect import count_parameters

    params, dtypes = count_parameters(files)  # as validate counts them: buffers such as position_ids left out
    if params:
        facts["parameters"] = params
        facts["dtypes"] = dtypes
    return facts


@dataclass(frozen=True)
class DeletePlan:
    """What `delete` removes: the checkpoints, the tags that go with them, and the bytes `gc` can then free. A run's
    `latest` and `best` go only with its last checkpoint; otherwise they move to what the run keeps."""

    checkpoints: tuple[CheckpointInfo, ...]
    tags: tuple[str, ...]  # "run:tag"
    reclaimable_bytes: int
    executed: bool = False

    def to_json(self) -> dict:
        return {
            "executed": self.executed,
            "checkpoints": [c.name for c in self.checkpoints],
            "ids": [c.id for c in self.checkpoints],
            "tags": list(self.tags),
            "reclaimable_bytes": self.reclaimable_bytes,
        }


class Store:
    """A checkpoint store on the local filesystem.

    >>> store = Store.init("ckpts")                                  # doctest: +SKIP
    >>> store.save(model, "bert-sst2/step-500", tokenizer=tok, metrics={"eval_loss": 0.31})  # doctest: +SKIP
    >>> model = store.load("bert-sst2/step-500", cls=AutoModelForSequenceClassification)    # doctest: +SKIP
    """

    def __init__(self, root: Path, config: StoreConfig) -> None:
        # Use Store.open / Store.init.
        self.root = root
        self.config = config
        self.objects = ObjectStore(root)
        self.refs = Refs(root)
        self._catalog: Catalog | None = None
        self.damaged_manifests: dict[str, str] = {}  # id -> why it could not be indexed
        self._commit_owner: int | None = None  # the thread holding the commit lock through this Store
        self.last_save: SaveReport | None = None  # what this Store's most recent save wrote and pruned
        # This process cannot write the store (read-only mount, another user's): reads use an index of their own,
        # writes fail with StoreReadOnly.
        self.read_only = False
        # (blobs, bytes) the most recent save that failed or was interrupted had already moved into objects/: no
        # manifest references them (unless another save reused them meanwhile); gc reclaims them.
        self.failed_save_leftovers: tuple[int, int] = (0, 0)

    # -- opening ----------------------------------------------------------------------------------------------
    @classmethod
    def init(cls, path: str | os.PathLike[str] | None = None, *, chunk_bytes: int | None = None, exist_ok: bool = True) -> "Store":
        root = resolve_store_path(path)
        if (root / "store.json").exists():
            if not exist_ok:
                raise InvalidArgument(f"A store already exists at {str(root)!r}.", hint="Open it instead.")
            return cls.open(root)
        if root.exists() and not root.is_dir():
            raise InvalidArgument(f"{str(root)!r} is a file, not a folder.", hint="Choose another path for the store.")
        layout = ("objects", "checkpoints", "refs", "tmp", "locks", "policies")
        others = sorted(p.name for p in root.iterdir() if p.name not in layout) if root.is_dir() else []
        if others:  # a store's own folders alone are an interrupted init, which may simply be re-run
            raise InvalidArgument(
                f"{str(root)!r} already holds files ({', '.join(others[:3])}{', ...' if len(others) > 3 else ''})"
                " and is not a store.",
                hint="A store gets a folder of its own: choose a new or empty path (e.g. ./.ckpt).",
            )
        config = StoreConfig(chunk_bytes=check_chunk_bytes(chunk_bytes) if chunk_bytes else StoreConfig.chunk_bytes)
        for sub in ("objects", "checkpoints", "refs/tags", "tmp", "locks", "policies"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        # store.json last: a folder without it is not a store yet, so an interrupted init can simply be re-run.
        atomic_write_bytes(root / "store.json", config.to_json_bytes(), root / "tmp")
        return cls.open(root)

    @classmethod
    def open(cls, path: str | os.PathLike[str] | None = None, *, create: bool = False) -> "Store":
        root = resolve_store_path(path)
        cfg_path = root / "store.json"
        if root.exists() and not root.is_dir():
            raise InvalidArgument(
                f"{str(root)!r} is a file, not a store.",
                hint="Pass the store's folder with --store (or CKPT_STORE); 'ckpt init NEW_FOLDER' creates one.",
            )
        if not cfg_path.exists():
            if create:
                return cls.init(root)
            raise StoreNotFound(str(root))
        config = StoreConfig.from_json_bytes(cfg_path.read_bytes(), path=str(cfg_path))
        read_only = not os.access(root, os.W_OK)
        for sub in ("objects", "checkpoints", "refs", "refs/tags", "tmp", "locks", "policies"):
            refuse_link(root / sub)
            if not read_only:
                (root / sub).mkdir(parents=True, exist_ok=True)
        store = cls(root, config)
        store.read_only = read_only
        return store

    def close(self) -> None:
        if self._catalog is not None:
            self._catalog.close()
            self._catalog = None

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Store({str(self.root)!r})"

    # -- the index ----------------------------------------------------------------------------------------------
    @property
    def catalog(self) -> Catalog:
        if self._catalog is None:
            self._catalog = open_catalog(self.root, read_only=self.read_only)
            # No lock: readers must not wait for a writer (one stopped in its commit would block them all). A sync
            # that races a delete may re-index a manifest about to go; the next sync finds that delete in the
            # deletion log and drops the row, so the race cannot make a checkpoint look lost.
            self._sync_index()
        return self._catalog

    def _manifest_path(self, cid: str) -> Path:
        return self.root / "checkpoints" / f"{cid}.json"

    def _manifest_ids_on_disk(self) -> set[str]:
        out = set()
        for entry in os.scandir(self.root / "checkpoints"):
            if entry.name.endswith(".json") and is_digest(entry.name[:-5]):
                out.add(entry.name[:-5])
        return out

    def _sync_index(self) -> None:
        """Bring the index in line with the manifests and refs on disk (they are the truth)."""
        cat = self._catalog
        if cat is None:
            # Not opened yet (e.g. `untag` on a fresh Store touches only refs before syncing): opening syncs it.
            self.catalog
            return
        disk = self._manifest_ids_on_disk()
        indexed = cat.ids()
        missing = disk - indexed - set(self.damaged_manifests)
        extra = indexed - disk
        if extra:
            # Gone from disk: deleted by the store (an index that missed the delete: stale, or restored), or lost
            # behind its back, which verify must report, so its name is kept (see _deletions).
            deleted = extra & _deletions.recorded(self.root / "checkpoints")
            cat.remove_many(deleted)
            cat.remove_many(extra - deleted, lost=True)
        if missing:
            found = []
            for cid in sorted(missing):
                try:
                    found.append((cid, self._read_manifest(cid)))
                except CkptError as exc:
                    self.damaged_manifests[cid] = exc.message
            # Two manifests can carry one name only if a crash came between a delete and its index update
            # or a user copied files by hand; the newest wins in the index, both stay on disk.
            found.sort(key=lambda item: item[1].created_at)
            cat.add_many(found)
        tags = {k: v for k, v in self.refs.all().items() if v in disk}
        if tags != cat.tags():
            cat.set_tags(tags)
        _annotations.sync(self.root, cat)

    def reindex(self) -> int:
        """Throw the index away and rebuild it from manifests and refs. Returns the number of checkpoints."""
        with self._commit_lock():  # no other ckpt process is writing the index meanwhile
            self.close()
            for suffix in ("", "-wal", "-shm", "-journal"):
                Path(str(self.root / "index.sqlite") + suffix).unlink(missing_ok=True)
            self.damaged_manifests.clear()
            return len(self.catalog.ids())

    # -- locks ----------------------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _writing(self) -> Iterator[None]:
        """Held for a whole save: keeps gc from deleting blobs this save has written or decided to reuse."""
        with file_lock(self.root / "locks" / "gate", shared=True, what="gc gate"):
            pass
        with file_lock(self.root / "locks" / "objects", shared=True, what="objects"):
            yield

    @contextlib.contextmanager
    def _commit_lock(self) -> Iterator[None]:
        # Re-entrant for the thread that holds it (code that holds it calls helpers that take it too); another
        # thread of this process waits on its own descriptor like any other process.
        me = threading.get_ident()
        if self._commit_owner == me:
            yield
            return
        with file_lock(self.root / "locks" / "commit", what="commit"):
            self._commit_owner = me
            try:
                yield
            finally:
                self._commit_owner = None

    # -- references -------------------------------------------------------------------------------------------------
    def _read_manifest(self, cid: str) -> Manifest:
        try:
            data = self._manifest_path(cid).read_bytes()
        except FileNotFoundError:
            raise CheckpointNotFound(cid) from None
        return Manifest.from_bytes(data, expected_id=cid)

    def resolve(self, ref: str) -> str:
        """The id of the checkpoint `ref` names: a name, ``RUN:TAG``, or an id or unambiguous id prefix."""
        if not isinstance(ref, str) or not ref:
            raise InvalidArgument("Empty reference.", hint="Give a checkpoint name, RUN:TAG or an id prefix.")
        cat = self.catalog
        tag_ref = split_tag_ref(ref)
        if tag_ref is not None:
            run, tag = tag_ref
            cid = self.refs.get(run, tag)
            if cid is not None and self._manifest_path(cid).exists():
                return cid
            run_tags = sorted(f"{r}:{t}" for (r, t) in cat.tags() if r == run)
            candidates = tuple(difflib.get_close_matches(ref, run_tags, n=3, cutoff=0.5)) or tuple(run_tags[:3])
            raise CheckpointNotFound(ref, candidates, run=run)
        cid = cat.id_for_name(ref)
        if cid is not None:
            return cid
        lowered = ref.lower()
        if len(lowered) >= MIN_ID_PREFIX and all(c in "0123456789abcdef" for c in lowered):
            matches = cat.ids_with_prefix(lowered)
            if len(matches) == 1:
                return matches[0]
            if len(matches) > 1:
                names = {c.id: c.name for c in cat.infos(ids=matches)}
                raise AmbiguousReference(ref, tuple(f"{m[:12]} ({names.get(m, '?')})" for m in matches))
        names = cat.names()
        candidates = tuple(difflib.get_close_matches(ref, names, n=3, cutoff=0.6))
        if not candidates:
            candidates = tuple(n for n in names if n.startswith(ref.rstrip("/") + "/"))[:3]
        exc = CheckpointNotFound(ref, candidates, run=run_of(ref) if run_of(ref) in cat.runs() else None)
        if not candidates and 0 < len(lowered) < MIN_ID_PREFIX and all(c in "0123456789abcdef" for c in lowered):
            exc.hint = f"An id prefix needs at least {MIN_ID_PREFIX} hex digits ('ckpt ls' shows ids)."
        raise exc

    def manifest(self, ref: str) -> Manifest:
        return self._read_manifest(self.resolve(ref))

    def info(self, ref: str) -> CheckpointInfo:
        cid = self.resolve(ref)
        infos = self.catalog.infos(ids=[cid])
        if not infos:
            raise CheckpointNotFound(ref)
        return infos[0]

    show = info

    def list(self, run: str | None = None, *, sort: str | None = None, reverse: bool = False) -> list[CheckpointInfo]:
        """Checkpoints, newest first; only those of `run` when given. `sort`: 'step', 'created', 'name' or a
        metric (best first; see _listing.sort_checkpoints), `reverse` flips it."""
        infos = self.catalog.infos(run=run)
        if sort is None and not reverse:
            return infos
        from ._listing import sort_checkpoints

        return sort_checkpoints(infos, sort, reverse=reverse)

    def runs(self) -> list[str]:
        return self.catalog.runs()

    def check_run(self, run: str) -> str:
        """`run` if it has checkpoints; else CheckpointNotFound naming the closest runs."""
        runs = self.runs()
        if run not in runs:
            raise CheckpointNotFound(run, tuple(difflib.get_close_matches(run, runs, n=3, cutoff=0.5)), kind="run")
        return run

    def lineage(self, ref: str) -> list[CheckpointInfo | str]:
        """The checkpoint, its parent, grandparent, ...; an id string where an ancestor has been deleted."""
        chain: list[CheckpointInfo | str] = []
        cid: str | None = self.resolve(ref)
        seen = set()
        while cid and cid not in seen:
            seen.add(cid)
            infos = self.catalog.infos(ids=[cid])
            if not infos:
                chain.append(cid)
                break
            chain.append(infos[0])
            cid = infos[0].parent
        return chain

    # -- save -------------------------------------------------------------------------------------------------
    def save(
        self,
        src: Any,
        name: str,
        *,
        tokenizer: Any = None,
        tags: Iterable[str] = (),
        metrics: Mapping[str, float] | None = None,
        metadata: Mapping[str, Any] | None = None,
        parent: str | None = None,
        message: str | None = None,
        step: int | None = None,
        extra_files: Mapping[str, Any] | None = None,
        max_shard_size: int | str = "50GB",
        on_progress: Callable[[int], None] | None = None,
    ) -> CheckpointInfo:
        """Store a checkpoint under `name` and return its record.

        `src` is a folder written by ``save_pretrained`` or Trainer (sharded or not, with tokenizer and training
        state), a live ``PreTrainedModel`` (saved as ``save_pretrained`` would save it, with `tokenizer` or a
        processor beside it) or a plain ``torch.nn.Module``. `extra_files` adds files: bytes, a path, or a dict
        of tensors (written as a safetensors file). Identical blobs already stored are not written again.
        """
        check_name(name)
        tags = (tags,) if isinstance(tags, str) else tuple(tags)  # tags="prod" is one tag, not four
        for tag in tags:
            check_tag(tag)
            _check_user_tag(tag, name)
        if step is not None and (isinstance(step, bool) or not isinstance(step, int) or step < 0):
            raise InvalidArgument(f"step must be a whole number >= 0, got {step!r}.",
                                  hint="The training step the checkpoint was saved at, e.g. step=500.")
        name_step = step_from_name(name)
        if step is None:
            step = name_step
        parent_id = self.resolve(parent) if parent else None
        if isinstance(src, (str, os.PathLike)) and Path(src).is_dir():
            from ._import import refuse_trainer_output
            from ._trainer_facts import folder_defaults

            refuse_trainer_output(Path(src))
            step, metrics, metadata, parent_id = folder_defaults(  # a Trainer checkpoint-N folder
                self, Path(src), name, step=step, name_step=name_step, metrics=metrics, metadata=metadata,
                parent_id=parent_id,
            )
        clean_metrics = _check_metrics(metrics)
        _check_metadata(metadata)
        if self.catalog.id_for_name(name) is not None:
            raise NameExists(name)

        with contextlib.ExitStack() as stack:
            sources = self._collect(src, tokenizer, extra_files, max_shard_size, stack)
            cid, written = self._save_sources(
                sources, name, tags=tags, metrics=clean_metrics, metadata=metadata, parent_id=parent_id,
                message=message, step=step, on_progress=on_progress,
            )
        info = self.info(cid)
        self.last_save = SaveReport(info, written)
        # Committed: apply the run's policy and move its latest/best tags. A newer save from another process may
        # have pruned this one already, so return what is stored now, or else what was committed.
        try:
            pruned = _retention.after_save(self, info.run)
            if pruned is not None and pruned.executed:
                self.last_save = SaveReport(info, written, tuple(d.checkpoint.name for d in pruned.plan.remove))
        except Exception as exc:  # noqa: BLE001 - the checkpoint is stored; say so rather than report a failed save
            warnings.warn(
                f"Saved {info.name!r}, but applying the run's retention policy failed ({exc});"
                f" run 'ckpt prune {info.run}' to apply it.",
                RetentionWarning,
                stacklevel=2,
            )
        try:
            now = self.catalog.infos(ids=[cid])
        except StoreFull:  # the index could not be brought up to date (a disk that filled since): still saved
            now = []
        return now[0] if now else info

    def _save_sources(
        self,
        sources: list[SourceFile],
        name: str,
        *,
        tags: tuple[str, ...] = (),
        metrics: Mapping[str, float] | None = None,
        metadata: Mapping[str, Any] | None = None,
        parent_id: str | None = None,
        message: str | None = None,
        step: int | None = None,
        on_progress: Callable[[int], None] | None = None,
        keep: Iterable[FileEntry] = (),
    ) -> tuple[str, int]:
        """Write `sources` as blobs and commit the manifest; return the id and the bytes newly stored.

        `keep` lists files of stored checkpoints to carry over as they are (convert keeps tokenizer and training
        state this way): their blobs are already stored, so not a byte of them is read or written again."""
        kept = tuple(keep)
        with self._writing(), store_full_on_enospc(self.root, run_of(name)):
            check_room(self, sum(s.size for s in sources), run_of(name))
            # Under the writing lock gc cannot run, so a blob found here stays until the manifest references it.
            missing = [b.digest for f in kept for b in f.blobs if not self.objects.has(b.digest)]
            if missing:
                raise CorruptObject(f"Blob {missing[0][:12]} to carry over is missing from the store.", digest=missing[0])
            writer = BlobWriter(self.objects)
            self.failed_save_leftovers = (0, 0)
            try:
                return self._write_and_commit(writer, sources, kept, name, tags=tags, metrics=metrics,
                                              metadata=metadata, parent_id=parent_id, message=message, step=step,
                                              on_progress=on_progress)
            except BaseException:
                # Interrupted or failed: the staged files are gone (abort); what was already renamed into objects/
                # stays for gc, since another save may have reused it. Say how much, so the CLI can tell the user.
                self.failed_save_leftovers = (len(writer.published), writer.published_bytes)
                raise

    def _write_and_commit(
        self,
        writer: BlobWriter,
        sources: list[SourceFile],
        kept: tuple[FileEntry, ...],
        name: str,
        *,
        tags: tuple[str, ...],
        metrics: Mapping[str, float] | None,
        metadata: Mapping[str, Any] | None,
        parent_id: str | None,
        message: str | None,
        step: int | None,
        on_progress: Callable[[int], None] | None,
    ) -> tuple[str, int]:
        """`_save_sources` under the writing lock: blobs, then the manifest."""
        try:
            entries = ingest(sources, writer, self.config.chunk_bytes, on_progress=on_progress) + list(kept)
            writer.commit()
        except BaseException:
            writer.abort()
            raise
        by_path = {s.path: s for s in sources}
        kept_by_path = {f.path: f for f in kept}

        def read_small(path: str) -> bytes | None:
            s = by_path.get(path)
            if s is not None:
                return bytes(s.read(0, s.size)) if s.layout is None and s.size < 1 << 22 else None
            f = kept_by_path.get(path)
            return _load.read_file_bytes(self.objects, f) if f is not None and f.size < 1 << 22 else None

        manifest = Manifest(
            name=name,
            run=run_of(name),
            created_at=time.time(),
            files=tuple(sorted(entries, key=lambda e: e.path)) if kept else tuple(entries),
            step=step,
            parent=parent_id,
            tags=tags,
            metrics=_check_metrics(metrics),
            metadata=dict(metadata or {}),
            message=message,
            model=_model_facts(entries, read_small),
            environment=dict(_environment()),
        )
        return self._commit_manifest(manifest, tags), writer.bytes_written

    def _collect(self, src, tokenizer, extra_files, max_shard_size, stack: contextlib.ExitStack) -> list[SourceFile]:
        sources: list[SourceFile]
        if isinstance(src, (str, os.PathLike)):
            files = check_folder(Path(src))
            sources = stack.enter_context(folder_sources(files))
            if tokenizer is not None:
                raise InvalidArgument("tokenizer= goes with a live model; a folder brings its own tokenizer files.")
        elif src is None:
            sources = []
        else:
            from ._capture import capture_model

            sources = capture_model(src, tokenizer, max_shard_size=max_shard_size)
        if extra_files:
            from ._capture import tensors_source
            from ._names import check_name as _check_path

            known = {s.path for s in sources}
            for path, value in extra_files.items():
                _check_path(path)  # same rules as names: relative, no '..'
                if path in known:
                    raise InvalidArgument(f"extra_files repeats {path!r}, which the checkpoint already has.")
                if isinstance(value, (bytes, bytearray)):
                    sources.append(bytes_source(path, bytes(value)))
                elif isinstance(value, (str, os.PathLike)):
                    sources.append(bytes_source(path, Path(value).read_bytes()))
                elif isinstance(value, Mapping):
                    sources.append(tensors_source(path, dict(value), {"format": "pt"}))
                else:
                    raise InvalidArgument(f"extra_files[{path!r}] must be bytes, a path or a dict of tensors.")
        if not sources:
            raise InvalidArgument("Nothing to save: the source has no files.")
        return sources

    def _commit_manifest(self, manifest: Manifest, tags: Iterable[str]) -> str:
        data = manifest.to_bytes()
        cid = manifest_id(data)
        with self._commit_lock():
            self._sync_index()
            if self.catalog.id_for_name(manifest.name) is not None:
                raise NameExists(manifest.name)
            failpoint("manifest.write")
            atomic_write_bytes(self._manifest_path(cid), data, self.root / "tmp", failpoint_name="manifest")
            previous: dict[str, str | None] = {}
            try:
                for tag in tags:
                    previous[tag] = self.refs.get(manifest.run, tag)
                    self.refs.set(manifest.run, tag, cid)
                self.catalog.add_many([(cid, manifest)])
                # The run's latest and best move as part of the commit: a save whose latest could not move would
                # leave a resume from RUN:latest on an older step.
                previous.update({t: self.refs.get(manifest.run, t) for t in RESERVED_TAGS})
                _retention.update_tags_locked(self, [manifest.run])
                self._sync_index()
            except BaseException:
                # A save that raises must leave nothing behind: its caller retries under the same name (and would
                # meet NameExists) and believes its tags did not move.
                self._undo_commit(cid, manifest.run, previous)
                raise
        return cid

    def _undo_commit(self, cid: str, run: str, previous: Mapping[str, str | None]) -> None:
        """Take back a manifest whose tags or index row could not be written, in delete's order (tags, index row,
        manifest). Best effort on a failing disk: each step only if the one before it worked, so what is left
        is at worst a whole checkpoint, never a tag pointing at nothing or an index row without its manifest."""
        try:
            for tag, old in previous.items():
                if old is None:
                    self.refs.remove(run, tag)
                else:
                    self.refs.set(run, tag, old)
            self.catalog.remove_many([cid])
            self._manifest_path(cid).unlink(missing_ok=True)
            fsync_dir(self.root / "checkpoints")
        except Exception:  # noqa: BLE001 - the caller re-raises the error that made the save fail
            pass

    # -- load and export -----------------------------------------------------------------------------------------
    def load_state_dict(self, ref: str, *, verify: bool = False) -> dict[str, Any]:
        """The model weights as a dict of tensors mapped from the blobs (no copy for single-blob tensors)."""
        manifest = self.manifest(ref)
        return _load.load_state_dict(self.objects, manifest, verify=verify)

    def load_tensors(self, ref: str, path: str, *, verify: bool = False) -> dict[str, Any]:
        """The tensors of one safetensors file of the checkpoint (e.g. an optimizer state file)."""
        manifest = self.manifest(ref)
        entry = manifest.file(path)
        if entry is None or not entry.is_safetensors:
            raise CheckpointNotFound(f"{manifest.name}/{path}")
        return _load.load_state_dict(self.objects, manifest, files=[entry], verify=verify)

    def read_file(self, ref: str, path: str, *, verify: bool = True) -> bytes:
        manifest = self.manifest(ref)
        entry = manifest.file(path)
        if entry is None:
            names = [f.path for f in manifest.files]
            close = difflib.get_close_matches(path, names, n=3)
            exc = CheckpointNotFound(path, tuple(close), kind=f"file in {manifest.name!r}:")
            exc.hint = f"'ckpt show {manifest.name}' lists its files."
            raise exc
        return _load.read_file_bytes(self.objects, entry, verify=verify)

    def load(self, ref: str, cls: Any = None, *, verify: bool = False, materialize: bool | None = None, **kwargs: Any):
        """Load the checkpoint through `cls.from_pretrained`; every keyword (dtype, device_map, low_cpu_mem_usage,
        num_labels, ...) is passed through. `cls` defaults to the class the checkpoint was saved from (config
        "architectures", e.g. BertForSequenceClassification), AutoModel when transformers does not know it; give
        AutoModel for the bare encoder. Safetensors weights are mapped straight from the blobs; other cases go
        through a temporary folder."""
        from ._modelload import load_model

        return load_model(self, ref, cls, verify=verify, materialize=materialize, **kwargs)

    def load_tokenizer(self, ref: str, cls: Any = None, **kwargs: Any):
        from ._modelload import load_tokenizer

        return load_tokenizer(self, ref, cls, **kwargs)

    @contextlib.contextmanager
    def materialized(self, ref: str, *, only: Callable[[str], bool] | None = None) -> Iterator[Path]:
        """A temporary folder holding the checkpoint (or the files `only` accepts), removed afterwards."""
        manifest = self.manifest(ref)
        files = [f for f in manifest.files if only is None or only(f.path)]
        tmp = Path(tempfile.mkdtemp(prefix=f"{os.getpid()}-ckpt-load-", dir=None if self.read_only else self.root / "tmp"))
        try:
            _load.export(self.objects, manifest, tmp, files=files)
            yield tmp
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def export(self, ref: str, dest: str | os.PathLike[str], *, verify: bool = False, on_progress=None) -> Path:
        """Write the checkpoint as a plain folder, byte-identical to what was saved. `dest` must be new or empty."""
        manifest = self.manifest(ref)
        dest = Path(dest)
        _load.export(self.objects, manifest, dest, verify=verify, on_progress=on_progress)
        return dest

    def checkout(self, ref: str, dest: str | os.PathLike[str], *, verify: bool = False, on_progress=None) -> Path:
        """`export` for resuming training, as ``ckpt checkout``: refuses a checkpoint without optimizer and training
        state (a resume from weights alone would restart the optimizer and schedule). Returns `dest`."""
        from ._resume import checkout

        return checkout(self, ref, dest, verify=verify, on_progress=on_progress)

    # -- import and convert ---------------------------------------------------------------------------------------
    def import_folder(self, path: str | os.PathLike[str], *, run: str | None = None, keep_pickles: bool = False,
                      progress: Any = None):
        """Import a model folder, a Trainer output folder (each checkpoint-N as RUN/step-N with its eval metrics,
        RUN:best) or a hub cache folder. Legacy weight pickles become safetensors unless `keep_pickles`. Names
        already stored are skipped. Returns an ImportReport."""
        from ._import import import_folder

        return import_folder(self, path, run=run, keep_pickles=keep_pickles, progress=progress)

    def import_hf_cache(self, cache_dir: str | os.PathLike[str] | None = None, *, keep_pickles: bool = False,
                        progress: Any = None):
        """Import every snapshot of every model in a Hugging Face hub cache (default: the user's) as
        ORG--MODEL/rev-<commit>, tagged with its refs. Returns an ImportReport."""
        from ._import import import_hf_cache

        return import_hf_cache(self, cache_dir, keep_pickles=keep_pickles, progress=progress)

    def convert(self, ref: str, to: str = "safetensors", dtype: Any = None, max_shard_size: int | str | None = None,
                name: str | None = None) -> CheckpointInfo:
        """A new checkpoint (parent: `ref`) with its weights as safetensors, cast to `dtype` ("bf16", "fp16",
        "fp32") and split into shards of `max_shard_size`; ties handled as save_pretrained does. Default name:
        REF's name + '-bf16' (or '-safetensors')."""
        from ._convert import convert_checkpoint

        return convert_checkpoint(self, ref, to=to, dtype=dtype, max_shard_size=max_shard_size, name=name)

    # -- names ------------------------------------------------------------------------------------------------
    def tag(self, ref: str, tag: str) -> CheckpointInfo:
        """Point `RUN:tag` at the checkpoint (moving it if it pointed elsewhere); the run is the checkpoint's."""
        check_tag(tag)
        cid = self.resolve(ref)
        run = self.catalog.infos(ids=[cid])[0].run
        _check_user_tag(tag, ref, run)
        with self._commit_lock():
            self.refs.set(run, tag, cid)
            self._sync_index()
        return self.info(cid)

    def untag(self, ref: str, tag: str | None = None) -> str:
        """Remove a tag, given as ``RUN:TAG`` (or run and tag). Returns the id it pointed at."""
        if tag is None:
            parts = split_tag_ref(ref)
            if parts is None:
                raise InvalidArgument(f"{ref!r} is not RUN:TAG.", hint="Write the tag as RUN:TAG, e.g. bert:v1.")
            run, tag = parts
        else:
            run = ref
        _check_user_tag(tag, f"{run}:{tag}", run, verb="removed")
        cid = self.refs.get(run, tag)
        if cid is None:
            run_tags = sorted(f"{r}:{t}" for (r, t) in self.catalog.tags() if r == run)
            raise CheckpointNotFound(f"{run}:{tag}", tuple(run_tags[:3]), run=run)
        with self._commit_lock():
            self.refs.remove(run, tag)
            self._sync_index()
        return cid

    def annotate(self, ref: str, *, metrics: Mapping[str, float] | None = None,
                 metadata: Mapping[str, Any] | None = None, message: str | None = None) -> CheckpointInfo:
        """Add metrics, metadata or a message to a stored checkpoint (its manifest stays as saved): they override
        or extend the saved ones wherever the checkpoint is listed, sorted or ranked, and RUN:best moves if the
        run's best changes. Returns the checkpoint's record with the merged values."""
        clean = _check_metrics(metrics)
        _check_metadata(metadata)
        cid = self.resolve(ref)
        _annotations.annotate(self, cid, metrics=clean, metadata=dict(metadata or {}), message=message)
        return self.info(cid)

    # -- delete -----------------------------------------------------------------------------------------------
    def delete(self, refs: str | Iterable[str], *, dry_run: bool = False) -> DeletePlan:
        """Remove checkpoints (their manifests and tags). Their blobs stay until `gc`: another checkpoint may share
        them. Returns the plan; with `dry_run` nothing is removed."""
        if isinstance(refs, str):
            refs = [refs]
        ids = list(dict.fromkeys(self.resolve(r) for r in refs))
        return self._delete_ids(ids, dry_run=dry_run)

    def _delete_ids(self, ids: list[str], *, dry_run: bool) -> DeletePlan:
        infos = tuple(self.catalog.infos(ids=ids))
        # latest and best of a run that keeps checkpoints move to one of those; they go only with its last one.
        emptied = {r for r in {c.run for c in infos} if self.catalog.run_ids(r) <= set(ids)}
        tags = tuple(f"{r}:{t}" for (r, t), i in sorted(self.catalog.tags().items())
                     if i in set(ids) and (t not in RESERVED_TAGS or r in emptied))
        plan = DeletePlan(infos, tags, self.catalog.exclusive_bytes(ids))
        if dry_run or not ids:
            return plan
        with self._writing(), self._commit_lock():
            self._remove_locked(ids)
            # The runs' latest and best move to what is left, as after a prune, rather than vanish.
            _retention.update_tags_locked(self, {c.run for c in infos})
        return DeletePlan(infos, tags, plan.reclaimable_bytes, executed=True)

    def _remove_locked(self, ids: list[str]) -> None:
        """Remove the manifests and tags of `ids`. The caller holds the commit lock (prune plans under it too)."""
        # The deletion log, tags, index rows, then manifests. A crash part way leaves a checkpoint that is still
        # whole (maybe without its tags, or re-indexed from its manifest by the next sync), which a second delete
        # finishes. The other orders leave a tag pointing at nothing, or an index row without its manifest, which
        # is exactly what verify reports as damage.
        names = {c.id: c.name for c in self.catalog.infos(ids=ids)}
        _deletions.record(self.root / "checkpoints", [(cid, names.get(cid, "?")) for cid in ids])
        for (run, tag), cid in self.refs.all().items():
            if cid in set(ids):
                self.refs.remove(run, tag)
        self.catalog.remove_many(ids)
        for cid in ids:
            failpoint("delete.manifest")
            self._manifest_path(cid).unlink(missing_ok=True)
        fsync_dir(self.root / "checkpoints")
        _annotations.remove(self.root, ids)
        self._sync_index()

    # -- gc ---------------------------------------------------------------------------------------------------
    def gc(self, *, dry_run: bool = False, timeout: float = 60.0) -> GcPlan:
        """Delete blobs that no manifest references, and leftovers of interrupted writes."""
        gate = file_lock(self.root / "locks" / "gate", timeout=timeout, what="gc gate")
        with contextlib.ExitStack() as held:
            held.enter_context(gate)
            saving = False
            try:
                held.enter_context(file_lock(self.root / "locks" / "objects", timeout=0 if dry_run else timeout,
                                             what="objects"))
            except StoreLocked:
                if not dry_run:
                    raise
                # A dry run does not wait for saves in progress: it reports, counting the blobs they have written
                # but not committed yet (gc itself waits for them and keeps those), and says so.
                held.enter_context(file_lock(self.root / "locks" / "objects", shared=True, timeout=timeout,
                                             what="objects"))
                saving = True
            self._sync_index()
            lost = self.catalog.lost()
            if lost and not dry_run:
                names = ", ".join(repr(n) for n in list(lost.values())[:3])
                raise CorruptObject(
                    f"{len(lost)} checkpoint(s) lost their manifest ({names}); gc stops so as not to delete their"
                    " blobs.",
                    hint="Restore the manifests from a backup, or run 'ckpt fsck --reindex' to accept the loss.",
                )
            # No save is in flight now (each holds the objects lock shared), so every unreferenced blob and every
            # temporary file is garbage.
            referenced: set[str] = set()
            for cid in sorted(self._manifest_ids_on_disk()):
                try:
                    manifest = self._read_manifest(cid)
                except CkptError as exc:
                    raise CorruptObject(
                        f"Manifest {cid[:12]} cannot be read ({exc.message}); gc stops so as not to delete its blobs.",
                        digest=cid,
                        hint="Run 'ckpt verify' and restore or remove that manifest, then run gc again.",
                    ) from None
                referenced.update(manifest.blob_refs())
            garbage = tuple((d, s) for d, s, _ in self.objects.iter_all() if d not in referenced)
            tmp = tuple(stale_tmp_files(self.root / "tmp", grace=TMP_GRACE_SECONDS))
            plan = GcPlan(garbage, tmp, len(referenced), saves_in_progress=saving)
            if dry_run:
                return plan
            failpoint("gc.plan")
            _annotations.remove_orphans(self.root, self._manifest_ids_on_disk())  # left by a crashed delete
            for digest, _ in garbage:
                self.objects.delete(digest)
            for p in tmp:
                failpoint("gc.tmp")
                if p.is_dir():
                    shutil.rmtree(p, ignore_errors=True)
                else:
                    p.unlink(missing_ok=True)
        return GcPlan(garbage, tmp, len(referenced), executed=True)

    # -- checks -----------------------------------------------------------------------------------------------
    def verify(self, ref: str | None = None, *, deep: bool = True, on_blob=None) -> VerifyReport:
        """Check checkpoints (all, or the one `ref` names): every manifest matches its id and every blob exists
        with its size; with `deep` (default) every blob is re-hashed. Reports every problem."""
        ids = [self.resolve(ref)] if ref is not None else sorted(self._manifest_ids_on_disk())
        report = verify_manifests(
            self.objects, ((cid, lambda cid=cid: self._read_manifest(cid)) for cid in ids), deep=deep, on_blob=on_blob
        )
        # A manifest that cannot be read has no name in it; the index remembers the name it had.
        names = {c.id: c.name for c in self.catalog.infos(ids=[p.checkpoint_id for p in report.problems])}
        problems = [
            dataclasses.replace(p, detail=f"checkpoint {names[p.checkpoint_id]!r}: {p.detail}")
            if p.kind == "corrupt manifest" and p.checkpoint_id in names else p
            for p in report.problems
        ]
        if ref is None:
            disk = self._manifest_ids_on_disk()
            problems += [
                Problem("missing manifest", name, cid, detail=f"checkpoints/{cid}.json is gone but no delete removed"
                        " it; restore it from a backup, or run 'ckpt fsck --reindex' to accept the loss")
                for cid, name in self.catalog.lost().items()
            ]
            problems += [
                Problem("dangling tag", f"{r}:{t}", cid, detail=f"points at missing checkpoint {cid[:12]}")
                for (r, t), cid in sorted(self.refs.all().items())
                if cid not in disk
            ]
        return VerifyReport(report.checkpoints, report.blobs, report.bytes_checked, report.deep, tuple(problems))

    def fsck(self, *, reindex: bool = False) -> VerifyReport:
        """Structural check (no re-hashing); with `reindex`, rebuild the index first."""
        if reindex:
            self.reindex()
        return self.verify(deep=False)

    def du(self) -> DiskUsage:
        infos = self.list()
        stored, blobs = self.catalog.stored_bytes()
        unique = self.catalog.run_unique_bytes()
        runs: dict[str, list[CheckpointInfo]] = {}
        for c in infos:
            runs.setdefault(c.run, []).append(c)
        return DiskUsage(
            logical_bytes=sum(c.logical_bytes for c in infos),
            stored_bytes=stored,
            checkpoints=len(infos),
            blobs=blobs,
            runs=tuple(
                RunUsage(run, len(cs), sum(c.logical_bytes for c in cs), unique.get(run, 0))
                for run, cs in sorted(runs.items())
            ),
        )

    # -- retention (the store side lives in _retention.py, the rules in policies.py) ---------------------------
    def set_policy(self, run: str, policy: "_retention.RetentionPolicy | None") -> None:
        """Make `policy` the run's retention policy (None removes it); every later save of the run applies it."""
        _retention.set_policy(self, run, policy)

    def get_policy(self, run: str) -> "_retention.RetentionPolicy | None":
        settings = _retention.read_settings(self, run)
        return settings.policy if settings else None

    def prune(
        self, run: str, policy: "_retention.RetentionPolicy | None" = None, *, dry_run: bool = False
    ) -> "_retention.PruneResult":
        """Remove the run's checkpoints that `policy` (default: the run's own) does not keep; `gc` then frees
        their blobs. The latest, the best, user-tagged and in-use checkpoints always stay."""
        return _retention.prune(self, run, policy, dry_run=dry_run)

    # -- validate and diff (issue 4: _validate.py, _diff.py) ------------------------------------------------------
    def validate(self, ref: str, cls: Any = None, text: str | None = None) -> ValidationReport:
        """Load the checkpoint with from_pretrained (and its tokenizer), scan its weights for NaN/Inf, run a forward
        pass on `text` and check the installed transformers understands it. `report.ok` is False when it is unfit
        to ship; `report.raise_for_errors()` turns that into ValidationFailed."""
        from ._validate import validate

        return validate(self, ref, cls, text)

    def diff(self, a: str, b: str) -> DiffReport:
        """How checkpoint `b` differs from `a`: config keys, files, and tensors (added, removed, reshaped, changed
        with relative L2 and max abs difference). Tensors with equal blob digests are not read."""
        from ._diff import diff

        return diff(self, a, b)


def _check_user_tag(tag: str, ref: str, run: str | None = None, *, verb: str = "set") -> None:
    """Refuse `latest` and `best` by hand: the store moves them after every save and delete of every run, so a
    hand-set one would silently move back (or a removed one come back)."""
    if tag in RESERVED_TAGS:
        run = run or run_of(ref)
        raise InvalidArgument(
            f"{run}:{tag} is kept up to date by ckptstore (it moves after every save and delete); it cannot be"
            f" {verb} by hand.",
            hint=f"Use a tag of your own, e.g. 'ckpt tag {ref} chosen'; 'ckpt policy {run}' shows what best follows.",
        )


def _check_metadata(metadata: Mapping[str, Any] | None) -> None:
    """Metadata is kept as JSON in the manifest: refuse what JSON cannot hold before anything is written."""
    if metadata is None:
        return
    if not isinstance(metadata, Mapping):
        raise InvalidArgument(f"metadata must be a dict, got {type(metadata).__name__}.", hint="metadata={'lr': 3e-4}")
    try:
        json.dumps(dict(metadata), allow_nan=True)
    except (TypeError, ValueError) as exc:
        raise InvalidArgument(
            f"metadata cannot be stored as JSON: {exc}.",
            hint="Use strings, numbers, booleans, lists and dicts (str(value) for anything else).",
        ) from None


def _check_metrics(metrics: Mapping[str, float] | None) -> dict[str, float]:
    out: dict[str, float] = {}
    for key, value in (metrics or {}).items():
        if not isinstance(key, str) or not key:
            raise InvalidArgument(f"Metric name {key!r} is not a non-empty string.")
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise InvalidArgument(
                f"Metric {key}={value!r} is not a number.", hint="Metrics are numbers; put other values in metadata."
            ) from None
        if number != number or number in (float("inf"), float("-inf")):
            raise InvalidArgument(f"Metric {key}={value!r} is not finite.", hint="Store NaN/inf metrics as metadata.")
        out[key] = number
    return out
