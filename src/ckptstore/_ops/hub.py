"""Publishing a checkpoint to the Hugging Face Hub and bringing a Hub model into the store, through huggingface_hub.

A push is one commit (create_commit): the checkpoint's exported files plus its model card as README.md, and the
removal of files the revision holds that the checkpoint does not. huggingface_hub leaves out files the revision
already holds byte for byte, so a push of what is already there makes no commit. The repository and the commit
are recorded on the checkpoint (its annotation, metadata key "hub") only once the commit exists: a push that is
interrupted records nothing, and running it again uploads what is missing.

A pull is snapshot_download into the user's hub cache (or, with HF_HUB_OFFLINE=1, a read of it), then an import of
the snapshot through the ordinary save path, so every tensor the store already holds is stored once. The name is
the one `ckpt import --hf-cache` gives (ORG--MODEL/rev-<commit[:12]>), so a snapshot imported either way is stored
once; the branches and tags that point at the commit become tags of the run.

Environment variables (HF_ENDPOINT, HF_HUB_OFFLINE, HF_HUB_CACHE, HF_TOKEN) are read when the operation runs, not
when huggingface_hub was imported. The token is huggingface_hub's own (HF_TOKEN, else `hf auth login`); it is
passed to huggingface_hub only and scrubbed from any message.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from .._core.names import run_of
from ..errors import HubAuthError, HubError, HubRepoNotFound, HubRevisionNotFound, InvalidArgument
from . import annotate as _annotate
from . import load as _load
from .card import model_card
from .importing import ImportProgress, _Importer, _Silent, default_hf_cache, safe_segment

if TYPE_CHECKING:
    from .._repo.repository import Repository

_COMMIT = re.compile(r"[0-9a-f]{40}")
_DEFAULT_ENDPOINT = "https://huggingface.co"
# Files every Hub repository has from its creation (LFS rules): not the checkpoint's, never removed by a push.
_KEEP_REMOTE = frozenset({".gitattributes"})


@dataclass(frozen=True)
class PushResult:
    """What `Store.push` did: the commit the revision is at, and whether this push made it."""

    name: str
    id: str
    repo_id: str
    revision: str
    commit: str
    url: str
    pushed: bool  # False: the revision already held exactly these files, no commit was made
    files: int
    tags: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "id": self.id, "repo_id": self.repo_id, "revision": self.revision,
                "commit": self.commit, "url": self.url, "pushed": self.pushed, "files": self.files,
                "tags": list(self.tags)}


@dataclass(frozen=True)
class PullResult:
    """What `Store.pull` did: the commit pulled, the checkpoint it is stored as, the tags set."""

    repo_id: str
    revision: str
    commit: str
    name: str
    id: str | None
    status: str  # 'added', 'skipped' (already stored) or 'failed'
    offline: bool
    tags: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    bytes_read: int = 0
    bytes_stored: int = 0
    reason: str | None = field(default=None)

    def to_json(self) -> dict[str, Any]:
        return {"repo_id": self.repo_id, "revision": self.revision, "commit": self.commit, "name": self.name,
                "id": self.id, "status": self.status, "offline": self.offline, "tags": list(self.tags),
                "notes": list(self.notes), "bytes_read": self.bytes_read, "bytes_stored": self.bytes_stored,
                "reason": self.reason}


def _endpoint() -> str | None:
    return (os.environ.get("HF_ENDPOINT") or "").rstrip("/") or None


def _offline() -> bool:
    from huggingface_hub import constants

    env = os.environ.get("HF_HUB_OFFLINE", "").strip().upper()
    return env in ("1", "ON", "YES", "TRUE") or constants.is_offline_mode()


def _transport_errors() -> tuple[type[BaseException], ...]:
    found: list[type[BaseException]] = []
    for module in ("httpx2", "httpx"):  # huggingface_hub 2.x speaks httpx2, 1.x httpx
        with contextlib.suppress(ImportError):
            found.append(importlib.import_module(module).TransportError)
    return tuple(found)


def _scrub(text: str, token: str | None) -> str:
    text = " ".join(str(text).split())  # one line
    return text.replace(token, "***") if token else text


@contextlib.contextmanager
def hub_errors(repo_id: str, token: str | None, *, revision: str | None = None, api: Any = None) -> Iterator[None]:
    """huggingface_hub's exceptions as HubError subclasses: one line, a hint, never the token."""
    from huggingface_hub.errors import (HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled,
                                        RepositoryNotFoundError, RevisionNotFoundError)

    where = _endpoint() or _DEFAULT_ENDPOINT
    try:
        yield
    except RevisionNotFoundError:
        raise HubRevisionNotFound(repo_id, revision or "main", _ref_names(api, repo_id)) from None
    except RepositoryNotFoundError:
        raise HubRepoNotFound(repo_id) from None
    except OfflineModeIsEnabled:
        raise HubError(f"Cannot reach the Hub for {repo_id!r}: HF_HUB_OFFLINE is set.",
                       hint="Unset HF_HUB_OFFLINE (or set it to 0) to push or pull over the network.") from None
    except LocalEntryNotFoundError:
        cached = _cached_ref_names(repo_id)
        has = f" It has {repo_id} at {', '.join(cached)}." if cached else ""
        raise HubError(
            f"{repo_id}@{revision or 'main'} is not in the local hub cache ({default_hf_cache()}) and the Hub was not"
            f" asked (offline).{has}",
            hint="Pull it once online (unset HF_HUB_OFFLINE), or point HF_HUB_CACHE at a cache that has it.",
        ) from None
    except HfHubHTTPError as exc:
        raise _http_error(exc, repo_id, token, where) from None
    except _transport_errors() as exc:
        raise HubError(f"Cannot reach the Hub at {where}: {_scrub(str(exc) or type(exc).__name__, token)}") from None
    except RuntimeError as exc:
        # huggingface_hub wraps a failed LFS upload in RuntimeError("Error while uploading 'x' to the Hub.").
        cause = exc.__cause__
        if isinstance(cause, HfHubHTTPError):
            raise _http_error(cause, repo_id, token, where, f"{_scrub(str(exc), token)} ") from None
        if isinstance(cause, _transport_errors()):
            raise HubError(f"{_scrub(str(exc), token)} Cannot reach {where}:"
                           f" {_scrub(str(cause) or type(cause).__name__, token)}") from None
        raise


def _http_error(exc: Any, repo_id: str, token: str | None, where: str, prefix: str = "") -> HubError:
    status = exc.response.status_code if exc.response is not None else None
    detail = _scrub(getattr(exc, "server_message", None) or str(exc).splitlines()[0], token)
    if status in (401, 403) and not prefix:
        return HubAuthError(f"The Hub refused this token for {repo_id!r} (HTTP {status}): {detail}")
    return HubError(f"{prefix}The Hub at {where} failed for {repo_id!r} (HTTP {status}): {detail}")


def _cached_ref_names(repo_id: str) -> list[str]:
    """The refs the local hub cache holds for `repo_id` (main, v1, ...), as huggingface_hub lays them out."""
    refs = default_hf_cache() / f"models--{repo_id.replace('/', '--')}" / "refs"
    return sorted(p.relative_to(refs).as_posix() for p in refs.rglob("*") if p.is_file()) if refs.is_dir() else []


def _ref_names(api: Any, repo_id: str) -> tuple[str, ...]:
    """The repository's branches and tags, for a message; nothing when they cannot be listed."""
    if api is None:
        return ()
    try:
        refs = api.list_repo_refs(repo_id)
    except Exception:  # noqa: BLE001 - only a hint
        return ()
    return tuple(r.name for r in [*refs.branches, *refs.tags])


def _token(token: str | None) -> str | None:
    if token:
        return token
    from huggingface_hub import get_token

    return get_token()


def _api(token: str | None):
    from huggingface_hub import HfApi

    return HfApi(endpoint=_endpoint(), token=token)


def check_repo_id(repo_id: str) -> str:
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as exc:
        raise InvalidArgument(f"{repo_id!r} is not a Hub repository id: {exc}",
                              hint="Write it as ORG/NAME or USER/NAME, e.g. ana/bert-sst2.") from None
    return repo_id


# -- push ---------------------------------------------------------------------------------------------------------
def push(repo: "Repository", ref: str, repo_id: str, *, revision: str | None = None, private: bool = False,
         tag: str | None = None, token: str | None = None, message: str | None = None) -> PushResult:
    """Publish the checkpoint `ref` names (its files plus its model card as README.md) to `repo_id` at
    `revision` (default main) in one commit; record the repository and commit on the checkpoint."""
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete

    check_repo_id(repo_id)
    cid = repo.resolve(ref)
    info, manifest = repo.info(cid), repo.read_manifest(cid)
    token = _token(token)
    if not token:
        raise HubAuthError(
            f"No Hugging Face token to push {info.name} to {'private ' if private else ''}repository {repo_id!r}.",
            hint="Log in with 'hf auth login', or set HF_TOKEN to a token with write access to it.",
        )
    branch = revision or "main"
    api = _api(token)
    with hub_errors(repo_id, token, revision=branch, api=api):
        # private=None lets a new repository take the namespace's default visibility.
        url = str(api.create_repo(repo_id, private=True if private else None, exist_ok=True))
        if branch != "main":
            api.create_branch(repo_id, branch=branch, exist_ok=True)
        head = api.repo_info(repo_id, revision=branch).sha
        remote = set(api.list_repo_files(repo_id, revision=branch))
        card = str(model_card(repo, cid))
        with _load.materialized(repo, manifest) as folder:
            (folder / "README.md").write_text(card, encoding="utf-8")
            local = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
            ops: list[Any] = [CommitOperationAdd(path_in_repo=p, path_or_fileobj=str(folder / p)) for p in local]
            ops += [CommitOperationDelete(path_in_repo=p) for p in sorted(remote - set(local) - _KEEP_REMOTE)]
            commit = api.create_commit(
                repo_id, ops, revision=branch,
                commit_message=message or f"Upload {info.name} ({info.short_id}) with ckptstore",
                commit_description=f"ckptstore checkpoint {info.id}",
            )
        oid = commit.oid
        tags = (_tag(api, repo_id, tag, oid),) if tag else ()
    _record(repo, cid, {"repo_id": repo_id, "revision": branch, "commit": oid, "url": url, "tags": list(tags),
                        **({"endpoint": _endpoint()} if _endpoint() else {})})
    return PushResult(info.name, cid, repo_id, branch, oid, url, oid != head, len(local), tags)


def _tag(api: Any, repo_id: str, tag: str, commit: str) -> str:
    """Point the Hub tag at `commit`, moving it when it pointed elsewhere (as `ckpt tag` moves a store tag)."""
    from huggingface_hub.errors import HfHubHTTPError

    try:
        api.create_tag(repo_id, tag=tag, revision=commit)
    except HfHubHTTPError as exc:
        if exc.response is None or exc.response.status_code != 409:
            raise
        current = {t.name: t.target_commit for t in api.list_repo_refs(repo_id).tags}
        if current.get(tag) != commit:
            api.delete_tag(repo_id, tag=tag)
            api.create_tag(repo_id, tag=tag, revision=commit)
    return tag


def _record(repo: "Repository", cid: str, push_record: dict[str, Any]) -> None:
    """Add the push to the checkpoint's "hub" metadata, one entry per repository and revision."""
    key = f"{push_record['repo_id']}@{push_record['revision']}"
    pushes = repo.info(cid).metadata.get("hub")
    pushes = dict(pushes) if isinstance(pushes, dict) else {}
    old = pushes.get(key)
    if isinstance(old, dict) and old.get("commit") == push_record["commit"]:
        push_record = {**push_record, "tags": sorted({*old.get("tags", []), *push_record["tags"]})}
        if {k: v for k, v in old.items() if k != "pushed_at"} == push_record:
            return  # already recorded: a push that found nothing to do changes nothing
    pushes[key] = {**push_record, "pushed_at": time.time()}
    _annotate.annotate(repo, cid, metrics=None, metadata={"hub": pushes}, message=None)


# -- pull ---------------------------------------------------------------------------------------------------------
def parse_spec(spec: str) -> tuple[str, str]:
    """'ORG/NAME@REV' -> ('ORG/NAME', 'REV'); the revision defaults to main."""
    repo_id, _, rev = spec.partition("@")
    if "@" in spec and not rev:
        raise InvalidArgument(f"{spec!r} names no revision after '@'.", hint="Write REPO_ID@BRANCH, @TAG or @COMMIT.")
    return check_repo_id(repo_id), rev or "main"


def _cached_refs(snapshot: Path, commit: str) -> list[str]:
    """The refs the hub cache records for `commit` (refs/main, refs/v1, ...) beside the snapshot folder."""
    refs_dir = snapshot.parent.parent / "refs"
    if not refs_dir.is_dir():
        return []
    return sorted(p.relative_to(refs_dir).as_posix() for p in refs_dir.rglob("*")
                  if p.is_file() and p.read_text().strip() == commit)


def pull(repo: "Repository", spec: str, *, name: str | None = None, token: str | None = None,
         progress: ImportProgress | None = None) -> PullResult:
    """Bring `REPO_ID[@REV]` into the store as NAME (default ORG--MODEL/rev-<commit[:12]>), its refs as tags."""
    from huggingface_hub import snapshot_download

    repo_id, rev = parse_spec(spec)
    offline = _offline()
    token = _token(token)
    api = None if offline else _api(token)
    cache = default_hf_cache()
    with hub_errors(repo_id, token, revision=rev, api=api):
        path = Path(snapshot_download(repo_id, revision=rev, cache_dir=cache, endpoint=_endpoint(), token=token,
                                      local_files_only=offline))
        commit = path.name
        refs = set(_cached_refs(path, commit))
        if api is not None:
            listed = api.list_repo_refs(repo_id)
            refs |= {r.name for r in [*listed.branches, *listed.tags] if r.target_commit == commit}
    if not _COMMIT.fullmatch(rev):
        refs.add(rev)
    target = name or f"{safe_segment(repo_id.replace('/', '--'))}/rev-{commit[:12]}"
    imp = _Importer(repo, False, progress or _Silent())
    source = {"kind": "hub", "repo_id": repo_id, "revision": commit, "refs": sorted(refs),
              **({"endpoint": _endpoint()} if _endpoint() else {})}
    cid = imp.folder(path, target, metadata={"import": source})
    run = run_of(target)
    for ref in sorted(refs):
        imp.tag(cid, run, safe_segment(ref.replace("/", "-"), fallback="ref"))
    item = imp.items[-1]
    return PullResult(repo_id, rev, commit, target, cid, item.status, offline, tuple(imp.tags), tuple(imp.notes),
                      item.bytes_read, item.bytes_stored, item.reason)
