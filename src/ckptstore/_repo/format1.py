"""Reading a format-1 store as it is (when it cannot be upgraded: a read-only mount, another user's store).

Format 1 had no name claims: a manifest present was a checkpoint committed. Its deletions were lines of one log.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import CkptError

if TYPE_CHECKING:
    from .repository import Repository

DELETION_LOG = "checkpoints/deleted.log"


def deletions(repo: "Repository") -> list[tuple[str, str]]:
    """(id, name) of every checkpoint the deletion log lists (a torn last line is skipped)."""
    got = repo.docs.get(DELETION_LOG)
    if got is None:
        return []
    out = []
    for line in got[0].splitlines():
        cid, _, name = line.decode("utf-8", "replace").partition(" ")
        if len(cid) == 64 and name:
            out.append((cid, name))
    return out


def claims(repo: "Repository", known: dict[str, str]) -> dict[str, str]:
    """name -> id, as format 1 knew them: from the manifests (names the catalog already knows are not re-read)."""
    found: dict[str, tuple[float, str]] = {}
    for cid in sorted(repo.manifest_ids()):
        if cid in known:
            found.setdefault(known[cid], (0.0, cid))
            continue
        try:
            manifest = repo.read_manifest(cid)
        except CkptError:
            continue
        if manifest.name not in found or found[manifest.name][0] <= manifest.created_at:
            found[manifest.name] = (manifest.created_at, cid)
    return {name: cid for name, (_, cid) in found.items()}
