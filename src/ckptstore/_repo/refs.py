"""Tags: documents ``refs/tags/<run>/<tag>`` holding a checkpoint id, moved by compare-and-swap."""

from __future__ import annotations

from .._backend.protocols import Documents
from .._core.failpoints import failpoint
from .._core.hashing import is_digest
from .._core.names import check_run, check_tag
from ..errors import InvalidName
from .documents import TAGS, tag_key, upsert


def _parse(data: bytes) -> str | None:
    text = data.decode("ascii", "replace").strip()
    return text if is_digest(text) else None


class Refs:
    def __init__(self, docs: Documents) -> None:
        self.docs = docs

    def get(self, run: str, tag: str) -> str | None:
        # The names become keys (and, locally, path segments): '../x:t' must not reach a file outside the store.
        got = self.docs.get(tag_key(run, tag))
        return _parse(got[0]) if got else None

    def set(self, run: str, tag: str, checkpoint_id: str) -> None:
        failpoint("ref.write")
        upsert(self.docs, tag_key(run, tag), (checkpoint_id + "\n").encode())

    def remove(self, run: str, tag: str) -> bool:
        return self.docs.remove(tag_key(run, tag))

    def all(self) -> dict[tuple[str, str], str]:
        out: dict[tuple[str, str], str] = {}
        for key in self.docs.list(TAGS):
            parts = key[len(TAGS):].split("/")
            if len(parts) != 2:
                continue
            run, tag = parts
            try:  # a stray file the store cannot have written (its name is not a run and a tag) is no tag
                check_run(run)
                check_tag(tag)
            except InvalidName:
                continue
            cid = self.get(run, tag)
            if cid:
                out[(run, tag)] = cid
        return out
