"""Saving a checkpoint: collect its files, write their blobs, write the manifest, claim the name (the commit point),
move the run's tags, then apply the run's retention policy.

Write order (docs/format.md): blobs (durable, then visible), then the manifest (immutable, invisible until claimed),
then the name claim, created only if absent: the one step that makes the checkpoint exist. A crash before it
leaves unreferenced blobs and an unclaimed manifest for gc; a crash after it leaves a whole checkpoint.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import platform
import time
import warnings
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._core.info import SaveReport
from .._core.names import RESERVED_TAGS, check_name, check_tag, run_of, step_from_name
from .._format.manifest import FileEntry, Manifest, manifest_id
from .._format.modelconfig import config_facts
from .._repo.objects import BlobWriter, missing_blobs, read_blob
from ..errors import CkptError, CorruptObject, InvalidArgument, NameExists, RetentionWarning, StoreFull
from . import retention
from .ingest import SourceFile, bytes_source, check_folder, folder_sources, ingest
from .inspect import count_parameters
from .space import check_room, store_full_on_enospc

if TYPE_CHECKING:
    from .._repo.repository import Repository


@functools.lru_cache(maxsize=1)  # importlib.metadata costs ~40 ms a call; versions do not change mid-process
def environment() -> dict[str, str]:
    import importlib.metadata as md

    env = {"python": platform.python_version(), "platform": platform.platform()}
    for pkg in ("ckptstore", "transformers", "torch", "safetensors", "tokenizers", "huggingface_hub"):
        try:
            env[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return env


def model_facts(name: str, files: list[FileEntry], read_file: Callable[[str], bytes | None]) -> dict[str, Any]:
    facts = config_facts(read_file("config.json"), checkpoint=name)
    params, dtypes = count_parameters(files)  # as validate counts them: buffers such as position_ids left out
    if params:
        facts["parameters"] = params
        facts["dtypes"] = dtypes
    return facts


# -- checking what the caller gave -------------------------------------------------------------------------------
def check_user_tag(tag: str, ref: str, run: str | None = None, *, verb: str = "set") -> None:
    """Refuse `latest` and `best` by hand: the store moves them after every save and delete of every run, so a
    hand-set one would silently move back (or a removed one come back)."""
    check_tag(tag)
    if tag in RESERVED_TAGS:
        run = run or run_of(ref)
        raise InvalidArgument(
            f"{run}:{tag} is kept up to date by ckptstore (it moves after every save and delete); it cannot be"
            f" {verb} by hand.",
            hint=f"Use a tag of your own, e.g. 'ckpt tag {ref} chosen'; 'ckpt policy {run}' shows what best follows.",
        )


def check_metadata(metadata: Mapping[str, Any] | None) -> dict[str, Any]:
    """Metadata is kept as JSON in the manifest: refuse what JSON cannot hold before anything is written."""
    if metadata is None:
        return {}
    if not isinstance(metadata, Mapping):
        raise InvalidArgument(f"metadata must be a dict, got {type(metadata).__name__}.", hint="metadata={'lr': 3e-4}")
    try:
        json.dumps(dict(metadata), allow_nan=True)
    except (TypeError, ValueError) as exc:
        raise InvalidArgument(
            f"metadata cannot be stored as JSON: {exc}.",
            hint="Use strings, numbers, booleans, lists and dicts (str(value) for anything else).",
        ) from None
    return dict(metadata)


def check_metrics(metrics: Mapping[str, float] | None) -> dict[str, float]:
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


def check_step(step: Any) -> None:
    if step is not None and (isinstance(step, bool) or not isinstance(step, int) or step < 0):
        raise InvalidArgument(f"step must be a whole number >= 0, got {step!r}.",
                              hint="The training step the checkpoint was saved at, e.g. step=500.")


def check_source(src: Path, name: str, tags: Iterable[str]) -> int:
    """What `save` refuses of a folder, checked without a store; returns the bytes the save will read."""
    from .importing import refuse_trainer_output
    from .ingest import walk_folder

    check_name(name)
    for tag in tags:
        check_user_tag(tag, name)
    with folder_sources(check_folder(src)):
        pass
    refuse_trainer_output(src)
    return sum(p.stat().st_size for _, p in walk_folder(src)) if src.is_dir() else 0


def check_name_free(repo: "Repository", name: str) -> None:
    """The one check that a name is not taken yet (the claim at commit time is what makes it final)."""
    if repo.catalog.id_for_name(name) is not None:
        raise NameExists(name)


# -- the save ---------------------------------------------------------------------------------------------------
def save(
    repo: "Repository",
    src: Any,
    name: str,
    *,
    tokenizer: Any = None,
    tags: Iterable[str] | str = (),
    metrics: Mapping[str, float] | None = None,
    metadata: Mapping[str, Any] | None = None,
    parent: str | None = None,
    message: str | None = None,
    step: int | None = None,
    extra_files: Mapping[str, Any] | None = None,
    max_shard_size: int | str = "50GB",
    on_progress: Callable[[int], None] | None = None,
) -> SaveReport:
    """Store `src` under `name`; see Store.save. Returns what the save did: the checkpoint, the bytes it wrote,
    and what the run's policy pruned after it."""
    check_name(name)
    tags = (tags,) if isinstance(tags, str) else tuple(tags)  # tags="prod" is one tag, not four
    for tag in tags:
        check_user_tag(tag, name)
    check_step(step)
    name_step = step_from_name(name)
    if step is None:
        step = name_step
    parent_id = repo.resolve(parent) if parent else None
    if isinstance(src, (str, os.PathLike)) and Path(src).is_dir():
        from .importing import refuse_trainer_output
        from .trainer_folder import folder_defaults

        refuse_trainer_output(Path(src))
        step, metrics, metadata, parent_id = folder_defaults(  # a Trainer checkpoint-N folder
            repo, Path(src), name, step=step, name_step=name_step, metrics=metrics, metadata=metadata,
            parent_id=parent_id,
        )
    clean_metrics = check_metrics(metrics)
    clean_metadata = check_metadata(metadata)
    check_name_free(repo, name)

    with contextlib.ExitStack() as stack:
        sources = collect(src, tokenizer, extra_files, max_shard_size, stack)
        cid, written = save_sources(
            repo, sources, name, tags=tags, metrics=clean_metrics, metadata=clean_metadata, parent_id=parent_id,
            message=message, step=step, on_progress=on_progress,
        )
    report = after_commit(repo, cid, written)
    # A newer save from another process may have pruned this one already, so report what is stored now, or else
    # what was committed.
    try:
        now = repo.catalog.infos(ids=[cid])
    except StoreFull:  # the index could not be brought up to date (a disk that filled since): still saved
        now = []
    if now:
        report = SaveReport.of(now[0], report.new_bytes, report.pruned)
    return report


def after_commit(repo: "Repository", cid: str, written: int) -> SaveReport:
    """Apply the run's policy to the committed checkpoint `cid`; the save's report (`written` new bytes, and the
    checkpoints pruned). The checkpoint is stored whatever happens here: a failure is a RetentionWarning."""
    info = repo.info(cid)
    report = SaveReport.of(info, written)
    try:
        pruned = retention.after_save(repo, info.run)
        if pruned is not None and pruned.executed:
            report = SaveReport.of(info, written, tuple(d.checkpoint.name for d in pruned.plan.remove))
    except Exception as exc:  # noqa: BLE001 - the checkpoint is stored; say so rather than report a failed save
        warnings.warn(
            f"Saved {info.name!r}, but applying the run's retention policy failed ({exc});"
            f" run 'ckpt prune {info.run}' to apply it.",
            RetentionWarning,
            stacklevel=4,  # the caller of Store.save or Store.commit_staged
        )
    return report


def collect(src: Any, tokenizer: Any, extra_files: Mapping[str, Any] | None, max_shard_size: int | str,
            stack: contextlib.ExitStack) -> list[SourceFile]:
    """The files to store: a folder's, a live model's as save_pretrained writes them, plus `extra_files`."""
    sources: list[SourceFile]
    if isinstance(src, (str, os.PathLike)):
        files = check_folder(Path(src))
        sources = stack.enter_context(folder_sources(files))
        if tokenizer is not None:
            raise InvalidArgument("tokenizer= goes with a live model; a folder brings its own tokenizer files.")
    elif src is None:
        sources = []
    else:
        from .capture import capture_model

        sources = capture_model(src, tokenizer, max_shard_size=max_shard_size)
    if extra_files:
        from .capture import tensors_source

        known = {s.path for s in sources}
        for path, value in extra_files.items():
            check_name(path)  # same rules as names: relative, no '..'
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


def save_sources(
    repo: "Repository",
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
    state this way): their blobs are already stored, so not a byte of them is read or written again. A failed
    save sets `leftovers` = (blobs, bytes) on its exception: what it had made visible, for gc."""
    kept = tuple(keep)
    with repo.writing(), store_full_on_enospc(repo.url, run_of(name)):
        check_room(repo, sum(s.size for s in sources), run_of(name))
        # Under the writing lock gc cannot run, so a blob found here stays until the manifest references it.
        missing = missing_blobs(repo.blobs, [b.digest for f in kept for b in f.blobs])
        if missing:
            raise CorruptObject(f"Blob {missing[0][:12]} to carry over is missing from the store.", digest=missing[0])
        writer = BlobWriter(repo.blobs)
        if writer.wants_known_blobs:
            writer.assume_present(known_blobs(repo, run_of(name), parent_id))
        try:
            try:
                entries = ingest(sources, writer, repo.config.chunk_bytes, on_progress=on_progress) + list(kept)
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
                if f is None or f.size >= 1 << 22:
                    return None
                return b"".join(read_blob(repo.blobs, b.digest) for b in f.blobs)

            manifest = Manifest(
                name=name,
                run=run_of(name),
                created_at=time.time(),
                files=tuple(sorted(entries, key=lambda e: e.path)) if kept else tuple(entries),
                step=step,
                parent=parent_id,
                tags=tags,
                metrics=dict(metrics or {}),  # checked by the callers (save, import: numbers from trainer_state)
                metadata=dict(metadata or {}),
                message=message,
                model=model_facts(name, entries, read_small),
                environment=dict(environment()),
            )
            return commit(repo, manifest, tags), writer.bytes_written
        except BaseException as exc:
            # Interrupted or failed: the staged blobs are gone (abort); what was already made visible stays for gc,
            # since another save may have reused it. Say how much, so the CLI can tell the user.
            exc.leftovers = (len(writer.published), writer.published_bytes)  # type: ignore[attr-defined]
            raise


def known_blobs(repo: "Repository", run: str, parent_id: str | None) -> set[str]:
    """Blobs of the run's newest checkpoint (and of the parent): committed, so stored, and kept by gc while this
    save holds the objects lock. A remote store skips its existence check (a request each) for them."""
    ids = [parent_id, repo.catalog.newest_id(run)]
    out: set[str] = set()
    for cid in dict.fromkeys(i for i in ids if i):
        try:
            out.update(repo.read_manifest(cid).blob_refs())
        except CkptError:
            pass  # damaged or gone: its blobs are simply checked as any other
    return out


def commit(repo: "Repository", manifest: Manifest, tags: Iterable[str]) -> str:
    """Write the manifest, claim its name, move its tags and index it, as one step under the commit lock."""
    data = manifest.to_bytes()
    cid = manifest_id(data)
    with repo.commit_lock():
        repo.sync()
        check_name_free(repo, manifest.name)
        repo.write_manifest(manifest, data)
        if not repo.claim(manifest.name, cid) and not _reclaim(repo, manifest.name, cid):
            raise NameExists(manifest.name)
        previous: dict[str, str | None] = {}
        try:
            for tag in tags:
                previous[tag] = repo.refs.get(manifest.run, tag)
                repo.refs.set(manifest.run, tag, cid)
            repo.catalog.add_many([(cid, manifest)])
            for tag in tags:
                repo.catalog.set_tag(manifest.run, tag, cid)
            # The run's latest and best move as part of the commit: a save whose latest could not move would
            # leave a resume from RUN:latest on an older step. The catalog was synced above and has been told every
            # change since (the commit lock keeps other writers out), so no further sync: each lists the store.
            previous.update({t: repo.refs.get(manifest.run, t) for t in RESERVED_TAGS})
            retention.update_tags_locked(repo, [manifest.run], synced=True)
        except BaseException:
            # A save that raises must leave nothing behind: its caller retries under the same name (and would
            # meet NameExists) and believes its tags did not move.
            _undo(repo, cid, manifest, previous)
            raise
    return cid


def _reclaim(repo: "Repository", name: str, cid: str) -> bool:
    """Claim `name` again when its claim is what a delete cut short left (the manifest it names is gone and the
    delete is recorded): the name is free. The caller holds the commit lock."""
    held = repo.claimed_id(name)
    if held is None or held in repo.manifest_ids() or not repo.was_deleted(held):
        return False
    repo.release(name)
    return repo.claim(name, cid)


def _undo(repo: "Repository", cid: str, manifest: Manifest, previous: Mapping[str, str | None]) -> None:
    """Take back a commit whose tags or index row could not be written: tags, index row, name claim, manifest. The
    claim goes before the manifest, unlike in a delete: no deletion record is written here, so a claim left without
    its manifest would read as a lost checkpoint, while a manifest left unclaimed is invisible garbage for gc. Best
    effort on a failing disk: each step only if the one before it worked, so what is left is at worst a whole
    checkpoint, never a tag pointing at nothing or an index row without its manifest."""
    try:
        for tag, old in previous.items():
            if old is None:
                repo.refs.remove(manifest.run, tag)
            else:
                repo.refs.set(manifest.run, tag, old)
            repo.catalog.set_tag(manifest.run, tag, old)
        repo.catalog.remove_many([cid])
        repo.release(manifest.name)
        repo.remove_manifest(cid)
    except Exception:  # noqa: BLE001 - the caller re-raises the error that made the save fail
        pass

