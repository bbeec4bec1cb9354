"""Random bit flips, truncations and deletions of blobs and manifests: `verify` reports every one, naming the
checkpoint and the file; `load` and `export` of a damaged checkpoint fail naming the tensor or file. 0 silent.
Figure (long mode): >= 1000 damages, all reported.
"""

from __future__ import annotations

import random
from collections import defaultdict
from pathlib import Path

import pytest

from ckptstore import CorruptObject, Store
from ckptstore.errors import CheckpointNotFound, CkptError

NAMES = ("r/step-1", "r/step-2", "r/step-3", "other/step-1")


@pytest.fixture(scope="session")
def damaged_base(fast_tmp, sources) -> Path:
    root = fast_tmp / "corruption-base"
    with Store.init(root, chunk_bytes=4096) as store:
        for i, name in enumerate(NAMES):
            store.save(sources[i], name)
        assert store.verify().ok
    return root


def _owners(store: Store) -> tuple[dict[str, list[tuple[str, str, frozenset[str]]]], dict[str, str]]:
    """blob digest -> [(checkpoint, file, the tensors whose data it holds)], and manifest id -> checkpoint name.
    Dedup works inside a file too: two all-zero biases of one size are one blob."""
    owners: dict[str, list[tuple[str, str, frozenset[str]]]] = defaultdict(list)
    ids = {}
    for name in NAMES:
        manifest = store.manifest(name)
        ids[store.resolve(name)] = name
        for f in manifest.files:
            tensors_of: dict[str, set[str]] = defaultdict(set)
            if f.is_safetensors:
                for tname, parts in f.tensor_blobs().items():
                    for blob, _ in parts:
                        tensors_of[blob.digest].add(tname)
            for digest in dict.fromkeys(b.digest for b in f.blobs):
                owners[digest].append((name, f.path, frozenset(tensors_of.get(digest, ()))))
    return owners, ids


def _damage(path: Path, kind: str, rng: random.Random) -> bytes:
    """Damage the file; return its original bytes for the restore."""
    data = path.read_bytes()
    if kind == "flip":
        pos = rng.randrange(len(data))
        path.write_bytes(data[:pos] + bytes([data[pos] ^ (1 << rng.randrange(8))]) + data[pos + 1 :])
    elif kind == "truncate":
        path.write_bytes(data[: rng.randrange(len(data))])
    else:
        path.unlink()
    return data


def test_every_damage_is_reported_never_silent(damaged_base, scale, figure, tmp_path):
    rng = random.Random(3)
    with Store.open(damaged_base) as store:
        owners, ids = _owners(store)
        weights = {name: store.manifest(name).file("model.safetensors") for name in NAMES}
    blobs = sorted(owners)
    trials = scale.pick(60, 1200)
    counts: dict[str, int] = defaultdict(int)
    silent: list[str] = []
    load_checked = 0
    for i in range(trials):
        target_manifest = rng.random() < 0.2
        kind = rng.choice(["flip", "truncate", "delete"])
        if target_manifest:
            cid = rng.choice(sorted(ids))
            path = damaged_base / "checkpoints" / f"{cid}.json"
            affected = {(ids[cid], None)}
        else:
            digest = rng.choice(blobs)
            path = damaged_base / "objects" / digest[:2] / digest[2:]
            affected = {(name, file) for name, file, _ in owners[digest]}
        if kind != "delete" and path.stat().st_size == 0:
            kind = "delete"
        what = f"{kind} of {'manifest' if target_manifest else 'blob'} {path.name[:12]} ({sorted(affected)})"
        original = _damage(path, kind, rng)
        try:
            with Store.open(damaged_base) as store:
                report = store.verify(deep=True)
                for name, file in affected:
                    # A damaged manifest names its checkpoint too (the index remembers the name it had).
                    hit = any(
                        (p.checkpoint == name and p.file == file) if file
                        else repr(name) in str(p) or p.checkpoint == name
                        for p in report.problems
                    )
                    if not hit:
                        silent.append(f"{what}: verify did not name {name} {file or ''}; it said {report.problems}")
                if target_manifest:
                    name = ids[cid]
                    try:
                        store.load_state_dict(name)
                    except (CorruptObject, CheckpointNotFound) as exc:
                        if kind != "delete" and name not in str(exc) and cid[:12] not in str(exc):
                            silent.append(f"{what}: load failed without naming the checkpoint: {exc}")
                    else:
                        silent.append(f"{what}: load of {name} succeeded")
                else:
                    for name, file, tensors in owners[digest]:
                        if not tensors:
                            continue  # the header or a whole-file blob: what load maps is intact
                        load_checked += 1
                        with pytest.raises(CkptError) as exc_info:
                            store.load_state_dict(name, verify=True)
                        if not any(repr(t) in str(exc_info.value) for t in tensors):
                            silent.append(f"{what}: load error names none of {sorted(tensors)}: {exc_info.value}")
                        if kind != "flip":
                            # Size damage is caught even without re-hashing (the default, zero-copy load).
                            with pytest.raises(CkptError):
                                store.load_state_dict(name)
                    name, file, _ = owners[digest][0]
                    # Export re-hashes on request; size damage it finds without (one stat per blob).
                    for verify in (True, False) if kind != "flip" else (True,):
                        with pytest.raises(CkptError) as exc_info:
                            store.export(name, tmp_path / f"x{i}", verify=verify)
                        assert not (tmp_path / f"x{i}").exists(), "a failed export left a partial folder"
                        if not any(f in str(exc_info.value) for n, f, _ in owners[digest] if n == name):
                            silent.append(f"{what}: export error does not name the file: {exc_info.value}")
        finally:
            path.write_bytes(original)
        counts[kind + (" manifest" if target_manifest else " blob")] += 1
    with Store.open(damaged_base) as store:
        assert store.verify().ok, "the restores left the store damaged"
    figure(
        "corruption",
        f"{trials} damages ({', '.join(f'{v} {k}' for k, v in sorted(counts.items()))}); "
        f"{trials - len(silent)} reported by verify naming checkpoint and file, {load_checked} loads of damaged "
        f"weights failed naming the tensor; {len(silent)} silent",
    )
    assert not silent, "\n".join(silent[:10])
    assert all(weights.values())  # every checkpoint has weights whose damage load must catch
