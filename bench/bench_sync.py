"""`Store.sync` between two local stores against copying the checkpoint's folder, side by side in one process.

    .venv/bin/python bench/bench_sync.py [--repeat N] [--quick] [--tmp-dir DIR] [--quiet-timeout S]

On a BERT-base-sized model (110M parameters; --quick: a small BERT), median of N rounds, seconds:

  first sync   `store.sync(dst, ref)` of one checkpoint into an empty store (every blob sent, re-hashed on arrival,
               made durable, then the manifest and the claim), against `cp -r` of its save_pretrained folder followed
               by an fsync of every file (the least a durable copy of the folder costs).
  re-sync      the same sync again (nothing to send: one look per blob, then "present").
  fine-tune    sync of a second checkpoint whose embeddings were frozen (every other tensor changed) into the store
               that has the first: the bytes sent against the changed tensors' bytes, and the time against `cp -r`
               + fsync of that checkpoint's whole folder (what a folder copy would send).

The same waits as the other benches before each timed op (Quiet in _common.py), the two sides taking turns at going
first; the results go to bench/results/bench_sync.json and .md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402 - the waits, the alternation, the timing and the results file of every bench
import bench_store  # noqa: E402 - the model is the main benchmark's
from _common import fsync_tree, in_turn, settle  # noqa: E402
from _common import seconds  # noqa: E402


def cp_durable(folder: Path, dest: Path) -> None:
    subprocess.run(["cp", "-r", str(folder), str(dest)], check=True)
    fsync_tree(dest)


def fine_tune_frozen_embeddings(model) -> int:
    """Change every tensor but the embeddings (as a fine-tune with frozen embeddings does); returns their bytes."""
    import torch

    changed = 0
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not name.startswith("embeddings."):
                p.add_(1e-3)
                changed += p.numel() * p.element_size()
    return changed


def one_round(src, refs: dict[str, str], folders: dict[str, Path], work: Path, results: dict[str, list[float]],
              i: int) -> dict[str, int]:
    from ckptstore import Store

    def record(what: str, seconds: float) -> None:
        results.setdefault(what, []).append(seconds)

    dst_dir, copy_dir = work / "dst", work / "copy"
    sent: dict[str, int] = {}

    def ours() -> None:
        with Store.init(dst_dir) as dst:
            sent["first"] = src.sync(dst, refs["a"]).bytes_transferred

    sides = [("first sync: cp -r + fsync", lambda: cp_durable(folders["a"], copy_dir), copy_dir),
             ("first sync: store.sync", ours, None)]
    for what, fn, path in in_turn(sides, i):
        settle()
        record(what, seconds(fn))
        if path is not None:
            settle(path)
    with Store.open(dst_dir) as dst:
        settle()
        record("re-sync: store.sync (nothing to send)", seconds(lambda: src.sync(dst, refs["a"])))

    def ours_tuned() -> None:
        with Store.open(dst_dir) as dst:
            sent["tuned"] = src.sync(dst, refs["b"]).bytes_transferred

    sides = [("fine-tune: cp -r + fsync of its folder", lambda: cp_durable(folders["b"], copy_dir), copy_dir),
             ("fine-tune: store.sync", ours_tuned, None)]
    for what, fn, path in in_turn(sides, i):
        settle()
        record(what, seconds(fn))
        if path is not None:
            settle(path)
    settle(dst_dir)
    return sent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    _common.add_arguments(ap, repeat=5, quick=bench_store.QUICK)
    args = ap.parse_args()

    from ckptstore import Store

    _common.quiet_transformers()
    with _common.scratch(args, "bench-sync") as work:
        model = bench_store.build_model(args.quick)
        folders = {"a": work / "folder-a", "b": work / "folder-b"}
        src = Store.init(work / "src")
        model.save_pretrained(folders["a"])
        refs = {"a": src.save(folders["a"], "bench/step-1").id}
        changed = fine_tune_frozen_embeddings(model)
        model.save_pretrained(folders["b"])
        refs["b"] = src.save(folders["b"], "bench/step-2").id
        size = bench_store.folder_bytes(folders["a"])
        results: dict[str, list[float]] = {}
        for i in _common.rounds(args, work):
            sent = one_round(src, refs, folders, work, results if i >= 0 else {}, i)
        src.close()

    mb = size / 1e6
    title = (f"bench_sync: a {mb:.1f} MB checkpoint synced between two local stores{' (--quick)' if args.quick else ''};"
             f" median of {args.repeat} run(s), {os.cpu_count()} cores")
    med = {k: statistics.median(v) for k, v in results.items()}
    first = med["first sync: store.sync"] / med["first sync: cp -r + fsync"]
    tuned = med["fine-tune: store.sync"] / med["fine-tune: cp -r + fsync of its folder"]
    rows = [
        ["first sync into an empty store", f"cp -r + fsync {med['first sync: cp -r + fsync']:.3f} s",
         f"{med['first sync: store.sync']:.3f} s", f"{first:.2f}x"],
        ["re-sync, nothing new", f"cp -r + fsync {med['first sync: cp -r + fsync']:.3f} s",
         f"{med['re-sync: store.sync (nothing to send)']:.3f} s",
         f"{med['re-sync: store.sync (nothing to send)'] / med['first sync: cp -r + fsync']:.2f}x"],
        ["sync of a fine-tune (frozen embeddings)", f"cp -r + fsync {med['fine-tune: cp -r + fsync of its folder']:.3f} s",
         f"{med['fine-tune: store.sync']:.3f} s", f"{tuned:.2f}x"],
        ["bytes sent for the fine-tune", f"changed tensors {changed / 1e6:.1f} MB", f"{sent['tuned'] / 1e6:.1f} MB",
         f"{sent['tuned'] / changed:.3f}x"],
        ["bytes sent for the first sync", f"folder {mb:.1f} MB", f"{sent['first'] / 1e6:.1f} MB",
         f"{sent['first'] / size:.3f}x"],
    ]
    print(f"\n{title}\n{_common.QUIET.describe()}\n")
    for row in rows:
        print("  " + " | ".join(row))
    print("all runs (s):")
    for what, xs in results.items():
        print(f"  {what:<44}" + " ".join(f"{x:.3f}" for x in xs))
    _common.write_results(
        "bench_sync", tmp=args.tmp_dir, args=args, title=title,
        results={"folder_bytes": size, "changed_tensor_bytes": changed, "bytes_sent": sent,
                 "medians_s": {k: round(v, 4) for k, v in med.items()}, "runs_s": results},
        extra={"quiet": _common.QUIET.summary()},
        table=(["operation", "baseline", "ckptstore", "ratio"], rows),
    )


if __name__ == "__main__":
    main()
