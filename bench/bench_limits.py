"""How close the store runs to this machine's limits, side by side in one process.

    .venv/bin/python bench/bench_limits.py [--repeat N] [--quick] [--tmp-dir DIR] [--quiet-timeout S]

bench_store.py compares the store with what transformers does without it; this one compares it with the floors
under both, on the same BERT-base-sized model (median of N runs, seconds):

  disk floor   the model's bytes written by one os.write loop + fsync (no hashing, no format): the least a durable
               first save can cost. Beside it: safetensors.save_file + fsync, save_pretrained + fsync, store.save.
  hash floor   BLAKE3 over the blobs a save cuts (16 MiB chunks per tensor) on one thread per core: the least a
               re-save of an unchanged model can cost, since every byte is hashed again. Beside it: the re-save.
  export       store.export with 1, 2 and 3 copy threads, against cp -r of the save_pretrained folder.

The same waits as bench_store.py before each timed op (idle CPUs, idle disk, no I/O stalls: Quiet in _common.py),
the writers taking turns at going first; the results go to bench/results/bench_limits.json and .md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402 - the waits, the alternation, the timing and the results file of every bench
import bench_store  # noqa: E402 - the model is the main benchmark's
from _common import fsync_tree, in_turn, settle  # noqa: E402
from _common import seconds  # noqa: E402


def one_round(model, tensors, chunks, work: Path, results: dict[str, list[float]], i: int = 0) -> None:
    from safetensors.torch import save_file

    from ckptstore import Store
    from ckptstore._ops import load as _load
    from ckptstore._core.hashing import hash_bytes

    def record(what: str, seconds: float) -> None:
        results.setdefault(what, []).append(seconds)

    raw, st_file, folder, store_dir = work / "raw.bin", work / "st.safetensors", work / "sp", work / "store"

    def raw_write() -> None:
        fd = os.open(raw, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            for chunk in chunks:
                view = memoryview(chunk)
                while view:
                    view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)

    def st_write() -> None:
        save_file(tensors, str(st_file), metadata={"format": "pt"})
        fd = os.open(st_file, os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)

    def sp_write() -> None:
        model.save_pretrained(folder)
        fsync_tree(folder)

    def ours() -> None:
        Store.open(store_dir).save(model, "bench/step-1")

    writes = [("disk floor: os.write + fsync", raw_write, raw), ("safetensors.save_file + fsync", st_write, st_file),
              ("save_pretrained + fsync", sp_write, folder), ("store.save (first)", ours, store_dir)]
    for what, fn, path in in_turn(writes, i):
        if what.startswith("store"):
            Store.init(store_dir).close()
        settle()
        record(what, seconds(fn))
        settle(path)

    model.save_pretrained(folder)
    store = Store.init(store_dir)
    store.save(model, "bench/step-1")
    settle()
    with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        record("hash floor: BLAKE3 of every blob", seconds(lambda: list(pool.map(hash_bytes, chunks))))
    record("store.save (unchanged re-save)", seconds(lambda: store.save(model, "bench/step-2")))

    dest = work / "dest"
    manifest = store.manifest("bench/step-1")
    record("cp -r", seconds(lambda: subprocess.run(["cp", "-r", str(folder), str(dest)], check=True)))
    settle(dest)
    for n in (1, 2, 3):
        record(f"store.export, {n} thread(s)", seconds(lambda n=n: _load.export(store._repo.blobs, manifest, dest, threads=n)))
        settle(dest)
    store.close()
    settle(folder, store_dir)


def blob_chunks(model, chunk_bytes: int) -> tuple[dict, list[memoryview]]:
    """The tensors save_pretrained writes and the 16 MiB-per-tensor pieces a save hashes."""
    from ckptstore._ops.capture import capture_model

    sources = [s for s in capture_model(model) if s.layout is not None]
    chunks: list[memoryview] = []
    for src in sources:
        chunks.append(memoryview(src.layout.header))
        for span in src.layout.tensors:
            for a in range(span.start, span.end, chunk_bytes):
                chunks.append(memoryview(src.read(a, min(a + chunk_bytes, span.end))).cast("B"))
    tensors = {k: v.contiguous() for k, v in model.state_dict().items()}
    return tensors, chunks


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    _common.add_arguments(ap, repeat=8, quick=bench_store.QUICK)
    args = ap.parse_args()

    from ckptstore.config import DEFAULT_CHUNK_BYTES

    _common.quiet_transformers()
    with _common.scratch(args, "bench-limits") as work:
        model = bench_store.build_model(args.quick)
        tensors, chunks = blob_chunks(model, DEFAULT_CHUNK_BYTES)
        size = sum(len(c) for c in chunks)
        results: dict[str, list[float]] = {}
        for i in _common.rounds(args, work):
            one_round(model, tensors, chunks, work, results if i >= 0 else {}, i)

    mb = size / 1e6
    title = (f"bench_limits: {mb:.1f} MB of weights in {len(chunks)} blobs{' (--quick)' if args.quick else ''};"
             f" median of {args.repeat} run(s), {os.cpu_count()} cores")
    print(f"\n{title}\n{_common.QUIET.describe()}\n")
    floors = {"disk floor": "disk floor: os.write + fsync", "hash floor": "hash floor: BLAKE3 of every blob",
              "cp -r": "cp -r"}
    groups = [("disk floor", [k for k in results if "(first)" in k or "fsync" in k]),
              ("hash floor", ["hash floor: BLAKE3 of every blob", "store.save (unchanged re-save)"]),
              ("cp -r", [k for k in results if k.startswith(("cp -r", "store.export"))])]
    rows, medians = [], {}
    for floor, names in groups:
        base = statistics.median(results[floors[floor]])
        for what in names:
            t = statistics.median(results[what])
            print(f"  {what:<36}{t:>8.3f} s{mb / t:>7.0f} MB/s{t / base:>7.2f}x of the {floor}")
            medians[what] = {"seconds": round(t, 4), "floor": floor, "of_floor": round(t / base, 3)}
            rows.append([what, f"{t:.3f} s", f"{t / base:.2f}x of the {floor}"])
        print()
    print("all runs (s):")
    for what, xs in results.items():
        print(f"  {what:<36}" + " ".join(f"{x:.3f}" for x in xs))
    _common.write_results(
        "bench_limits", tmp=args.tmp_dir, args=args, title=title,
        results={"weights_mb": round(mb, 1), "blobs": len(chunks), "medians": medians, "runs_s": results},
        extra={"quiet": _common.QUIET.summary()},
        table=(["what", "time", "of its floor"], rows),
    )


if __name__ == "__main__":
    main()
