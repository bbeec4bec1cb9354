"""A model's family tree from lineage (`ckpt ls --family REF`): the base it descends from (the topmost ancestor
still stored, or a deleted one by id) and every checkpoint made from it since, fine-tunes, conversions and the
further checkpoints of each run, in one walk over the index's parent links (no manifest is read)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .._core.family import BASE, CONTINUED, CONVERSION, DELETED, FINE_TUNE, IMPORT, FamilyMember
from .._core.info import CheckpointInfo

if TYPE_CHECKING:
    from .._repo.repository import Repository


def _import_source(info: CheckpointInfo) -> str:
    src = info.metadata.get("import")
    if not isinstance(src, dict):
        return ""
    if src.get("repo_id"):
        rev = str(src.get("revision") or "")[:12]
        return f"{src.get('kind', 'import')} {src['repo_id']}" + (f"@{rev}" if rev else "")
    return f"{src.get('kind', 'import')} {src.get('path', '')}".strip()


def _relation(child: CheckpointInfo, parent: CheckpointInfo | None) -> tuple[str, str]:
    converted = child.metadata.get("converted")
    if isinstance(converted, dict):
        return CONVERSION, str(converted.get("dtype") or converted.get("to") or "")
    if parent is not None and parent.run == child.run:
        return CONTINUED, ""
    return FINE_TUNE, ""


def _root_relation(info: CheckpointInfo) -> tuple[str, str]:
    source = _import_source(info)
    return (IMPORT, source) if source else (BASE, "")


def root_of(infos: dict[str, CheckpointInfo], cid: str) -> str:
    """The topmost ancestor of `cid`: a stored checkpoint, or the id of a deleted one its lineage names."""
    seen = {cid}
    while True:
        parent = infos[cid].parent
        if not parent or parent in seen:
            return cid
        if parent not in infos:
            return parent
        seen.add(parent)
        cid = parent


def family(repo: "Repository", ref: str) -> list[FamilyMember]:
    """The family of the checkpoint `ref` names, in tree order: each member, then what branches from it (one
    level deeper), then the next checkpoint of its own run (at its level)."""
    cid = repo.resolve(ref)
    infos = {c.id: c for c in repo.catalog.infos()}
    children: dict[str, list[CheckpointInfo]] = {}
    for c in infos.values():
        if c.parent:
            children.setdefault(c.parent, []).append(c)
    for kids in children.values():
        kids.sort(key=lambda c: (c.created_at, c.step if c.step is not None else -1, c.name))
    root = root_of(infos, cid)
    out: list[FamilyMember] = []
    stack: list[tuple[str, int, str | None, str, str]] = []
    if root in infos:
        stack.append((root, 0, None, *_root_relation(infos[root])))
    else:
        out.append(FamilyMember(root, None, DELETED, 0))
        for kid in reversed(children.get(root, [])):
            stack.append((kid.id, 1, root, *_relation(kid, None)))
    seen: set[str] = set()
    while stack:
        node, depth, parent, relation, detail = stack.pop()
        if node in seen:  # lineage is acyclic by construction; a hand-made cycle must not loop
            continue
        seen.add(node)
        info = infos[node]
        out.append(FamilyMember(node, info, relation, depth, parent, detail, node == cid))
        kids = [(k, *_relation(k, info)) for k in children.get(node, [])]
        following = next((k for k in kids if k[1] == CONTINUED), None)
        if following is not None:
            stack.append((following[0].id, depth, node, following[1], following[2]))
        for kid, rel, det in reversed([k for k in kids if k is not following]):
            stack.append((kid.id, depth + 1, node, rel, det))
    return out


def base_model(repo: "Repository", info: CheckpointInfo) -> str | None:
    """What the checkpoint was made from, as the Hub's ``base_model`` names it: the nearest ancestor of another
    run (its hub repository when it was imported from the hub cache; its id when deleted), or None."""
    seen = {info.id}
    parent = info.parent
    while parent and parent not in seen:
        seen.add(parent)
        found = repo.catalog.infos(ids=[parent])
        if not found:
            return parent
        if found[0].run != info.run:
            src: Any = found[0].metadata.get("import")
            return src["repo_id"] if isinstance(src, dict) and src.get("repo_id") else found[0].name
        parent = found[0].parent
    return None
