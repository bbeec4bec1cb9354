"""Hostile input: pickles that try to run code, fuzzed safetensors headers, and names or paths that try to reach
outside the store. Each is refused with a typed error, runs nothing (a canary is never created), stores nothing
and writes nothing outside the store."""

from __future__ import annotations

import io
import json
import os
import pickle
import random
import shutil
import struct
import tracemalloc
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from ckptstore import InvalidCheckpoint, InvalidName, InvalidSafetensors, Store, UnsafePickle
from ckptstore.errors import CheckpointNotFound, CkptError, UsageError

# The payload class and the torch.save framing of the shared pickle-safety tests (tests/test_pickle_safety.py).
from test_pickle_safety import _Mkdir, _torch_zip  # noqa: E402

# -- pickles -----------------------------------------------------------------------------------------------------


def _sbu(text: str) -> bytes:
    data = text.encode()
    return b"\x8c" + bytes([len(data)]) + data  # SHORT_BINUNICODE


def _dotted_stack_global(canary: str) -> bytes:
    # Protocol 4 resolves a dotted qualname by getattr: ('torch', 'serialization.os.mkdir') is os.mkdir reached
    # through an allowed-looking module. A name check on the module alone lets it through.
    return b"\x80\x04" + _sbu("torch") + _sbu("serialization.os.mkdir") + b"\x93" + _sbu(canary) + b"\x85R."


def _load_from_bytes(canary: str) -> bytes:
    # torch.storage._load_from_bytes(b) is torch.load(b, weights_only=False): a nested pickle runs unrestricted.
    inner = io.BytesIO()
    torch.save(_Mkdir(canary), inner)
    blob = inner.getvalue()
    return b"\x80\x03ctorch.storage\n_load_from_bytes\nB" + struct.pack("<I", len(blob)) + blob + b"\x85R."


def _numpy_object_array(canary: str) -> bytes:
    # numpy arrays of dtype object pickle their elements: an allowed-looking array carrying a payload.
    import numpy as np

    arr = np.empty(1, dtype=object)
    arr[0] = _Mkdir(canary)
    return pickle.dumps({"w": arr}, protocol=2)


SHAPES = {
    "dotted-stack-global": _dotted_stack_global,
    "torch-load-from-bytes": _load_from_bytes,
    "numpy-object-array": _numpy_object_array,
    "reduce-os-mkdir": lambda c: pickle.dumps({"w": _Mkdir(c)}, protocol=2),
}


@pytest.fixture(params=sorted(SHAPES))
def hostile_bin(request, tmp_path) -> tuple[bytes, Path]:
    """(a torch zip whose data.pkl runs os.mkdir(canary) when unpickled unrestricted, the canary path)."""
    control = tmp_path / "control-canary"
    pickle.loads(SHAPES[request.param](str(control)))
    assert control.is_dir(), "the payload does not work: the test could not fail"
    canary = tmp_path / "canary"
    return _torch_zip(SHAPES[request.param](str(canary))), canary


def _legacy_folder(path: Path, weights: bytes) -> Path:
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({"model_type": "bert", "architectures": ["BertModel"],
                                                  "hidden_size": 32, "num_hidden_layers": 1,
                                                  "num_attention_heads": 2, "intermediate_size": 37,
                                                  "vocab_size": 99}))
    (path / "pytorch_model.bin").write_bytes(weights)
    return path


def test_hostile_weight_pickle_never_runs_on_any_path(hostile_bin, store, tmp_path, tree_sha256):
    """Stored verbatim by save (never opened), then refused by every path that reads weights: import, convert,
    load (through from_pretrained). verify, export and show never open it."""
    weights, canary = hostile_bin
    folder = _legacy_folder(tmp_path / "evil", weights)
    with pytest.raises(UnsafePickle):
        store.import_folder(folder)
    assert not canary.exists()
    info = store.save(folder, "evil/v1")  # a plain save stores files as they are, unread
    assert store.verify().ok
    store.export("evil/v1", tmp_path / "out", verify=True)
    assert tree_sha256(tmp_path / "out") == tree_sha256(folder)
    store.show("evil/v1")
    with pytest.raises(UnsafePickle):
        store.convert("evil/v1", dtype="bf16")
    with pytest.raises(Exception) as exc_info:  # noqa: PT011 - transformers' own refusal, whatever its type
        store.load(info.name)
    assert "weights_only" in str(exc_info.value) or isinstance(exc_info.value, CkptError), exc_info.value
    assert not canary.exists()
    assert [c.name for c in store.list()] == ["evil/v1"]


def test_training_state_pickles_are_never_opened(hostile_bin, store, tmp_path, tiny_bert_dir, tree_sha256):
    weights, canary = hostile_bin
    folder = tmp_path / "ckpt"
    folder.mkdir()
    for p in tiny_bert_dir.iterdir():
        (folder / p.name).write_bytes(p.read_bytes())
    for name in ("optimizer.pt", "scheduler.pt", "training_args.bin", "rng_state.pth"):
        (folder / name).write_bytes(weights)
    store.save(folder, "run/step-1")
    report = store.import_folder(folder, run="imported")  # import too stores them verbatim
    assert report is not None
    assert store.verify().ok
    store.export("run/step-1", tmp_path / "out")
    assert tree_sha256(tmp_path / "out") == tree_sha256(folder)
    store.load("run/step-1")
    assert not canary.exists()


# -- safetensors headers -----------------------------------------------------------------------------------------


def _valid_file(path: Path) -> bytes:
    tensors = {
        "a": torch.arange(6, dtype=torch.float32).reshape(2, 3),
        "b": torch.ones(4, dtype=torch.bfloat16),
        "c": torch.zeros(0, 3, dtype=torch.int64),
        "d": torch.tensor([True, False]),
    }
    save_file(tensors, str(path), metadata={"format": "pt"})
    return path.read_bytes()


def _with_header(header: dict | bytes, data: bytes, *, length: int | None = None) -> bytes:
    body = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(body) if length is None else length) + body + data


HANDMADE = {
    "overlapping offsets": lambda d: _with_header(
        {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
         "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, bytes(12)),
    "offset past the end": lambda d: _with_header({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}},
                                                  bytes(8)),
    "offset near 2**64": lambda d: _with_header(
        {"a": {"dtype": "U8", "shape": [16], "data_offsets": [2**64 - 16, 2**64]}}, bytes(16)),
    "huge header length": lambda d: struct.pack("<Q", 2**63) + b"{}",
    "header length just under the limit": lambda d: struct.pack("<Q", 99_999_999) + b"{" + bytes(100),
    "truncated data": lambda d: d[:-3],
    "truncated header": lambda d: d[:20],
    "trailing bytes": lambda d: d + b"\x00" * 8,
    "dtype/shape size mismatch": lambda d: _with_header({"a": {"dtype": "F64", "shape": [2], "data_offsets": [0, 8]}},
                                                        bytes(8)),
    "shape overflow": lambda d: _with_header(
        {"a": {"dtype": "F32", "shape": [2**40, 2**40], "data_offsets": [0, 0]}}, b""),
    "negative dim": lambda d: _with_header({"a": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 0]}}, b""),
    "unknown dtype": lambda d: _with_header({"a": {"dtype": "X9", "shape": [1], "data_offsets": [0, 1]}}, b"\x00"),
    "gap between tensors": lambda d: _with_header(
        {"a": {"dtype": "U8", "shape": [2], "data_offsets": [0, 2]},
         "b": {"dtype": "U8", "shape": [2], "data_offsets": [4, 6]}}, bytes(6)),
    "not json": lambda d: _with_header(b"not json at all!", b""),
    "deep nesting": lambda d: _with_header(b"{\"a\":" + b"[" * 100_000 + b"]" * 100_000 + b"}", b""),
    "duplicate key": lambda d: _with_header(
        b'{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}',
        b"\x00"),
    "empty file": lambda d: b"",
    "zero header length": lambda d: struct.pack("<Q", 0),
}


def _stored_files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and "index.sqlite" not in p.name}


def _save_hostile(store: Store, folder: Path, data: bytes, name: str):
    (folder / "model.safetensors").write_bytes(data)
    return store.save(folder, name)


@pytest.fixture
def st_folder(tmp_path) -> tuple[Path, bytes]:
    folder = tmp_path / "st"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "bert"}')
    return folder, _valid_file(tmp_path / "valid.safetensors")


@pytest.mark.parametrize("case", sorted(HANDMADE))
def test_crafted_safetensors_header_is_refused_before_anything_is_stored(case, st_folder, store):
    folder, valid = st_folder
    before = _stored_files(store.root)
    tracemalloc.start()
    try:
        with pytest.raises(InvalidSafetensors) as exc_info:
            _save_hostile(store, folder, HANDMADE[case](valid), "h/x")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert "model.safetensors" in str(exc_info.value)
    assert peak < 8 << 20, f"{case}: refusing it took {peak} bytes"  # never what the header claims
    assert _stored_files(store.root) == before
    assert store.list() == []


def test_fuzzed_safetensors_headers(st_folder, store, scale, figure, tmp_path, tree_sha256):
    """Random byte edits of a valid header: every variant is either refused with InvalidSafetensors and nothing
    stored, or accepted because it still is a valid file, which safetensors itself opens and which exports
    byte-exact. Nothing else (no other exception, no crash) ever."""
    from safetensors import safe_open

    folder, valid = st_folder
    (header_len,) = struct.unpack("<Q", valid[:8])
    rng = random.Random(1)
    refused = accepted = 0
    trials = scale.pick(150, 3000)
    for i in range(trials):
        data = bytearray(valid)
        for _ in range(rng.randint(1, 4)):
            pos = rng.randrange(8 + header_len)  # the length prefix and the JSON, where a parser can go wrong
            data[pos] = rng.choice([rng.randrange(256), ord(rng.choice('{}[]",:0123456789-e'))])
        before = _stored_files(store.root)
        try:
            info = _save_hostile(store, folder, bytes(data), f"fuzz/n-{i}")
        except InvalidSafetensors:
            refused += 1
            assert _stored_files(store.root) == before, f"trial {i}: a refused file left something in the store"
            continue
        except InvalidCheckpoint as exc:  # e.g. a name the store refuses: still typed, still nothing stored
            refused += 1
            assert _stored_files(store.root) == before, f"trial {i}: {exc}"
            continue
        accepted += 1
        with safe_open(folder / "model.safetensors", framework="pt") as f:  # what we accept, safetensors reads
            list(f.keys())
        out = tmp_path / f"out-{i}"
        store.export(info.name, out)
        assert tree_sha256(out) == tree_sha256(folder)
    figure("fuzzed safetensors headers", f"{trials} variants: {refused} refused with a typed error and nothing"
           f" stored, {accepted} still valid, accepted and exported byte-exact; 0 other outcomes")


# -- names and paths ---------------------------------------------------------------------------------------------

BAD_NAMES = ["../x", "run/../../x", "/abs/x", "\\\\server\\share", "a\\b", "a\x00b", "C:x", "", ".", "run/./x",
             "run//x", "run/", "a b", "a\nb"]


@pytest.mark.parametrize("bad", BAD_NAMES)
def test_bad_names_are_refused_and_nothing_is_written(bad, store, tiny_bert_dir, tmp_path):
    outside = {p.name for p in tmp_path.iterdir()}
    before = _stored_files(store.root)
    with pytest.raises(InvalidName):
        store.save(tiny_bert_dir, bad)
    store.save(tiny_bert_dir, "ok/step-1")
    # Typed refusals: a usage error (bad name, not RUN:TAG) or an unknown reference, never an OSError.
    with pytest.raises((UsageError, CheckpointNotFound)):
        store.tag("ok/step-1", bad)
    with pytest.raises((UsageError, CheckpointNotFound)):
        store.untag(f"{bad}:v1")
    with pytest.raises((UsageError, CheckpointNotFound)):
        store.resolve(f"{bad}:v1")
    with pytest.raises(InvalidName):
        store.save(tiny_bert_dir, "ok/step-2", extra_files={bad or ".": b"x"})
    assert {p.name for p in tmp_path.iterdir()} == outside
    assert not [f for f in _stored_files(store.root) - before if f.startswith("tmp/")]


def test_tag_references_cannot_reach_files_outside_the_store(store, tiny_bert_dir, tmp_path):
    """A file outside the store that looks like a tag (it holds a checkpoint id) is neither read nor removed
    through a reference such as '../../victim:t'."""
    info = store.save(tiny_bert_dir, "ok/step-1")
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "t").write_text(info.id + "\n")
    rel = os.path.relpath(victim, store.root / "refs" / "tags")
    for ref in (f"{rel}:t", f"{victim}:t"):
        with pytest.raises((InvalidName, CheckpointNotFound)):
            store.resolve(ref)
        with pytest.raises((InvalidName, CheckpointNotFound)):
            store.untag(ref)
    assert (victim / "t").read_text() == info.id + "\n"


def _write_manifest_with_path(store: Store, base: str, bad_path: str) -> str:
    import dataclasses

    from ckptstore._format.manifest import manifest_id

    manifest = store.manifest(base)
    files = list(manifest.files)
    files[0] = dataclasses.replace(files[0], path=bad_path)
    data = dataclasses.replace(manifest, name="evil/m", files=tuple(files)).to_bytes()
    cid = manifest_id(data)
    (store.root / "checkpoints" / f"{cid}.json").write_bytes(data)
    return cid


@pytest.mark.parametrize("bad_path", ["../escape", "../../escape", "/tmp/ckpt-abs-escape", "sub/../../escape",
                                      "a\\..\\..\\escape", "nul\x00byte", "", "."])
def test_a_manifest_with_an_unsafe_path_never_writes_outside(bad_path, store, tiny_bert_dir, tmp_path):
    """A hand-made manifest (its id is right: anyone can hash a file) whose file path climbs out: export, load
    and verify refuse it, and nothing appears outside the destination."""
    store.save(tiny_bert_dir, "ok/step-1")
    cid = _write_manifest_with_path(store, "ok/step-1", bad_path)
    store.reindex()
    dest = tmp_path / "deep" / "er" / "dest"
    dest.parent.mkdir(parents=True)
    before = set(tmp_path.rglob("*"))
    for attempt in (
        lambda: store.export(cid, dest),
        lambda: store.export(cid, dest, verify=True),
        lambda: store.load(cid),
    ):
        with pytest.raises(CkptError):
            attempt()
    assert set(tmp_path.rglob("*")) == before
    assert not Path("/tmp/ckpt-abs-escape").exists()
    report = store.verify()
    assert not report.ok and any(p.checkpoint_id == cid for p in report.problems)


MALFORMED = {
    "JSON list": lambda m: [m],
    "no name": lambda m: {k: v for k, v in m.items() if k != "name"},
    "name climbs out": lambda m: {**m, "name": "../x", "run": ".."},
    "run is not the name's": lambda m: {**m, "run": "other"},
    "files not a list": lambda m: {**m, "files": 7},
    "blob digest is a path": lambda m: {**m, "files": [{**m["files"][0], "blobs": [["../../../../etc/hostname", 3]]}]},
    "negative size": lambda m: {**m, "files": [{**m["files"][0], "size": -1}]},
    "file listed twice": lambda m: {**m, "files": [m["files"][0], m["files"][0]]},
    "file is also a folder": lambda m: {**m, "files": [m["files"][0], {**m["files"][0],
                                                                        "path": m["files"][0]["path"] + "/x"}]},
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_a_malformed_manifest_is_reported_and_never_acted_on(case, store, tiny_bert_dir, tmp_path):
    """A manifest with the right id but hostile or broken content: the store still opens and lists, verify names
    it, nothing reads or writes through it, and gc refuses to guess which blobs it needed."""
    from ckptstore._format.manifest import manifest_id

    base = store.save(tiny_bert_dir, "ok/step-1")
    raw = json.loads((store.root / "checkpoints" / f"{base.id}.json").read_bytes())
    data = json.dumps(MALFORMED[case](raw)).encode()
    cid = manifest_id(data)
    (store.root / "checkpoints" / f"{cid}.json").write_bytes(data)
    with Store.open(store.root) as s:
        assert [c.name for c in s.list()] == ["ok/step-1"]
        report = s.verify()
        assert [p.checkpoint_id for p in report.problems] == [cid], report.problems
        with pytest.raises(CkptError):
            s.export(cid[:12], tmp_path / "out")
        with pytest.raises(CkptError):
            s.gc()
    assert not (tmp_path / "out").exists()


def test_symlinks_inside_the_store_cannot_redirect_writes_outside(store, tiny_bert_dir, tmp_path):
    """Someone replaced store folders with links to elsewhere (a store unpacked from an untrusted archive):
    saves, tags and gc refuse rather than write through them."""
    outside = tmp_path / "outside"
    outside.mkdir()
    store.save(tiny_bert_dir, "ok/step-1")
    victims = []
    for sub in ("tmp", "refs/tags/ok"):
        target = store.root / sub
        if target.exists():
            shutil.rmtree(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(outside, target_is_directory=True)
        victims.append(target)
    with pytest.raises(CkptError):
        with Store.open(store.root) as s:
            s.save(tiny_bert_dir, "ok/step-2", tags=["v1"])
            s.tag("ok/step-1", "v2")
    assert list(outside.iterdir()) == []
    for link in victims:
        link.unlink()


def test_a_source_symlink_is_stored_as_its_content_and_nothing_is_written_outside(store, tiny_bert_dir, tmp_path,
                                                                                  tree_sha256):
    """A checkpoint folder whose files are links (a hub snapshot) is stored by content; links to folders outside
    are not followed into; nothing outside the store changes."""
    folder = tmp_path / "linked"
    folder.mkdir()
    for p in tiny_bert_dir.iterdir():
        (folder / p.name).symlink_to(p)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "secret.txt").write_text("not part of the checkpoint")
    (folder / "escape").symlink_to(elsewhere, target_is_directory=True)
    before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file() and store.root not in p.parents}
    store.save(folder, "linked/v1")
    store.export("linked/v1", tmp_path / "out")
    assert tree_sha256(tmp_path / "out") == tree_sha256(tiny_bert_dir)
    after = {p: p.stat().st_mtime_ns for p in before}
    assert after == before
