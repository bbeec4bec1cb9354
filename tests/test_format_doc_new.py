"""docs/format.md held to the code: its layout names every folder a store has, the format-1 upgrade it describes
happens (and is redone after a kill at each of its steps), a read-only format-1 store is read as it is, and no
comment of the repository sends a reader to a file outside it."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from ckptstore import Store

from conftest import REPO, run_ckpt_subprocess
from mounts import mount_tmpfs, remount_read_only, unmount

FORMAT_MD = REPO / "docs" / "format.md"


# -- the document itself ------------------------------------------------------------------------------------------
def test_docs_carry_no_merge_conflict_markers():
    for path in (FORMAT_MD, REPO / "README.md"):
        text = path.read_text()
        assert not re.search(r"^(<<<<<<<|=======|>>>>>>>)( |$)", text, re.M), path


def test_format_md_layout_names_every_folder_and_document_kind_of_a_store():
    from ckptstore._backend.local import LAYOUT
    from ckptstore._repo import annotations
    from ckptstore._repo import documents as keys
    from ckptstore._repo import format1

    text = FORMAT_MD.read_text()
    layout = text.split("## Layout", 1)[1].split("```", 2)[1]
    entries = {line.split()[0] for line in layout.splitlines()[2:] if line.startswith("  ") and line.split()}
    for name in LAYOUT:
        if name.startswith("index.sqlite-"):
            continue  # SQLite's own companions of index.sqlite
        assert any(e == name or e.startswith(name + "/") for e in entries), f"{name!r} missing from the layout"
    for prefix in (keys.STORE_JSON, keys.MANIFESTS, keys.NAMES, keys.TAGS, keys.SETTINGS, keys.DELETED,
                   annotations.PREFIX):
        assert any(e.startswith(prefix) for e in entries), f"{prefix!r} missing from the layout"
    assert format1.DELETION_LOG in text.split("## Format 1", 1)[1]


def test_no_comment_cites_a_file_outside_the_repository():
    # Spelt in pieces so that this file does not match itself.
    outside = ("DESIGN" + ".md", "DESIGN" + " principle", "STYLE" + ".md", "../" + "shared", "/" + "work/")
    found = []
    for top in ("src", "tests", "bench", "demo"):
        for path in sorted((REPO / top).rglob("*.py")):
            for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                if any(word in line for word in outside):
                    found.append(f"{path.relative_to(REPO)}:{n}: {line.strip()}")
    assert not found, "\n".join(found)


# -- format 1 and its upgrade, as docs/format.md describes them ---------------------------------------------------
def _make_store(root: Path) -> dict[str, str]:
    """A format-2 store with three checkpoints, one of them deleted; returns name -> id of all three."""
    with Store.init(root) as store:
        for i in (1, 2, 3):
            store.save(None, f"run/step-{i}", extra_files={"a.bin": bytes([i]) * 100}, tags=[f"v{i}"])
        ids = {c.name: c.id for c in store.list()}
        store.delete("run/step-2")
    return ids


def _as_format1(root: Path) -> None:
    """Rewrite the store as format 1 wrote it: no name claims, deletions as lines of checkpoints/deleted.log."""
    lines = [f"{p.name} {p.read_text().strip()}\n" for p in sorted((root / "deleted").iterdir())]
    shutil.rmtree(root / "names")
    shutil.rmtree(root / "deleted")
    (root / "checkpoints" / "deleted.log").write_text("".join(lines))
    config = json.loads((root / "store.json").read_text())
    (root / "store.json").write_text(json.dumps({**config, "format": 1}, indent=2, sort_keys=True) + "\n")


def _format(root: Path) -> int:
    return json.loads((root / "store.json").read_text())["format"]


def _check_upgraded(root: Path, ids: dict[str, str]) -> None:
    """Open the store as a writer would, then check it is the format-2 store docs/format.md describes."""
    Store.open(root).close()
    assert _format(root) == 2
    assert not (root / "checkpoints" / "deleted.log").exists()
    for name in ("run/step-1", "run/step-3"):
        claim = root / "names" / "run" / name.replace("/", "~")
        assert claim.read_text() == ids[name] + "\n"
    assert sorted(p.name for p in (root / "names" / "run").iterdir()) == ["run~step-1", "run~step-3"]
    assert (root / "deleted" / ids["run/step-2"]).read_text() == "run/step-2\n"
    with Store.open(root) as store:
        assert sorted(c.name for c in store.list()) == ["run/step-1", "run/step-3"]
        assert store.verify().ok
        assert store.gc().manifests == ()  # every manifest left is claimed
        store.save(None, "run/step-2", extra_files={"a.bin": b"again"})  # the deleted name is free
        assert sorted(c.name for c in store.list()) == ["run/step-1", "run/step-2", "run/step-3"]


def test_a_format1_store_is_upgraded_in_place_on_its_first_writable_open(tmp_path):
    root = tmp_path / "store"
    ids = _make_store(root)
    _as_format1(root)
    _check_upgraded(root, ids)


@pytest.mark.parametrize("step", ["upgrade.claim:kill", "upgrade.claim:kill@2", "upgrade.config:kill",
                                  "write.rename:kill"])
def test_an_upgrade_killed_at_any_step_leaves_format_1_and_is_redone_by_the_next_open(tmp_path, step):
    root = tmp_path / "store"
    ids = _make_store(root)
    _as_format1(root)
    proc = run_ckpt_subprocess("ls", "--store", root, env={"CKPT_FAILPOINT": step})
    assert proc.returncode == -9, proc.stderr
    assert _format(root) == 1  # store.json is written last: until then the store is format 1
    assert (root / "checkpoints" / "deleted.log").exists()
    _check_upgraded(root, ids)


def test_an_upgrade_killed_after_store_json_leaves_a_log_that_format_2_ignores(tmp_path):
    root = tmp_path / "store"
    ids = _make_store(root)
    _as_format1(root)
    # The log's removal is the one document removal after store.json (a key under checkpoints/).
    proc = run_ckpt_subprocess("ls", "--store", root, env={"CKPT_FAILPOINT": "manifest.remove:kill"})
    assert proc.returncode == -9, proc.stderr
    assert _format(root) == 2
    assert (root / "checkpoints" / "deleted.log").exists()
    with Store.open(root) as store:
        assert sorted(c.name for c in store.list()) == ["run/step-1", "run/step-3"]
        assert store.verify().ok
        plan = store.gc()
    assert plan.manifests == () and (root / "checkpoints" / "deleted.log").exists()
    assert (root / "deleted" / ids["run/step-2"]).is_file()


def test_a_read_only_format1_store_is_read_as_it_is(tmp_path, monkeypatch, ckpt):
    mnt = tmp_path / "ro-mount"
    mount_tmpfs(mnt)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    try:
        root = mnt / "store"
        ids = _make_store(root)
        _as_format1(root)
        (root / "index.sqlite").unlink()  # the reader builds its own index from the format-1 files
        remount_read_only(mnt)
        r = ckpt("ls", "--json", "--store", root)
        assert r.code == 0, r.err
        listed = {c["name"]: c["id"] for c in json.loads(r.out)}
        assert listed == {"run/step-1": ids["run/step-1"], "run/step-3": ids["run/step-3"]}
        assert ckpt("verify", "--store", root).code == 0
        assert _format(root) == 1 and not (root / "names").exists()
    finally:
        unmount(mnt)
