"""`Store`: the public Python API of a checkpoint store, a facade whose methods call the operations in ``_ops``
with the store's repository (docs/format.md describes what they write)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from ._backend.protocols import Backend
from ._core.info import CheckpointInfo, DiskUsage, ResumePoint, SaveReport
from ._format.manifest import Manifest
from ._ops import delete as _delete, names as _names, retention as _retention, save as _save, usage as _usage
from ._ops import gc as _gc, load as _load, verify as _verify
from ._ops import annotate as _annotate, checkout as _checkout, diff as _diff, importing as _importing
from ._ops import inspect as _inspect, listing as _listing, modelload as _modelload, runlog as _runlog
from ._ops import validate as _validate
from ._ops import checkrecords as _checkrecords
from ._ops import sync as _sync
from ._ops import collections as _collections, family as _family, modelinfo as _modelinfo, query as _query
from ._core.collection import Collection
from ._core.family import FamilyMember
from ._core.modelinfo import ModelInfo
from ._ops import history as _history
from ._ops.delete import DeletePlan
from ._ops.gc import GcPlan
from ._ops.sync import SyncReport
from ._ops.verify import VerifyReport
from ._ops import packing as _pack_select, slim as _slim, storage_report as _storage_report
from ._ops.pack import PackReport
from ._repo import leases as _leases
from ._repo.opening import backend_for, init_repository, open_repository, upgrade
from ._repo.repository import Repository
from .policies import RetentionPolicy, StoragePolicy

__all__ = ["DeletePlan", "Store", "SyncReport"]


class Store:
    """A checkpoint store: a local folder (or any backend of the storage seam).

    >>> store = Store.init("ckpts")                                  # doctest: +SKIP
    >>> store.save(model, "bert-sst2/step-500", tokenizer=tok, metrics={"eval_loss": 0.31})  # doctest: +SKIP
    >>> model = store.load("bert-sst2/step-500", cls=AutoModelForSequenceClassification)    # doctest: +SKIP
    """

    def __init__(self, repo: Repository) -> None:
        self._repo = repo  # use Store.open / Store.init
        self.last_save: SaveReport | None = None  # deprecated: save returns its SaveReport

    # -- opening ------------------------------------------------------------------------------------------------
    @classmethod
    def init(cls, path: str | os.PathLike[str] | None = None, *, chunk_bytes: int | None = None,
             exist_ok: bool = True) -> "Store":
        return cls(init_repository(backend_for(path), chunk_bytes=chunk_bytes, exist_ok=exist_ok))

    @classmethod
    def open(cls, path: str | os.PathLike[str] | None = None, *, create: bool = False) -> "Store":
        return cls(open_repository(backend_for(path), create=create))

    @classmethod
    def on(cls, backend: Backend, *, create: bool = False) -> "Store":
        """A store on any backend of the storage seam (see ckptstore._backend.protocols)."""
        return cls(open_repository(backend, create=create))

    def close(self) -> None:
        self._repo.close()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Store({self.url!r})"

    @property
    def url(self) -> str:
        return self._repo.url

    @property
    def root(self) -> Path:
        """The store's folder (a local store), or its local scratch folder."""
        return getattr(self._repo.backend, "root", self._repo.scratch)

    @property
    def read_only(self) -> bool:
        return self._repo.read_only

    @property
    def config(self):
        return self._repo.config

    @property
    def upgraded_from(self) -> int | None:
        """The format this Store upgraded the store from (when it opened it, or in ``fsck(upgrade_format=True)``),
        else None."""
        return self._repo.upgraded_from

    # -- looking ------------------------------------------------------------------------------------------------
    def resolve(self, ref: str) -> str:
        """The id of the checkpoint `ref` names: a name, ``RUN:TAG``, or an id or unambiguous id prefix."""
        return self._repo.resolve(ref)

    def info(self, ref: str) -> CheckpointInfo:
        return self._repo.info(self.resolve(ref))

    show = info

    def manifest(self, ref: str) -> Manifest:
        return self._repo.manifest(ref)

    def list(self, run: str | None = None, *, sort: str | None = None, reverse: bool = False) -> list[CheckpointInfo]:
        """Checkpoints, newest first, of `run` when given; `sort` by 'step', 'created', 'name' or a metric."""
        infos = self._repo.catalog.infos(run=run)
        return infos if sort is None and not reverse else _listing.sort_checkpoints(infos, sort, reverse=reverse)

    def runs(self) -> list[str]:
        return self._repo.catalog.runs()

    def tags(self, run: str | None = None) -> dict[str, str]:
        """``RUN:TAG`` -> checkpoint id, of every run or of `run`."""
        return {f"{r}:{t}": cid for (r, t), cid in sorted(self._repo.catalog.tags().items()) if run in (None, r)}

    def has(self, name: str) -> bool:
        """Whether a checkpoint of exactly that name is stored (as of this Store's last look; see refresh)."""
        return self._repo.catalog.id_for_name(name) is not None

    def refresh(self) -> None:
        """Bring this Store's view up to date with what other processes saved, tagged and deleted since. Never
        waits for a writer (see README, Concurrent use)."""
        self._repo.refresh()

    def reopen(self) -> "Store":
        """Another Store on the same storage with an index connection of its own (for another thread)."""
        return Store(open_repository(self._repo.backend))

    def check_run(self, run: str) -> str:
        """`run` if it has checkpoints; else CheckpointNotFound naming the closest runs."""
        return self._repo.check_run(run)

    def lineage(self, ref: str) -> list[CheckpointInfo | str]:
        """The checkpoint, its parent, grandparent, ...; an id string where an ancestor has been deleted."""
        return _usage.lineage(self._repo, ref)

    def du(self) -> DiskUsage:
        return _usage.du(self._repo)

    def describe(self, ref: str) -> dict[str, Any]:
        """Everything `ckpt show --json` prints: record, model facts, files, tensors by module, sizes, lineage."""
        return _inspect.describe(self._repo, ref)

    def log(self, run: str) -> list[CheckpointInfo]:
        """The run's checkpoints in step order (an unknown run: CheckpointNotFound with did-you-mean)."""
        return _runlog.run_log(self._repo, run)

    def plot(self, run: str, path: str | os.PathLike[str]) -> Path:
        """Draw the run's metrics over steps (best starred, tagged ringed, the logged curves too) into `path`."""
        return _runlog.plot(self._repo, run, path)

    # -- saving -------------------------------------------------------------------------------------------------
    @staticmethod
    def check_source(src: str | os.PathLike[str], name: str, tags: Iterable[str] = ()) -> int:
        """Refuse what `save` would refuse of a folder before anything is written (name, tags, the folder and its
        safetensors headers); returns the bytes the save will read."""
        return _save.check_source(Path(src), name, tags)

    def save(self, src: Any, name: str, *, tokenizer: Any = None, tags: Iterable[str] = (),
             metrics: Mapping[str, float] | None = None, metadata: Mapping[str, Any] | None = None,
             parent: str | None = None, message: str | None = None, step: int | None = None,
             extra_files: Mapping[str, Any] | None = None, max_shard_size: int | str = "50GB",
             on_progress: Callable[[int], None] | None = None) -> SaveReport:
        """Store a checkpoint under `name`; returns its record with what the save wrote and pruned.

        `src` is a folder written by ``save_pretrained`` or Trainer (sharded or not, with tokenizer and training
        state), a live ``PreTrainedModel`` (saved as ``save_pretrained`` would save it, with `tokenizer` or a
        processor beside it) or a plain ``torch.nn.Module``. `extra_files` adds files: bytes, a path, or a dict
        of tensors (written as a safetensors file). Identical blobs already stored are not written again.
        """
        self.last_save = _save.save(self._repo, src, name, tokenizer=tokenizer, tags=tags, metrics=metrics,
                                    metadata=metadata, parent=parent, message=message, step=step,
                                    extra_files=extra_files, max_shard_size=max_shard_size, on_progress=on_progress)
        self._after_save_storage(self.last_save.run)
        return self.last_save

    @staticmethod
    def capture(model: Any, tokenizer: Any = None) -> dict[str, Any]:
        """The files `save(model, tokenizer=...)` stores, as `extra_files` takes them: bytes, or dicts of tensors
        (the model's own memory, not copied; copy them before training changes them)."""
        from ._ops.capture import capture_files

        return capture_files(model, tokenizer)

    def import_folder(self, path: str | os.PathLike[str], *, run: str | None = None, keep_pickles: bool = False,
                      progress: Any = None):
        """Import a model folder, a Trainer output folder or a hub cache folder. Returns an ImportReport."""
        return _importing.import_folder(self._repo, path, run=run, keep_pickles=keep_pickles, progress=progress)

    def import_hf_cache(self, cache_dir: str | os.PathLike[str] | None = None, *, keep_pickles: bool = False,
                        progress: Any = None):
        """Import every snapshot of every model in a Hugging Face hub cache (default: the user's)."""
        return _importing.import_hf_cache(self._repo, cache_dir, keep_pickles=keep_pickles, progress=progress)

    def convert(self, ref: str, to: str = "safetensors", dtype: Any = None, max_shard_size: int | str | None = None,
                name: str | None = None) -> CheckpointInfo:
        """A new checkpoint (parent: `ref`) with safetensors weights, cast to `dtype` and sharded."""
        from ._ops.convert import convert_checkpoint

        return convert_checkpoint(self._repo, ref, to=to, dtype=dtype, max_shard_size=max_shard_size, name=name)

    # -- loading ------------------------------------------------------------------------------------------------
    def load(self, ref: str, cls: Any = None, *, verify: bool = False, materialize: bool | None = None, **kwargs: Any):
        """Load through `cls.from_pretrained` (default: the saved architecture); every keyword passes through."""
        return _modelload.load_model(self._repo, ref, cls, verify=verify, materialize=materialize, **kwargs)

    def load_tokenizer(self, ref: str, cls: Any = None, **kwargs: Any):
        return _modelload.load_tokenizer(self._repo, ref, cls, **kwargs)

    def load_state_dict(self, ref: str, *, verify: bool = False) -> dict[str, Any]:
        """The model weights as a dict of tensors mapped from the blobs (no copy where the store is local)."""
        return _load.load_state_dict(self._repo.blobs, self.manifest(ref), verify=verify)

    def load_tensors(self, ref: str, path: str, *, verify: bool = False) -> dict[str, Any]:
        """The tensors of one safetensors file of the checkpoint (e.g. an optimizer state file)."""
        return _load.load_file_tensors(self._repo.blobs, self.manifest(ref), path, verify=verify)

    def read_file(self, ref: str, path: str, *, verify: bool = True) -> bytes:
        return _load.read_stored_file(self._repo.blobs, self.manifest(ref), path, verify=verify)

    @contextlib.contextmanager
    def materialized(self, ref: str, *, only: Callable[[str], bool] | None = None) -> Iterator[Path]:
        """A temporary folder holding the checkpoint (or the files `only` accepts), removed afterwards."""
        with _load.materialized(self._repo, self.manifest(ref), only=only) as folder:
            yield folder

    def export(self, ref: str, dest: str | os.PathLike[str], *, verify: bool = False, on_progress=None) -> Path:
        """Write the checkpoint as a plain folder, byte-identical to what was saved. `dest` must be new or empty."""
        _load.export(self._repo.blobs, self.manifest(ref), Path(dest), verify=verify, on_progress=on_progress)
        return Path(dest)

    def checkout(self, ref: str, dest: str | os.PathLike[str], *, verify: bool = False, fallback: bool = False,
                 on_progress=None) -> Path:
        """`export` for resuming training; refuses a checkpoint without optimizer and training state. With
        `fallback` and ``RUN:latest``, a damaged newest checkpoint gives way to the newest one that verifies
        (`checkout_point` says which was written)."""
        return self.checkout_point(ref, dest, verify=verify, fallback=fallback, on_progress=on_progress).path

    def checkout_point(self, ref: str, dest: str | os.PathLike[str], *, verify: bool = False,
                       fallback: bool = False, on_progress=None) -> ResumePoint:
        """`checkout`, returning which checkpoint was written and which damaged newer ones it passed over."""
        return _checkout.checkout(self._repo, ref, dest, verify=verify, fallback=fallback, on_progress=on_progress)

    def resume_point(self, run: str, dest: str | os.PathLike[str] | None = None, *, kind: str | None = None,
                     verify: bool = True, on_progress=None) -> ResumePoint | None:
        """The newest checkpoint of `run` a training can resume from ('trainer' or 'manager' `kind`, when given)
        that verifies, checked out to `dest` when given; damaged newer ones are passed over (`.skipped`). None
        for a run with nothing to resume from; CorruptObject when every candidate is damaged."""
        return _checkout.resume_point(self._repo, run, dest, verify=verify, kind=kind, on_progress=on_progress)

    @contextlib.contextmanager
    def hold(self, ref: str) -> Iterator[str]:
        """Keep the checkpoint `ref` names from being pruned while the block runs (a resume reading it)."""
        with _leases.hold(self._repo, ref) as cid:
            yield cid

    # -- names, tags, annotations -------------------------------------------------------------------------------
    def tag(self, ref: str, tag: str) -> CheckpointInfo:
        """Point `RUN:tag` at the checkpoint (moving it if it pointed elsewhere); the run is the checkpoint's."""
        return self._repo.info(_names.tag(self._repo, ref, tag))

    def untag(self, ref: str, tag: str | None = None) -> str:
        """Remove a tag, given as ``RUN:TAG`` (or run and tag). Returns the id it pointed at."""
        return _names.untag(self._repo, ref, tag)

    def rename(self, ref: str, new_name: str) -> CheckpointInfo:
        """Give a checkpoint another name; its id, files, lineage, metrics and (in the same run) tags stay."""
        return self._repo.info(_names.rename(self._repo, ref, new_name))

    def annotate(self, ref: str, *, metrics: Mapping[str, float] | None = None,
                 metadata: Mapping[str, Any] | None = None, message: str | None = None) -> CheckpointInfo:
        """Add metrics, metadata or a message after the save; they override or extend the saved ones."""
        return self._repo.info(_annotate.annotate(self._repo, ref, metrics=metrics, metadata=metadata, message=message))

    # -- removing -----------------------------------------------------------------------------------------------
    def delete(self, refs: str | Iterable[str], *, dry_run: bool = False, force: bool = False) -> DeletePlan:
        """Remove checkpoints and their tags; their blobs stay until `gc`. Returns the plan. A checkpoint a
        collection holds is refused (InCollection) unless `force`, which takes it out of its collections."""
        return _delete.delete(self._repo, refs, dry_run=dry_run, force=force)

    def gc(self, *, dry_run: bool = False, timeout: float = 60.0) -> GcPlan:
        """Delete blobs no checkpoint references, and leftovers of interrupted writes."""
        return _gc.gc(self._repo, dry_run=dry_run, timeout=timeout)

    def set_policy(self, run: str, policy: RetentionPolicy | None) -> None:
        """Make `policy` the run's retention policy (None removes it); every later save of the run applies it."""
        _retention.set_policy(self._repo, run, policy)

    def get_policy(self, run: str) -> RetentionPolicy | None:
        settings = _retention.read_settings(self._repo, run)
        return settings.policy if settings else None

    def best_metric(self, run: str) -> tuple[str, str]:
        """(metric, 'min' or 'max') that ``RUN:best`` follows."""
        return (_retention.read_settings(self._repo, run) or _retention.RunSettings()).best

    def register_run(self, run: str, *, metric: str | None = None, mode: str = "min") -> None:
        """Make ``RUN:best`` follow `metric` (Trainer's metric_for_best_model) in `mode`."""
        _retention.register_run(self._repo, run, metric=metric, mode=mode)

    def prune(self, run: str, policy: RetentionPolicy | None = None, *, dry_run: bool = False):
        """Remove what `policy` (default: the run's own) does not keep; latest, best, tagged stay. A PruneResult."""
        return _retention.prune(self._repo, run, policy, dry_run=dry_run)

    # -- checking -----------------------------------------------------------------------------------------------
    def verify(self, ref: str | None = None, *, deep: bool = True, on_blob=None) -> VerifyReport:
        """Check every manifest and blob (of `ref`, or of the store); `deep` re-hashes every blob. The result is
        recorded (on the checkpoint, or as the store's last verify) when the store is writable."""
        report = _verify.verify(self._repo, ref, deep=deep, on_blob=on_blob)
        _checkrecords.record_verify(self._repo, report, None if ref is None else self.resolve(ref))
        return report

    def fsck(self, *, reindex: bool = False, upgrade_format: bool = False) -> VerifyReport:
        """Structural check (no re-hashing); first rebuild the index (`reindex`) or upgrade the format."""
        if upgrade_format:
            upgrade(self._repo)
        if reindex:
            self.reindex()
        # Not recorded as the store's last verify: fsck is the repair tool, and opening, upgrading or re-indexing
        # a store must leave its documents as they were.
        return _verify.verify(self._repo, None, deep=False)

    def reindex(self) -> int:
        """Throw the index away and rebuild it from the store. Returns the number of checkpoints."""
        return self._repo.reindex()

    def validate(self, ref: str, cls: Any = None, text: str | None = None):
        """Load with from_pretrained, scan for NaN/Inf, run a forward pass: a ValidationReport (`.ok`). The result is
        recorded on the checkpoint (metadata key ``validation``) when the store is writable."""
        report = _validate.validate(self._repo, ref, cls, text)
        _checkrecords.record_validation(self._repo, report)
        return report

    def diff(self, a: str, b: str):
        """How `b` differs from `a`: config, files, tensors (equal blobs are not read). A DiffReport."""
        return _diff.diff(self._repo, a, b)


    # -- sharing: model cards, Hub push and pull ----------------------------------------------------------------
    def model_card(self, ref: str):
        """The checkpoint's Hugging Face model card (a huggingface_hub ModelCard; `str(card)` is its README.md):
        base model, pipeline tag, eval results from the metrics, training facts, lineage, id and file hashes."""
        from ._ops.card import model_card

        return model_card(self._repo, ref)

    def push(self, ref: str, repo_id: str, *, revision: str | None = None, private: bool = False,
             tag: str | None = None, token: str | None = None, message: str | None = None):
        """Publish the checkpoint (its files plus its card as README.md) to Hub repo `repo_id` in one commit, and
        record the repository and commit on it. No commit when the revision already holds those files. A
        PushResult."""
        from ._ops.hub import push

        return push(self._repo, ref, repo_id, revision=revision, private=private, tag=tag, token=token,
                    message=message)

    def pull(self, spec: str, *, name: str | None = None, token: str | None = None, progress: Any = None):
        """Bring Hub model ``REPO_ID[@REV]`` into the store (with HF_HUB_OFFLINE=1, from the local hub cache); its
        refs become tags. A PullResult."""
        from ._ops.hub import pull

        return pull(self._repo, spec, name=name, token=token, progress=progress)

    # -- remote stores (object storage) and the local blob cache ------------------------------------------------------
    @classmethod
    def exists(cls, path: str | os.PathLike[str] | None = None) -> bool:
        """Whether a store is at `path` (a folder or a URL such as s3://bucket/prefix)."""
        from ._repo.opening import read_config

        return read_config(backend_for(path)) is not None

    @property
    def requests(self) -> dict[str, int]:
        """Requests this Store sent to its remote so far, by kind (GET, HEAD, PUT, LIST, DELETE); {} when local."""
        counter = getattr(self._repo.backend, "requests", None)
        return counter.snapshot() if counter is not None else {}

    @staticmethod
    def cache_usage():
        """What the local blob cache of remote stores holds (a CacheUsage: path, blobs, bytes, max_bytes)."""
        from ._backend.blobcache import BlobCache

        return BlobCache().usage()

    @staticmethod
    def prune_cache(max_bytes: int | None = None) -> tuple[int, int]:
        """Remove least recently used blobs from the local cache until it holds at most `max_bytes` (default: its
        cap, $CKPT_CACHE_MAX_BYTES). Returns (blobs, bytes) removed."""
        from ._backend.blobcache import BlobCache

        return BlobCache().prune(max_bytes)

    # -- sync between stores (push/pull) ----------------------------------------------------------------------------
    def sync(self, dst: "Store | str | os.PathLike[str]", *refs: str, dry_run: bool = False, move_tags: bool = False,
             replace_settings: bool = False, on_progress: Callable[[int], None] | None = None) -> SyncReport:
        """Copy checkpoints (`refs`: names, ``RUN:TAG``, ids or whole runs; none: all) to the store `dst` (a Store,
        a path, or a URL; created when missing), with their tags, metrics, annotations, lineage and run settings
        (where `dst` has none for the run, or always with `replace_settings`), sending only the blobs it lacks.
        Never overwrites a name `dst` holds for another checkpoint (the report's `conflicts`;
        `report.raise_for_conflicts()`), never moves a user tag there unless `move_tags`, never brings back what
        `dst` deleted; `dst` moves its latest/best and applies the run's policy. Returns a SyncReport (with
        `dry_run`, what it would do, writing nothing)."""
        options = dict(dry_run=dry_run, move_tags=move_tags, replace_settings=replace_settings,
                       on_progress=on_progress)
        if isinstance(dst, Store):
            return _sync.sync(self._repo, dst._repo, refs, **options)
        with Store.open(dst, create=not dry_run) as other:
            return _sync.sync(self._repo, other._repo, refs, **options)

    def sync_from(self, src: "Store | str | os.PathLike[str]", *refs: str, dry_run: bool = False,
                  move_tags: bool = False, on_progress: Callable[[int], None] | None = None) -> SyncReport:
        """`sync` the other way: copy checkpoints of `src` into this store. (`pull` brings a Hub model in.)"""
        if isinstance(src, Store):
            return src.sync(self, *refs, dry_run=dry_run, move_tags=move_tags, on_progress=on_progress)
        with Store.open(src) as other:
            return other.sync(self, *refs, dry_run=dry_run, move_tags=move_tags, on_progress=on_progress)

    # -- sharing: collections, families, model info and queries -----------------------------------------------------
    def collection_create(self, name: str, description: str | None = None) -> Collection:
        """A new, empty collection: a named, ordered group of checkpoints across runs, kept by retention."""
        return _collections.create(self._repo, name, description)

    def collection_add(self, name: str, ref: str, *, note: str | None = None) -> Collection:
        """Append the checkpoint `ref` names to the collection (a second add only replaces its note)."""
        return _collections.add(self._repo, name, ref, note)[0]

    def collection_remove(self, name: str, refs: str | Iterable[str]) -> Collection:
        """Take checkpoints out of the collection; the checkpoints stay in the store."""
        return _collections.remove(self._repo, name, refs)[0]

    def collection_delete(self, name: str) -> Collection:
        """Delete the collection (not its checkpoints). Returns what it held."""
        return _collections.delete(self._repo, name)

    def collection(self, name: str) -> Collection:
        return _collections.get(self._repo, name)

    def collections(self, ref: str | None = None) -> list[Collection]:
        """Every collection, by name; those holding the checkpoint `ref` names, when given."""
        found = _collections.all_collections(self._repo)
        if ref is None:
            return found
        cid = self.resolve(ref)
        return [c for c in found if cid in c.ids]

    def family(self, ref: str) -> list[FamilyMember]:
        """The model's family from lineage: its base, fine-tunes, conversions and further checkpoints, in tree
        order (see FamilyMember)."""
        return _family.family(self._repo, ref)

    def model_info(self, ref: str, *, sha256: bool = False) -> ModelInfo:
        """What huggingface_hub's model_info gives for a Hub model: architecture, pipeline tag, parameters, dtypes,
        size, tags, card summary, files with sizes and hashes (`sha256` reads every byte to add SHA-256s)."""
        return _modelinfo.model_info(self._repo, ref, sha256=sha256)

    def query(self, where: str | Iterable[str], *, run: str | None = None, sort: str | None = None,
              reverse: bool = False) -> list[CheckpointInfo]:
        """Checkpoints meeting every condition ``KEY OP VALUE`` (``"eval_accuracy>=0.9"``, ``"model_type=bert"``;
        keys and operators in ckptstore._core.query), answered by the index."""
        return _query.query(self._repo, where, run=run, sort=sort, reverse=reverse)

    # -- staged saves: several processes write one checkpoint (torch.distributed.checkpoint) --------------------
    @contextlib.contextmanager
    def staging(self) -> Iterator[None]:
        """Keep gc from removing staged blobs: the committing process holds this from before any process calls
        `stage_files` until `commit_staged` returns (gc waits meanwhile; a process that dies releases it)."""
        with self._repo.writing():
            yield

    def stage_files(self, files: Mapping[str, Any]) -> tuple[list[dict[str, Any]], int]:
        """Write the blobs of `files` (bytes, a path, or a dict of tensors for a safetensors file, as
        `extra_files`), deduplicated and durable, without saving a checkpoint: returns their file entries (JSON, to
        send to the committing process) and the bytes written. Call while some process holds `staging()`."""
        from ._ops import staged as _staged

        return _staged.stage(self._repo, files)

    def commit_staged(self, name: str, staged: Iterable[Mapping[str, Any]], *,
                      extra_files: Mapping[str, Any] | None = None, tags: Iterable[str] = (),
                      metrics: Mapping[str, float] | None = None, metadata: Mapping[str, Any] | None = None,
                      parent: str | None = None, message: str | None = None, step: int | None = None,
                      staged_bytes: int = 0) -> SaveReport:
        """Save checkpoint `name` from the file entries `stage_files` returned in any process, plus `extra_files`:
        one manifest, one commit. Nothing of it is visible before; `staged_bytes` is added to the report's
        new bytes."""
        from ._ops import staged as _staged

        report = _staged.commit_staged(self._repo, name, staged, extra_files=extra_files, tags=tags,
                                       metrics=metrics, metadata=metadata, parent=parent, message=message,
                                       step=step, staged_bytes=staged_bytes)
        self.last_save = report
        return report

    def export_hf(self, ref: str, dest: str | os.PathLike[str], *, max_shard_size: int | str = "5GB",
                  verify: bool = False) -> Path:
        """Write a distributed (DCP) checkpoint of a transformers model as a folder `from_pretrained` loads:
        full tensors consolidated from the ranks' shards, safetensors shards of at most `max_shard_size`, with the
        config and tokenizer stored beside the DCP state. `dest` must be new or empty; `verify` re-hashes every
        blob read."""
        from ._ops import dcp_export as _dcp_export

        return _dcp_export.export_hf(self._repo, ref, Path(dest), max_shard_size=max_shard_size, verify=verify)

    # -- the web view (ckpt ui) ---------------------------------------------------------------------------------
    def storage_growth(self, run: str) -> list[_history.StorageStep]:
        """The run's stored checkpoints in save order with the bytes each added, and the run's totals as plain
        folders and as stored after each (from the index)."""
        return _history.storage_growth(self._repo, run)

    def run_summaries(self) -> list[_history.RunSummary]:
        """Every run at a glance (checkpoints, highest step, plain-folder bytes, last save, its best checkpoint),
        from the index without reading every checkpoint's record."""
        return _history.run_summaries(self._repo)

    def run_stored_bytes(self) -> dict[str, int]:
        """For each run, bytes of the distinct blobs its checkpoints reference (a blob shared by runs counts in
        each; `du()` gives what only the run references)."""
        return self._repo.catalog.run_stored_bytes()

    def children(self, ref: str) -> list[CheckpointInfo]:
        """The checkpoints whose parent is `ref`'s checkpoint (converted, fine-tuned or resumed from it)."""
        ids = self._repo.catalog.child_ids(self.resolve(ref))
        return sorted(self._repo.catalog.infos(ids=ids), key=lambda c: c.name) if ids else []

    def deleted(self, run: str | None = None, *, known: dict[str, str] | None = None) -> list[_history.DeletedCheckpoint]:
        """Checkpoints the store deleted (rm, prune), of `run` when given: id, name and the step in the name.
        `known` (id -> name, from an earlier call) spares re-reading records, which never change."""
        return _history.deleted_checkpoints(self._repo, run, known)

    # -- storage efficiency: packing (encoded blobs), slimming, usage --------------------------------------------
    def pack(self, refs: str | Iterable[str] | None = None, *, dry_run: bool = False, level: int | None = None,
             keep_raw: bool | None = None) -> "PackReport":
        """Store the blobs of checkpoints encoded (zstd over byte planes, or deltas against the checkpoint
        before): `refs` are runs (every checkpoint of the run) or references; None packs the whole store. Each
        run's latest, best and tagged checkpoints stay raw unless named explicitly or `keep_raw=False`."""
        return _pack_select.pack_refs(self._repo, refs, dry_run=dry_run, level=level, keep_raw=keep_raw)

    def set_storage(self, run: str, storage: "StoragePolicy | None") -> None:
        """Set the run's storage policy (pack_after, keep_raw, keep_training_state); None removes it."""
        _pack_select.set_storage(self._repo, run, storage)

    def get_storage(self, run: str) -> "StoragePolicy | None":
        return _pack_select.get_storage(self._repo, run)

    def pack_due(self, run: str) -> "PackReport":
        """Pack what the run's storage policy says is due now (what a save starts in the background)."""
        return _pack_select.pack_due(self._repo, run)

    def wait_packing(self, timeout: float | None = None) -> None:
        """Wait for the background packs this Store's saves started."""
        for proc in getattr(self, "_packers", []):
            proc.wait(timeout)
        self._packers = []

    def _after_save_storage(self, run: str) -> None:
        # Never fails the save, which is committed: a storage policy that cannot be applied is a warning.
        import warnings

        from .errors import RetentionWarning

        try:
            if _pack_select.get_storage(self._repo, run) is None:
                return  # most runs: one read of the run's settings says there is nothing to slim or pack
            _slim.slim(self._repo, run)  # before packing: never encode what is about to be dropped
            proc = _pack_select.start_background_pack(self._repo, run)
        except Exception as exc:  # noqa: BLE001
            warnings.warn(f"Saved, but starting the run's packing failed ({exc}); run 'ckpt pack {run}'.",
                          RetentionWarning, stacklevel=3)
            return
        if proc is not None:
            self._packers = [p for p in getattr(self, "_packers", []) if p.poll() is None] + [proc]

    def slim(self, run: str, keep: int | None = None, *, dry_run: bool = False) -> list[str]:
        """Drop the optimizer, scheduler and RNG state of the run's checkpoints beyond the newest `keep` (default:
        the run's StoragePolicy.keep_training_state); they stay loadable. Returns the names slimmed."""
        return _slim.slim(self._repo, run, keep, dry_run=dry_run)

    def encodings(self, ref: str) -> dict[str, dict[str, int]]:
        """How the checkpoint's blobs are stored: encoding -> {"blobs", "raw_bytes", "stored_bytes"}."""
        return _storage_report.encoding_mix(self._repo, self.resolve(ref))

    def storage_usage(self) -> dict[str, Any]:
        """Per run and in total: logical, unique and stored bytes, and what dedup, zstd and deltas saved."""
        return _storage_report.storage_usage(self._repo)

    # -- recorded check results (validate, verify) --------------------------------------------------------------
    def last_verify(self) -> dict[str, Any] | None:
        """The last store-wide verify as recorded (reports/verify.json: when, deep or not, checkpoints and blobs
        checked, problems, the damaged checkpoints' names), or None when none was recorded."""
        return _checkrecords.last_verify(self._repo)

    def check_results(self, ref: str) -> dict[str, Any]:
        """The validation and verify results recorded on checkpoint `ref`: ``{"validation": {...} | None,
        "verification": {...} | None}`` (from its annotation; each the last run's)."""
        return _checkrecords.recorded(self.info(ref).metadata)
