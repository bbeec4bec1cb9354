"""Bring in the checkpoints users already have: a model folder, a Trainer output folder, a Hugging Face hub cache.

Each layout is recognised by what it holds (``checkpoint-N`` folders, a config beside weights, ``models--*``
repos), then every checkpoint in it goes through the ordinary save path, so identical files, tensors and chunks
dedupe with everything already stored. Legacy weight pickles are converted to safetensors on the way in
(`_convert`). Importing twice is harmless: a name already stored with the same files is skipped with a note (a
changed folder fails with NameChanged).
"""

from __future__ import annotations

import dataclasses

import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from .._core.info import CheckpointInfo
from .._core.trainer_log import CHECKPOINT_DIR, eval_metrics
from .._core.names import MAX_NAME_LENGTH, RESERVED_TAGS, check_run
from .._repo.objects import BlobHasher
from ..errors import InvalidArgument, InvalidCheckpoint, NameChanged, NameExists, SourceNotFound
from . import retention as _retention
from .ingest import CONFIG_FILES, _is_weight_file, check_folder, folder_sources, ingest
from .names import tag as tag_checkpoint
from .save import save_sources
from .trainer_folder import previous_checkpoint, with_hyperparameters

if TYPE_CHECKING:
    from .._repo.repository import Repository

# Timing figures Trainer logs beside each evaluation: they describe the machine, not the model.


class ImportProgress(Protocol):
    """What an import reports while it writes: one `start` per checkpoint, `advance` per stored byte."""

    def start(self, label: str, total: int) -> None: ...

    def advance(self, n: int) -> None: ...

    def done(self) -> None: ...


class _Silent:
    def start(self, label: str, total: int) -> None:
        pass

    def advance(self, n: int) -> None:
        pass

    def done(self) -> None:
        pass


@dataclass(frozen=True)
class ImportItem:
    """One checkpoint of an import: `status` is 'added', 'skipped' (the name was already stored) or 'failed'."""

    name: str
    status: str
    source: str
    id: str | None = None
    reason: str | None = None
    bytes_read: int = 0
    bytes_stored: int = 0
    converted: tuple[str, ...] = ()  # the pickles replaced by safetensors files

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name, "status": self.status, "source": self.source, "id": self.id, "reason": self.reason,
            "bytes_read": self.bytes_read, "bytes_stored": self.bytes_stored, "converted": list(self.converted),
        }


@dataclass(frozen=True)
class ImportReport:
    """What `Store.import_folder` / `Store.import_hf_cache` did: every checkpoint found, the tags set, and notes."""

    kind: str  # "model folder", "trainer output", "trainer checkpoint" or "hf cache"
    source: str
    items: tuple[ImportItem, ...]
    tags: tuple[str, ...] = ()  # "RUN:TAG" set by the import
    notes: tuple[str, ...] = ()

    def _with(self, status: str) -> tuple[ImportItem, ...]:
        return tuple(i for i in self.items if i.status == status)

    @property
    def added(self) -> tuple[ImportItem, ...]:
        return self._with("added")

    @property
    def skipped(self) -> tuple[ImportItem, ...]:
        return self._with("skipped")

    @property
    def failed(self) -> tuple[ImportItem, ...]:
        return self._with("failed")

    @property
    def bytes_read(self) -> int:
        return sum(i.bytes_read for i in self.items)

    @property
    def bytes_stored(self) -> int:
        """Bytes newly written to the store: what the import cost on disk after deduplication."""
        return sum(i.bytes_stored for i in self.items)

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind, "source": self.source,
            "added": len(self.added), "skipped": len(self.skipped), "failed": len(self.failed),
            "bytes_read": self.bytes_read, "bytes_stored": self.bytes_stored,
            "tags": list(self.tags), "notes": list(self.notes), "checkpoints": [i.to_json() for i in self.items],
        }


def safe_segment(text: str, fallback: str = "import") -> str:
    """`text` made into one valid name segment: other characters become '-' (repo ids, folder names)."""
    out = re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-")[:MAX_NAME_LENGTH // 2]
    return out if out not in ("", ".", "..") else fallback


def default_hf_cache() -> Path:
    """The hub cache as huggingface_hub resolves it, read now: its constants module reads the environment once,
    at import time, so a variable set later (a test, a notebook) would otherwise be ignored."""
    env = os.environ

    def expand(p: str) -> str:
        return os.path.expandvars(os.path.expanduser(p))

    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if env.get(var):
            return Path(expand(env[var]))
    home = env.get("HF_HOME") or os.path.join(env.get("XDG_CACHE_HOME") or expand("~/.cache"), "huggingface")
    return Path(expand(home)) / "hub"


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    return raw if isinstance(raw, dict) else None


def trainer_state_facts(folder: Path) -> tuple[int | None, dict[str, float]]:
    """The step and the eval metrics a Trainer checkpoint folder records in its trainer_state.json ((None, {})
    without one): what `save` of a checkpoint-N folder takes when it is not told them."""
    state = _read_json(folder / "trainer_state.json")
    step = state.get("global_step") if state else None
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        return None, {}
    return step, eval_metrics(state, step)


def refuse_trainer_output(folder: Path) -> None:
    """A Trainer output_dir (it holds checkpoint-N folders) is a run, not one checkpoint: `save` refuses it."""
    subs = sorted((d.name for d in folder.iterdir() if d.is_dir() and CHECKPOINT_DIR.fullmatch(d.name)),
                  key=lambda n: int(n.split("-")[1]))
    if subs:
        shown = ", ".join(subs[:3]) + (", ..." if len(subs) > 3 else "")
        raise InvalidCheckpoint(
            f"Not saving {str(folder)!r} as one checkpoint: it is a Trainer output folder holding {len(subs)}"
            f" checkpoint folders ({shown}).",
            path=str(folder),
            hint=f"Save one of them (ckpt save {folder / subs[-1]} NAME), or import them all as a run with their"
            f" metrics: ckpt import {folder}",
        )


def detect(path: Path) -> str:
    """Which layout `path` holds (see ImportReport.kind); a clear error when none."""
    if not path.exists():
        raise SourceNotFound(str(path))
    if not path.is_dir():
        raise InvalidCheckpoint(
            f"Source {str(path)!r} is a file, not a folder.", path=str(path),
            hint="Give the folder that save_pretrained or Trainer wrote, or a Hugging Face cache folder.",
        )
    children = list(path.iterdir())
    if any(c.is_dir() and CHECKPOINT_DIR.fullmatch(c.name) for c in children):
        return "trainer output"
    if CHECKPOINT_DIR.fullmatch(path.name) and (path / "trainer_state.json").is_file():
        return "trainer checkpoint"
    if any(c.is_file() and (c.name in CONFIG_FILES or _is_weight_file(c.name)) for c in children):
        return "model folder"
    if any(c.is_dir() and c.name.startswith("models--") for c in children):
        return "hf cache"
    raise InvalidCheckpoint(
        f"{str(path)!r} is not a model folder, a Trainer output folder or a Hugging Face cache: it has no"
        " config.json, no weights, no checkpoint-N folders and no models--* repos.",
        path=str(path),
        hint="Point at the folder save_pretrained wrote (config.json + weights), Trainer's output_dir, or a hub"
        " cache (ckpt import --hf-cache DIR).",
    )


@dataclass
class _Importer:
    repo: "Repository"
    keep_pickles: bool
    progress: ImportProgress
    items: list[ImportItem] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def report(self, kind: str, source: Path) -> ImportReport:
        return ImportReport(kind, str(source), tuple(self.items), tuple(self.tags), tuple(self.notes))

    def folder(
        self,
        folder: Path,
        name: str,
        *,
        step: int | None = None,
        metrics: dict[str, float] | None = None,
        parent_id: str | None = None,
        metadata: dict[str, Any] | None = None,
        root_only: bool = False,
    ) -> str:
        """Store one checkpoint folder as `name`; returns its id. A name already stored is skipped when it holds
        the same files; when the folder has changed since (training went on, weights were replaced), the import
        of it fails rather than leave a stale copy that looks current."""
        existing = self.repo.catalog.id_for_name(name)
        files = check_folder(folder)
        metadata = with_hyperparameters(folder, metadata)
        if root_only:
            files = [(rel, full) for rel, full in files if "/" not in rel]
        config = _read_json(folder / "config.json")
        from .convert import FolderConversion, convert_folder_pickles  # imports torch: only import pays for it

        conv = FolderConversion() if self.keep_pickles else convert_folder_pickles(files, config)
        bytes_read = sum(full.stat().st_size for _, full in files)
        with folder_sources([(rel, full) for rel, full in files if rel not in conv.replaced]) as plain:
            sources = sorted(plain + conv.sources, key=lambda s: s.path)
            if existing is not None:
                self._check_unchanged(name, folder, existing, sources)
                self._skipped(name, folder, existing)
                return existing
            self.notes.extend(f"{name}: {note}" for note in conv.notes)
            self.progress.start(name, sum(s.size for s in sources))
            try:
                cid, stored = save_sources(
                    self.repo, sources, name, step=step, metrics=metrics, parent_id=parent_id, metadata=metadata,
                    on_progress=self.progress.advance,
                )
            except NameExists:  # another import stored it meanwhile
                cid = self.repo.resolve(name)
                self._skipped(name, folder, cid)
                return cid
            finally:
                self.progress.done()
        converted = tuple(sorted(s.converted_from for s in conv.sources if s.converted_from))
        self.items.append(ImportItem(name, "added", str(folder), cid, None, bytes_read, stored, converted))
        return cid

    def guarded(self, folder: Path, name: str, **kwargs: Any) -> str | None:
        """`folder`, but a folder that is not a valid checkpoint fails alone; the others are still imported."""
        try:
            return self.folder(folder, name, **kwargs)
        except (InvalidCheckpoint, NameChanged) as exc:
            self.items.append(ImportItem(name, "failed", str(folder), reason=exc.message))
            return None

    def _check_unchanged(self, name: str, folder: Path, cid: str, sources: list) -> None:
        stored_files = self.repo.read_manifest(cid).files
        # A torch zip file stored whole by an earlier version (kind "blob") is compared as it was cut then.
        whole = {f.path for f in stored_files if f.kind == "blob"}
        sources = [dataclasses.replace(s, storages=None) if s.path in whole else s for s in sources]
        hasher = BlobHasher()
        try:
            entries = ingest(sources, hasher, self.repo.config.chunk_bytes)
        finally:
            hasher.close()
        stored = {f.path: f.digest for f in stored_files}
        changed = sorted(e.path for e in entries if stored.get(e.path) != e.digest)
        changed += sorted(set(stored) - {e.path for e in entries})
        if changed:
            raise NameChanged(name, str(folder), changed)

    def _skipped(self, name: str, folder: Path, cid: str) -> None:
        self.items.append(ImportItem(name, "skipped", str(folder), cid, "already stored"))
        self.notes.append(f"{name}: already stored, skipped")

    def tag(self, cid: str, run: str, tag: str) -> None:
        if tag in RESERVED_TAGS:
            self.notes.append(f"{run}: the hub ref {tag!r} is not copied as a tag ({run}:{tag} is kept by ckptstore)")
            return
        tag_checkpoint(self.repo, cid, tag)
        self.tags.append(f"{run}:{tag}")


def import_folder(
    repo: "Repository",
    path: str | os.PathLike[str],
    *,
    run: str | None = None,
    keep_pickles: bool = False,
    progress: ImportProgress | None = None,
) -> ImportReport:
    """Import whatever `path` holds: a model folder as RUN/FOLDER (or FOLDER), a Trainer output folder as
    RUN/step-N per checkpoint (plus RUN/final, RUN:best), one Trainer checkpoint, or a hub cache."""
    path = Path(path)
    kind = detect(path)
    if run is not None:
        check_run(run)
    if kind == "hf cache":
        if run is not None:
            raise InvalidArgument("--run does not apply to a hub cache: names come from its repos (ORG--MODEL).")
        return import_hf_cache(repo, path, keep_pickles=keep_pickles, progress=progress)
    imp = _Importer(repo, keep_pickles, progress or _Silent())
    here = path.resolve()
    source = {"kind": kind, "path": str(here)}
    if kind == "model folder":
        folder_name = safe_segment(here.name)
        imp.folder(path, f"{run}/{folder_name}" if run else folder_name, metadata={"import": source})
    elif kind == "trainer checkpoint":
        step = int(CHECKPOINT_DIR.fullmatch(path.name).group(1))  # type: ignore[union-attr]
        state = _read_json(path / "trainer_state.json")
        run = run or safe_segment(here.parent.name)
        imp.folder(path, f"{run}/step-{step}", step=step, metrics=eval_metrics(state, step),
                   parent_id=previous_checkpoint(repo, run, step), metadata={"import": source})
    else:
        _import_trainer_output(imp, path, run or safe_segment(here.name), source)
    return imp.report(kind, path)


def _import_trainer_output(imp: _Importer, path: Path, run: str, source: dict[str, Any]) -> None:
    checkpoints = sorted(
        (int(m.group(1)), d) for d in path.iterdir() if d.is_dir() and (m := CHECKPOINT_DIR.fullmatch(d.name))
    )
    states: list[tuple[int, dict[str, Any]]] = []
    # Lineage: each checkpoint's parent is the one before it, the first's the run's last stored before it.
    parent = previous_checkpoint(imp.repo, run, checkpoints[0][0]) if checkpoints else None
    for step, folder in checkpoints:
        state = _read_json(folder / "trainer_state.json")
        if state is not None:
            states.append((int(state.get("global_step") or step), state))
        cid = imp.guarded(
            folder, f"{run}/step-{step}", step=step, metrics=eval_metrics(state, step), parent_id=parent,
            metadata={"import": {**source, "checkpoint": folder.name}},
        )
        parent = cid or parent
    root_state = _read_json(path / "trainer_state.json")
    top = [f for f in path.iterdir() if f.is_file()]
    if not any(f.name in CONFIG_FILES for f in top):
        # Without a config beside them, weights at the top are not a final model but something saved by hand (a
        # state dict, an export for another tool): not a checkpoint of this run, so not a failed import either.
        for f in sorted(f for f in top if _is_weight_file(f.name)):
            imp.notes.append(f"{f.name}: not a checkpoint (no config.json beside it in the output folder), skipped")
    else:  # the final model, when trainer.save_model() wrote it into the output folder itself
        step = int((root_state or {}).get("global_step") or (checkpoints[-1][0] if checkpoints else 0)) or None
        imp.guarded(
            path, f"{run}/final", step=step, metrics=eval_metrics(root_state, step) if step else {},
            parent_id=parent, metadata={"import": {**source, "checkpoint": "final"}}, root_only=True,
        )
    if root_state is not None:
        states.append((int(root_state.get("global_step") or 0), root_state))
    # The newest trainer state knows the best checkpoint of the whole run.
    newest = max(states, key=lambda s: s[0])[1] if states else {}
    best = newest.get("best_model_checkpoint")
    if best:
        m = CHECKPOINT_DIR.fullmatch(Path(str(best)).name)
        cid = imp.repo.catalog.id_for_name(f"{run}/step-{m.group(1)}") if m else None
        if cid is not None:
            _follow_trainer_best(imp, run, cid, newest.get("best_metric"))
        else:
            imp.notes.append(f"best_model_checkpoint {best!r} was not imported; {run}:best not set from it")


def _follow_trainer_best(imp: _Importer, run: str, best_id: str, best_value: Any) -> None:
    """Make RUN:best follow the metric Trainer chose its best_model_checkpoint by, so that it points there now and
    keeps following that metric after later saves. trainer_state.json keeps the best value, not the metric's
    name (metric_for_best_model is in training_args.bin, a pickle never opened): the metric is the one whose
    ranking, in Trainer's direction, puts that checkpoint first with that value (eval_loss tried first)."""
    infos = imp.repo.catalog.infos(run=run)
    found = _trainer_best_metric(infos, best_id, best_value)
    if found is None:
        imp.notes.append(f"no metric ranks {imp.repo.info(best_id).name} best, as Trainer did; {run}:best follows"
                         f" {_retention.RunSettings().best[0]}")
        return
    _retention.register_run(imp.repo, run, metric=found[0], mode=found[1])
    imp.tags.append(f"{run}:best")


def _trainer_best_metric(infos: list[CheckpointInfo], best_id: str, best_value: Any) -> tuple[str, str] | None:
    from ..policies import BestN, default_mode

    best = next(c for c in infos if c.id == best_id)
    for metric in sorted(best.metrics, key=lambda k: (k != _retention.DEFAULT_BEST_METRIC, k)):
        value = best.metrics[metric]
        if isinstance(best_value, (int, float)) and not math.isclose(value, best_value, rel_tol=1e-9, abs_tol=1e-12):
            continue
        first = default_mode(metric)  # Trainer's greater_is_better default, then the other way
        for mode in (first, "max" if first == "min" else "min"):
            ranked = BestN(1, metric, mode).ranked(infos)  # type: ignore[arg-type]
            if ranked and ranked[0].id == best_id:
                return metric, mode
    return None


def import_hf_cache(
    repo: "Repository",
    cache_dir: str | os.PathLike[str] | None = None,
    *,
    keep_pickles: bool = False,
    progress: ImportProgress | None = None,
) -> ImportReport:
    """Every snapshot of every model repo in a hub cache, as ORG--MODEL/rev-<commit[:12]>, tagged with its refs
    (ORG--MODEL:main). Read through huggingface_hub's own cache scanner."""
    from huggingface_hub import scan_cache_dir
    from huggingface_hub.errors import CacheNotFound

    cache = Path(cache_dir) if cache_dir is not None else default_hf_cache()
    try:
        info = scan_cache_dir(cache)
    except (CacheNotFound, ValueError):
        raise InvalidArgument(
            f"No Hugging Face cache at {str(cache)!r}.",
            hint="Pass the cache folder (ckpt import --hf-cache DIR); the default is $HF_HUB_CACHE, else"
            " $HF_HOME/hub, else ~/.cache/huggingface/hub.",
        ) from None
    imp = _Importer(repo, keep_pickles, progress or _Silent())
    imp.notes.extend(f"cache: {w}" for w in info.warnings)
    revisions: list[tuple[str, Path, str, tuple[str, ...], float]] = []  # repo id, snapshot, commit, refs, mtime
    for repo in sorted(info.repos, key=lambda r: (r.repo_type, r.repo_id)):
        if repo.repo_type != "model":
            imp.notes.append(f"{repo.repo_type} {repo.repo_id}: not a model, skipped")
            continue
        revisions += [(repo.repo_id, r.snapshot_path, r.commit_hash, tuple(sorted(r.refs)), r.last_modified)
                      for r in repo.revisions]
    # huggingface_hub's scanner drops a whole repo when one snapshot is damaged (a broken link of an unfinished
    # download) and only warns; read those repos' snapshots directly, so the damaged one fails alone.
    scanned = {f"models--{repo.repo_id.replace('/', '--')}" for repo in info.repos}
    for repo_dir in sorted(cache.glob("models--*")):
        if repo_dir.name not in scanned and (repo_dir / "snapshots").is_dir():
            revisions += _snapshots_read_directly(repo_dir)
    for repo_id, snapshot, commit, refs, _ in sorted(revisions, key=lambda r: (r[0], r[4], r[2])):
        run = safe_segment(repo_id.replace("/", "--"))
        source = {"kind": "hf cache", "repo_id": repo_id, "revision": commit, "refs": list(refs)}
        cid = imp.guarded(snapshot, f"{run}/rev-{commit[:12]}", metadata={"import": source})
        if cid is not None:
            for ref in refs:
                imp.tag(cid, run, safe_segment(ref.replace("/", "-"), fallback="ref"))
    return imp.report("hf cache", cache)


def _snapshots_read_directly(repo_dir: Path) -> list[tuple[str, Path, str, tuple[str, ...], float]]:
    """The snapshots of one cached model repo, read from its folders as huggingface_hub lays them out."""
    repo_id = repo_dir.name.removeprefix("models--").replace("--", "/")
    refs: dict[str, list[str]] = {}
    for ref_file in sorted(p for p in (repo_dir / "refs").rglob("*") if p.is_file()):
        commit = ref_file.read_text().strip()
        refs.setdefault(commit, []).append(ref_file.relative_to(repo_dir / "refs").as_posix())
    return [
        (repo_id, snap, snap.name, tuple(sorted(refs.get(snap.name, ()))), snap.stat().st_mtime)
        for snap in sorted((repo_dir / "snapshots").iterdir())
        if snap.is_dir()
    ]
