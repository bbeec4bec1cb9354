"""Torch zip files (optimizer.pt and friends) stored split by storage record, reassembled byte-exact, and stored
whole when the archive is not a plain torch zip."""

from __future__ import annotations

import io
import shutil
import zipfile

import pytest
import torch

from ckptstore._format import torchzip


def _train_steps(model, optimizer, steps: int, *, seed: int) -> None:
    torch.manual_seed(seed)
    for _ in range(steps):
        ids = torch.randint(0, 99, (4, 8))
        out = model(input_ids=ids).last_hidden_state
        out.pow(2).mean().backward()
        optimizer.step()
        optimizer.zero_grad()


def _trainer_like_folder(path, model, optimizer):
    model.save_pretrained(path)
    torch.save(optimizer.state_dict(), path / "optimizer.pt")
    torch.save({"python": [1, 2, 3], "cpu": torch.get_rng_state()}, path / "rng_state.pth")


def test_optimizer_state_split_per_storage_and_exported_byte_exact(store, tiny_bert, tmp_path, tree_sha256):
    model = tiny_bert()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    _train_steps(model, optimizer, 2, seed=0)
    src = tmp_path / "ckpt-1"
    _trainer_like_folder(src, model, optimizer)
    store.save(src, "run/step-1")
    manifest = store._repo.read_manifest(store.show("run/step-1").id)
    entry = manifest.file("optimizer.pt")
    assert entry.kind == "torchzip"
    with open(src / "optimizer.pt", "rb") as f:
        spans = torchzip.storage_spans(f, entry.size)
    # exp_avg, exp_avg_sq and step for each parameter: every storage is a blob of its own, plus the container
    assert len(spans) >= 2 * len(list(model.parameters()))
    assert len(entry.blobs) > len(spans)
    assert manifest.file("rng_state.pth").kind == "torchzip"
    out = tmp_path / "out"
    store.export("run/step-1", out)
    assert tree_sha256(out) == tree_sha256(src)
    # the exported optimizer state loads (weights_only) into an optimizer
    state = torch.load(out / "optimizer.pt", weights_only=True)
    optimizer.load_state_dict(state)


def test_unchanged_moments_are_stored_once(store, tiny_bert, tmp_path):
    model = tiny_bert()
    for p in model.embeddings.parameters():
        p.requires_grad_(False)  # frozen: its moments never appear, the others change
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    _train_steps(model, optimizer, 1, seed=0)
    a = tmp_path / "a"
    _trainer_like_folder(a, model, optimizer)
    b = tmp_path / "b"
    shutil.copytree(a, b)
    # a second optimizer file whose states are the same but one: only that storage (and the container) is new
    state = optimizer.state_dict()
    first = next(iter(state["state"].values()))
    first["exp_avg"] = first["exp_avg"] + 1
    torch.save(state, b / "optimizer.pt")
    store.save(a, "run/step-1")
    report = store.save(b, "run/step-2")
    exp_avg_bytes = first["exp_avg"].numel() * 4
    size = (b / "optimizer.pt").stat().st_size
    assert report.new_bytes < size / 2
    assert report.new_bytes >= exp_avg_bytes


def _zip_bytes(entries: dict[str, bytes], compression=zipfile.ZIP_STORED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=compression) as z:
        for name, data in entries.items():
            z.writestr(name, data)
    return buf.getvalue()


def _hostile_archives() -> dict[str, bytes]:
    ok = _zip_bytes({"archive/data.pkl": b"\x80\x02}q\x00.", "archive/data/0": b"\x01" * 4096})
    overlapping = bytearray(ok)
    # a central directory entry whose data offset points back into the first record
    cd = overlapping.rfind(b"PK\x01\x02")
    overlapping[cd + 42 : cd + 46] = (0).to_bytes(4, "little")
    return {
        "deflated": _zip_bytes({"archive/data.pkl": b"x" * 100, "archive/data/0": b"\x01" * 4096},
                               zipfile.ZIP_DEFLATED),
        "truncated": ok[: len(ok) // 2],
        "garbage_after_magic": b"PK\x03\x04" + bytes(range(256)) * 20,
        "overlapping": bytes(overlapping),
        "no_storages": _zip_bytes({"archive/data.pkl": b"x" * 100}),
    }


@pytest.mark.parametrize("kind", sorted(_hostile_archives()))
def test_malformed_archives_are_stored_whole(store, tiny_bert_dir, tmp_path, tree_sha256, kind):
    data = _hostile_archives()[kind]
    src = tmp_path / "src"
    shutil.copytree(tiny_bert_dir, src)
    (src / "optimizer.pt").write_bytes(data)
    store.save(src, "run/step-1")
    entry = store._repo.read_manifest(store.show("run/step-1").id).file("optimizer.pt")
    assert entry.kind == "blob"
    out = tmp_path / "out"
    store.export("run/step-1", out)
    assert tree_sha256(out) == tree_sha256(src)


def test_plain_torch_zip_parses(tmp_path):
    data = _zip_bytes({"archive/data.pkl": b"p" * 10, "archive/data/0": b"\x02" * 100, "archive/data/1": b"\x03" * 7})
    spans = torchzip.storage_spans(io.BytesIO(data), len(data))
    assert [data[a:b] for a, b in spans] == [b"\x02" * 100, b"\x03" * 7]
    pieces = torchzip.pieces(spans, len(data), 64)
    assert b"".join(data[a:b] for a, b, _ in pieces) == data
    assert all(b - a <= 64 for a, b, _ in pieces)
