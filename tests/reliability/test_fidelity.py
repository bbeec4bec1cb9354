"""Round-trip fidelity: every safetensors dtype this torch has (bf16, the fp8 family, packed fp4, unsigned and
complex types), zero-size and 0-d tensors, non-contiguous views, tied weights and shards come back byte-exact; and
dedup never merges blobs whose bytes differ."""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from ckptstore import Store
from ckptstore._format.safetensors import TORCH_TO_ST
from storefiles import iter_blobs

DTYPES = sorted(TORCH_TO_ST, key=str)


def _random(dtype: torch.dtype, shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    if dtype == torch.bool:
        return torch.randint(0, 2, shape, generator=gen).bool()
    size = torch.empty(0, dtype=dtype).element_size()
    numel = 1
    for d in shape:
        numel *= d
    raw = torch.randint(0, 256, (numel * size,), dtype=torch.uint8, generator=gen)
    return raw.view(dtype).reshape(shape)  # any bit pattern: NaNs, subnormals, negative zero


def _bits(t: torch.Tensor) -> bytes:
    return bytes(t.detach().contiguous().reshape(-1).view(torch.uint8).numpy()) if t.numel() else b""


def _tensors(dtype: torch.dtype, gen: torch.Generator) -> dict[str, torch.Tensor]:
    shapes = {"matrix": (3, 4), "empty": (0,), "empty-middle": (2, 0, 3), "row": (1, 6)}
    if TORCH_TO_ST[dtype] != "F4":
        shapes["scalar"] = ()  # safetensors cannot record a 0-d packed fp4 tensor
    return {f"{dtype}.{name}".replace("torch.", ""): _random(dtype, shape, gen) for name, shape in shapes.items()}


def _views(t: torch.Tensor) -> dict[str, torch.Tensor]:
    """Non-contiguous views of a 2-d tensor whose memory holds other bytes than the view shows."""
    out = {"t": t.t(), "every-other-column": t[:, ::2]}
    if t.shape[0]:
        out["broadcast-row"] = t[:1].expand(3, t.shape[1])
    if t.dtype.is_complex:
        out["lazy-conj"] = t.conj()  # a conj bit: memory holds the unconjugated values
    return out


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_every_dtype_round_trips_byte_exact(dtype, store, tmp_path):
    gen = torch.Generator().manual_seed(hash(str(dtype)) % 2**31)
    tensors = _tensors(dtype, gen)
    if TORCH_TO_ST[dtype] != "F4":
        for name, view in _views(tensors[next(iter(tensors))]).items():
            tensors[f"view.{name}"] = view
    reference = tmp_path / "reference.safetensors"
    save_file({k: v.contiguous().resolve_conj() for k, v in tensors.items()}, str(reference),
              metadata={"format": "pt"})
    expected = reference.read_bytes()

    # From tensors in memory (the header predicted, views read in place) and from the file safetensors wrote.
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "t.safetensors").write_bytes(expected)
    store.save(None, "mem/v1", extra_files={"t.safetensors": tensors})
    store.save(folder, "file/v1")
    for name in ("mem/v1", "file/v1"):
        out = tmp_path / name.replace("/", "-")
        store.export(name, out, verify=True)
        got = (out / "t.safetensors").read_bytes()
        assert hashlib.sha256(got).hexdigest() == hashlib.sha256(expected).hexdigest(), f"{name}: bytes differ"
        loaded = store.load_tensors(name, "t.safetensors", verify=True)
        assert loaded.keys() == tensors.keys()
        for key, t in tensors.items():
            assert loaded[key].dtype == t.dtype and loaded[key].shape == t.shape, key
            assert _bits(loaded[key]) == _bits(t.resolve_conj()), f"{name}: {key} differs"


def test_tied_and_sharded_live_models_export_what_save_pretrained_writes(store, tiny_bert, tmp_path):
    """Tied embeddings (stored once, as save_pretrained does), in bf16 and fp16, in shards of 20 KB."""
    def digests(root: Path) -> dict[str, str]:
        return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.iterdir())}

    for dtype in (torch.bfloat16, torch.float16):
        model = tiny_bert(seed=1, cls_name="BertForMaskedLM").to(dtype)
        assert model.get_output_embeddings().weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
        reference = tmp_path / f"reference-{dtype}"
        model.save_pretrained(reference, max_shard_size="20KB")
        name = f"tied/{str(dtype).split('.')[1]}"
        store.save(model, name, max_shard_size="20KB")
        store.export(name, tmp_path / name.replace("/", "-"), verify=True)
        assert digests(tmp_path / name.replace("/", "-")) == digests(reference)
        assert len([p for p in reference.iterdir() if p.suffix == ".safetensors"]) > 1  # really sharded
        loaded = store.load(name, cls=type(model), dtype=dtype)
        assert loaded.get_output_embeddings().weight.data_ptr() == loaded.get_input_embeddings().weight.data_ptr()
        for key, value in model.state_dict().items():
            assert torch.equal(loaded.state_dict()[key], value), key


def test_dedup_never_merges_different_bytes(tmp_path, scale, figure):
    """Files that differ in one byte, at chunk boundaries, in their last byte, or only in length: each exports as
    itself; identical chunks are stored once."""
    rng = random.Random(8)
    chunk = 4096
    base = rng.randbytes(chunk * 4)
    variants: dict[str, bytes] = {
        "base": base, "shorter": base[:-1], "longer": base + b"\x00", "empty": b"", "one-chunk": base[:chunk],
        "zeros": bytes(chunk * 4), "zeros-and-one-more": bytes(chunk * 4 + 1),
    }
    for pos in (0, chunk - 1, chunk, 2 * chunk + 17, len(base) - 1):
        for bit in (0, 7):
            data = bytearray(base)
            data[pos] ^= 1 << bit
            variants[f"flip-{pos}-{bit}"] = bytes(data)
    for i in range(scale.pick(20, 400)):
        data = bytearray(rng.choice(list(variants.values())) or base)
        for _ in range(rng.randint(1, 3)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        variants[f"random-{i}"] = bytes(data)
    with Store.init(tmp_path / "store", chunk_bytes=chunk) as store:
        for name, data in variants.items():
            store.save(None, f"d/{name}", extra_files={"blob.bin": data})
        for name, data in variants.items():
            assert store.read_file(f"d/{name}", "blob.bin") == data, name
        distinct = {data[a : a + chunk] for data in variants.values() for a in range(0, len(data), chunk)}
        stored = sum(1 for _ in iter_blobs(store))
        manifests = len(variants)
        # One blob per distinct chunk, plus per checkpoint nothing else but its manifest: merged exactly when equal.
        assert stored == len(distinct), (stored, len(distinct))
        assert store.verify().ok
    figure("dedup", f"{manifests} files differing by single bytes, lengths and chunk boundaries: {stored} blobs for"
           f" {len(distinct)} distinct chunks, every file read back as itself")
