"""A small Hugging Face Hub for the tests: the HTTP endpoints huggingface_hub's HfApi.create_repo, create_branch,
create_commit (preupload, the LFS batch API with basic uploads and verify, the NDJSON commit), create_tag /
delete_tag, repo_info, list_repo_tree, list_repo_refs and snapshot_download / hf_hub_download (resolve with ETag,
X-Repo-Commit and Content-Length) call, served by uvicorn on 127.0.0.1. No package implements the Hub's API
locally (hf-local-hub needs a Go server it does not ship), so this one keeps exactly what those calls need.

What is pushed is kept on disk under ROOT (objects/<sha256>, repos/<org>/<name>.json with every commit's tree
and the refs), so a test reads the repository's files back byte for byte. Uploads never take the Xet path: the
server sends no Xet headers and tests set HF_HUB_DISABLE_XET.

`stall_uploads` makes LFS uploads stop after their first chunk and wait (until `release()`), so a test can kill a
client mid-upload; an LFS object becomes visible only once its whole body arrived and its sha256 matched.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as _dt
import hashlib
import json
import os
import socket
import threading
import time
from pathlib import Path
from urllib.parse import unquote

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".onnx")
GITATTRIBUTES = b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n*.bin filter=lfs diff=lfs merge=lfs -text\n"


def git_blob_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _error(status: int, message: str, code: str | None = None) -> JSONResponse:
    headers = {"X-Error-Message": message}
    if code:
        headers["X-Error-Code"] = code
    return JSONResponse({"error": message}, status_code=status, headers=headers)


class Refused(Exception):
    """An endpoint's refusal, answered as the Hub answers it (see `_error`), from however deep it is found."""

    def __init__(self, status: int, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.response = _error(status, message, code)


def _no_revision() -> Refused:
    return Refused(404, "Invalid rev id", "RevisionNotFound")


class HubServer:
    def __init__(self, root: Path, tokens: set[str]) -> None:
        self.root = Path(root)
        (self.root / "objects").mkdir(parents=True, exist_ok=True)
        (self.root / "repos").mkdir(parents=True, exist_ok=True)
        (self.root / "tmp").mkdir(parents=True, exist_ok=True)
        self.tokens = tokens
        self.url = ""
        self.lock = threading.Lock()
        self.stall_uploads = False
        self.fail_uploads: int | None = None  # an HTTP status every LFS upload answers with
        self.upload_started = threading.Event()
        self._released = threading.Event()
        self.requests: list[tuple[str, str]] = []  # (method, path) of every request, for tests
        self.authorizations: list[str] = []  # every Authorization header seen
        self.validated: list[str] = []  # README.md contents checked by /api/validate-yaml
        self.app = Starlette(routes=[
            Route("/api/repos/create", self.create_repo, methods=["POST"]),
            Route("/api/validate-yaml", self.validate_yaml, methods=["POST"]),
            Route("/api/models/{org}/{name}/revision/{rev:path}", self.repo_info, methods=["GET"]),
            Route("/api/models/{org}/{name}/tree/{rest:path}", self.tree, methods=["GET"]),
            Route("/api/models/{org}/{name}/refs", self.refs, methods=["GET"]),
            Route("/api/models/{org}/{name}/preupload/{rev:path}", self.preupload, methods=["POST"]),
            Route("/api/models/{org}/{name}/commit/{rev:path}", self.commit, methods=["POST"]),
            Route("/api/models/{org}/{name}/branch/{branch:path}", self.create_branch, methods=["POST"]),
            Route("/api/models/{org}/{name}/tag/{rev:path}", self.tag, methods=["POST", "DELETE"]),
            Route("/{org}/{name}.git/info/lfs/objects/batch", self.lfs_batch, methods=["POST"]),
            Route("/lfs/upload/{oid}", self.lfs_upload, methods=["PUT"]),
            Route("/lfs/verify/{oid}", self.lfs_verify, methods=["POST"]),
            Route("/{org}/{name}/resolve/{rev}/{path:path}", self.resolve, methods=["GET", "HEAD"]),
        ], exception_handlers={Refused: lambda request, exc: exc.response})

    # -- state on disk -------------------------------------------------------------------------------------------
    def _repo_file(self, repo_id: str) -> Path:
        return self.root / "repos" / f"{repo_id}.json"

    def load(self, repo_id: str) -> dict | None:
        path = self._repo_file(repo_id)
        return json.loads(path.read_text()) if path.is_file() else None

    def _save(self, repo_id: str, state: dict) -> None:
        path = self._repo_file(repo_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=1))
        os.replace(tmp, path)

    def _put_object(self, data: bytes) -> str:
        sha = hashlib.sha256(data).hexdigest()
        path = self.root / "objects" / sha
        if not path.exists():
            path.write_bytes(data)
        return sha

    @staticmethod
    def _resolve_rev(state: dict, rev: str) -> str | None:
        rev = unquote(rev)
        for ref in (f"heads/{rev}", f"tags/{rev}"):
            if ref in state["refs"]:
                return state["refs"][ref]
        return rev if rev in state["commits"] else None

    def _commit_of(self, state: dict, rev: str) -> str:
        """The commit `rev` names; Refused (as the Hub refuses an unknown revision) when it names none."""
        commit = self._resolve_rev(state, rev)
        if commit is None:
            raise _no_revision()
        return commit

    def _new_commit(self, state: dict, parent: str | None, tree: dict, message: str) -> str:
        oid = hashlib.sha1(json.dumps([parent, tree, message, time.time_ns()], sort_keys=True).encode()).hexdigest()
        state["commits"][oid] = {"parent": parent, "tree": tree, "message": message}
        return oid

    # -- helpers for tests ---------------------------------------------------------------------------------------
    def files(self, repo_id: str, revision: str = "main") -> dict[str, bytes]:
        """Every file of the repository at `revision`, read from what the server keeps on disk."""
        state = self.load(repo_id)
        assert state is not None, repo_id
        commit = self._resolve_rev(state, revision)
        tree = state["commits"][commit]["tree"]
        return {p: (self.root / "objects" / e["sha256"]).read_bytes() for p, e in tree.items()}

    def commits(self, repo_id: str) -> dict:
        return (self.load(repo_id) or {}).get("commits", {})

    def head(self, repo_id: str, revision: str = "main") -> str | None:
        state = self.load(repo_id)
        return self._resolve_rev(state, revision) if state else None

    def release(self) -> None:
        self._released.set()

    # -- auth ----------------------------------------------------------------------------------------------------
    def _token_ok(self, request: Request) -> bool | None:
        """True: a known token; False: a token we do not know; None: no token at all."""
        auth = request.headers.get("authorization")
        self.requests.append((request.method, request.url.path))
        if not auth:
            return None
        self.authorizations.append(auth)
        return auth.removeprefix("Bearer ").strip() in self.tokens

    def _read_state(self, request: Request) -> tuple[str, dict]:
        """(repo id, state) of the repository the request's path names; Refused when this caller may not read it."""
        repo_id = f"{request.path_params['org']}/{request.path_params['name']}"
        ok = self._token_ok(request)
        if ok is False:
            raise Refused(401, "Invalid credentials in Authorization header")
        state = self.load(repo_id)
        if state is None or (state["private"] and not ok):
            raise Refused(404, "Repository not found", "RepoNotFound")
        return repo_id, state

    def _write_state(self, request: Request) -> tuple[str, dict]:
        """`_read_state`, for a caller that must also be allowed to write."""
        repo_id, state = self._read_state(request)
        if not self._token_ok_cached(request):
            raise Refused(401, "You must be authenticated to write", None)
        return repo_id, state

    def _token_ok_cached(self, request: Request) -> bool:
        auth = request.headers.get("authorization") or ""
        return auth.removeprefix("Bearer ").strip() in self.tokens

    # -- endpoints -----------------------------------------------------------------------------------------------
    async def create_repo(self, request: Request) -> Response:
        ok = self._token_ok(request)
        if not ok:
            return _error(401, "Invalid username or password." if ok is None else
                          "Invalid credentials in Authorization header")
        body = await request.json()
        repo_id = f"{body['organization']}/{body['name']}" if body.get("organization") else body["name"]
        with self.lock:
            if self.load(repo_id) is not None:
                return JSONResponse({"error": "You already created this model repo", "url": f"{self.url}/{repo_id}"},
                                    status_code=409)
            state = {"private": bool(body.get("private")), "commits": {}, "refs": {},
                     "created": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")}
            sha = self._put_object(GITATTRIBUTES)
            tree = {".gitattributes": {"sha256": sha, "size": len(GITATTRIBUTES), "lfs": False,
                                       "oid": git_blob_oid(GITATTRIBUTES)}}
            state["refs"]["heads/main"] = self._new_commit(state, None, tree, "initial commit")
            self._save(repo_id, state)
        return JSONResponse({"url": f"{self.url}/{repo_id}", "name": repo_id})

    async def validate_yaml(self, request: Request) -> Response:
        from huggingface_hub import ModelCard

        body = await request.json()
        try:
            ModelCard(body["content"])  # huggingface_hub's own parser: front matter and model-index
        except Exception as exc:  # noqa: BLE001 - reported as the Hub reports an invalid card
            return JSONResponse({"error": f"Invalid metadata in README.md: {exc}"}, status_code=400)
        self.validated.append(body["content"])
        return JSONResponse({"errors": [], "warnings": []})

    async def repo_info(self, request: Request) -> Response:
        repo_id, state = self._read_state(request)
        commit = self._commit_of(state, request.path_params["rev"])
        tree = state["commits"][commit]["tree"]
        return JSONResponse({"id": repo_id, "modelId": repo_id, "sha": commit, "private": state["private"],
                             "siblings": [{"rfilename": p} for p in sorted(tree)], "tags": [], "downloads": 0,
                             "likes": 0, "createdAt": state["created"], "lastModified": state["created"]})

    async def tree(self, request: Request) -> Response:
        _, state = self._read_state(request)
        rev, _, prefix = request.path_params["rest"].partition("/")
        commit = self._commit_of(state, rev)
        out = []
        for path, e in sorted(state["commits"][commit]["tree"].items()):
            if prefix and not path.startswith(prefix.rstrip("/") + "/"):
                continue
            entry = {"type": "file", "oid": e["oid"], "size": e["size"], "path": path}
            if e["lfs"]:
                entry["lfs"] = {"oid": e["sha256"], "size": e["size"], "pointerSize": 134}
            out.append(entry)
        return JSONResponse(out)

    async def refs(self, request: Request) -> Response:
        _, state = self._read_state(request)

        def listed(kind: str) -> list[dict]:
            return [{"name": r.split("/", 1)[1], "ref": f"refs/{r}", "targetCommit": c}
                    for r, c in sorted(state["refs"].items()) if r.startswith(kind + "/")]

        return JSONResponse({"branches": listed("heads"), "tags": listed("tags"), "converts": []})

    async def preupload(self, request: Request) -> Response:
        _, state = self._write_state(request)
        commit = self._commit_of(state, request.path_params["rev"])
        tree = state["commits"][commit]["tree"]
        files = []
        for f in (await request.json())["files"]:
            lfs = f["path"].endswith(LFS_SUFFIXES) or f["size"] > 1_000_000
            entry = {"path": f["path"], "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False}
            have = tree.get(f["path"])
            if have is not None:  # what huggingface_hub compares to skip unchanged files
                entry["oid"] = have["sha256"] if lfs else have["oid"]
            files.append(entry)
        return JSONResponse({"files": files, "commitOid": commit})

    async def lfs_batch(self, request: Request) -> Response:
        _, state = self._write_state(request)
        objects = []
        for obj in (await request.json())["objects"]:
            item = {"oid": obj["oid"], "size": obj["size"], "authenticated": True}
            if not (self.root / "objects" / obj["oid"]).exists():
                item["actions"] = {"upload": {"href": f"{self.url}/lfs/upload/{obj['oid']}"},
                                   "verify": {"href": f"{self.url}/lfs/verify/{obj['oid']}"}}
            objects.append(item)
        return JSONResponse({"transfer": "basic", "objects": objects, "hash_algo": "sha256"},
                            media_type="application/vnd.git-lfs+json")

    async def lfs_upload(self, request: Request) -> Response:
        oid = request.path_params["oid"]
        if self.fail_uploads:
            return _error(self.fail_uploads, "upload refused by the test")
        tmp = self.root / "tmp" / f"{oid}.{time.time_ns()}"
        digest = hashlib.sha256()
        try:
            with open(tmp, "wb") as f:
                async for chunk in request.stream():
                    f.write(chunk)
                    digest.update(chunk)
                    if self.stall_uploads:
                        self.upload_started.set()
                        deadline = time.monotonic() + 60
                        while not self._released.is_set() and time.monotonic() < deadline:
                            await asyncio.sleep(0.05)
                        return _error(500, "upload stalled by the test")
            if digest.hexdigest() != oid:
                return _error(400, "sha256 mismatch")
            os.replace(tmp, self.root / "objects" / oid)
        finally:
            tmp.unlink(missing_ok=True)
        return Response(status_code=200)

    async def lfs_verify(self, request: Request) -> Response:
        body = await request.json()
        path = self.root / "objects" / request.path_params["oid"]
        if not path.exists() or path.stat().st_size != body["size"]:
            return _error(404, "object not found")
        return JSONResponse({"ok": True})

    async def commit(self, request: Request) -> Response:
        repo_id, state = self._write_state(request)
        branch = unquote(request.path_params["rev"])
        lines = [json.loads(line) for line in (await request.body()).splitlines() if line.strip()]
        with self.lock:
            state = self.load(repo_id)
            parent = state["refs"].get(f"heads/{branch}")
            if parent is None:
                raise _no_revision()
            tree = dict(state["commits"][parent]["tree"])
            message = ""
            for item in lines:
                key, value = item["key"], item["value"]
                if key == "header":
                    message = value["summary"]
                elif key == "file":
                    data = base64.b64decode(value["content"])
                    tree[value["path"]] = {"sha256": self._put_object(data), "size": len(data), "lfs": False,
                                           "oid": git_blob_oid(data)}
                elif key == "lfsFile":
                    obj = self.root / "objects" / value["oid"]
                    if not obj.exists():
                        return _error(422, f"LFS object {value['oid']} of {value['path']} was never uploaded")
                    pointer = (f"version https://git-lfs.github.com/spec/v1\noid sha256:{value['oid']}\n"
                               f"size {obj.stat().st_size}\n").encode()
                    tree[value["path"]] = {"sha256": value["oid"], "size": obj.stat().st_size, "lfs": True,
                                           "oid": git_blob_oid(pointer)}
                elif key == "deletedFile":
                    tree.pop(value["path"], None)
                elif key == "deletedFolder":
                    tree = {p: e for p, e in tree.items() if not p.startswith(value["path"].rstrip("/") + "/")}
            oid = self._new_commit(state, parent, tree, message)
            state["refs"][f"heads/{branch}"] = oid
            self._save(repo_id, state)
        return JSONResponse({"commitUrl": f"{self.url}/{repo_id}/commit/{oid}", "commitOid": oid,
                             "pullRequestUrl": None})

    async def create_branch(self, request: Request) -> Response:
        repo_id, state = self._write_state(request)
        branch = unquote(request.path_params["branch"])
        body = await request.json() if await request.body() else {}
        with self.lock:
            state = self.load(repo_id)
            if f"heads/{branch}" in state["refs"]:
                return _error(409, "Reference already exists")
            start = self._resolve_rev(state, body.get("startingPoint") or "main")
            state["refs"][f"heads/{branch}"] = start
            self._save(repo_id, state)
        return JSONResponse({})

    async def tag(self, request: Request) -> Response:
        repo_id, state = self._write_state(request)
        with self.lock:
            state = self.load(repo_id)
            if request.method == "DELETE":
                state["refs"].pop(f"tags/{unquote(request.path_params['rev'])}", None)
            else:
                tag = (await request.json())["tag"]
                if f"tags/{tag}" in state["refs"]:
                    return _error(409, "Tag already exists")
                commit = self._commit_of(state, request.path_params["rev"])
                state["refs"][f"tags/{tag}"] = commit
            self._save(repo_id, state)
        return JSONResponse({})

    async def resolve(self, request: Request) -> Response:
        _, state = self._read_state(request)
        commit = self._commit_of(state, request.path_params["rev"])
        entry = state["commits"][commit]["tree"].get(unquote(request.path_params["path"]))
        if entry is None:
            return _error(404, "Entry not found", "EntryNotFound")
        etag = entry["sha256"] if entry["lfs"] else entry["oid"]
        headers = {"X-Repo-Commit": commit, "ETag": f'"{etag}"', "Content-Length": str(entry["size"]),
                   "Accept-Ranges": "bytes"}
        if entry["lfs"]:
            headers.update({"X-Linked-Etag": f'"{etag}"', "X-Linked-Size": str(entry["size"])})
        if request.method == "HEAD":
            return Response(status_code=200, headers=headers)
        path = self.root / "objects" / entry["sha256"]

        def chunks():
            with open(path, "rb") as f:
                while block := f.read(1 << 20):
                    yield block

        return StreamingResponse(chunks(), headers=headers, media_type="application/octet-stream")


class RunningHub:
    """The server running in a thread of the test process (uvicorn on a free 127.0.0.1 port)."""

    def __init__(self, root: Path, tokens: set[str]) -> None:
        import uvicorn

        self.hub = HubServer(root, tokens)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.hub.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        config = uvicorn.Config(self.hub.app, log_level="error", lifespan="off", timeout_graceful_shutdown=2)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> HubServer:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the test Hub server did not start")
            time.sleep(0.02)
        return self.hub

    def __exit__(self, *exc: object) -> None:
        self.hub.release()
        self.server.should_exit = True
        self.thread.join(10)
        self.sock.close()


# -- fixtures (imported by the test modules that use them) --------------------------------------------------------
import pytest  # noqa: E402

TOKEN = "hf_testtoken_5f3a9c0e1d"
# huggingface_hub 2.4's LFS upload (_upload_single_part) passes data= to httpx2, which deprecates it: not ours.
UPLOAD_WARNING = "ignore:Use 'content=<...>' to upload raw bytes/text content.:DeprecationWarning"


@pytest.fixture
def hub(tmp_path):
    """A Hub-compatible server on 127.0.0.1 keeping what is pushed under tmp_path/hub-server."""
    with RunningHub(tmp_path / "hub-server", {TOKEN}) as server:
        yield server


@pytest.fixture
def online(hub, tmp_path, monkeypatch):
    """This process talks to `hub` as huggingface_hub would to the real Hub: HF_ENDPOINT, a token in HF_TOKEN,
    a hub cache of the test's own, offline mode off (huggingface_hub read HF_HUB_OFFLINE when it was imported, so
    its constant is set too), and no Xet (the test server speaks the LFS protocol)."""
    from huggingface_hub import constants

    env = {"HF_ENDPOINT": hub.url, "HF_TOKEN": TOKEN, "HF_HUB_OFFLINE": "0", "TRANSFORMERS_OFFLINE": "0",
           "HF_HUB_DISABLE_XET": "1", "HF_HUB_CACHE": str(tmp_path / "hub-cache"), "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    return env
