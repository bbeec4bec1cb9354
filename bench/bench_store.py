"""Speed of the store against what transformers does without it, side by side in one process.

    .venv/bin/python bench/bench_store.py [--repeat N] [--quick] [--tmp-dir DIR] [--quiet-timeout S]

On a BERT-base-sized model (BertModel with the default BertConfig: ~110M parameters, 438 MB in fp32, random
weights built here, no network), each figure the median of N runs:

  first save   model.save_pretrained(dir) + fsync of every file and of dir  vs  store.save(model, name), fresh store
  re-save      the unchanged model under a new name, against save_pretrained + fsync (and our first save)
  load         AutoModel.from_pretrained(dir)  vs  store.load(ref), page cache warm on both sides
  export       cp -r dir  vs  store.export(ref, dest)

Both sides run in this process, so import time is not counted; an untimed warm-up round pays for lazy imports
and first-call costs first, and checks that both sides load the same weights and export the same bytes. Before
every timed operation, what the previous one wrote is deleted, dirty pages are flushed (os.sync) and the script
waits for idle CPUs and an idle disk (Quiet in _common.py), so that neither side pays for the other's writes or for
someone else's work; the side that goes first alternates from round to round. The figures, with the machine, the
versions and the commit, go to bench/results/bench_store.json and .md.
Cold reads are not measured (dropping the page cache needs root): every load reads files that were just written,
and the output says so. Scratch folders live in --tmp-dir (default: bench-tmp beside the repository, on the
filesystem the store would use) and are removed at the end.
"""

from __future__ import annotations

import argparse
import filecmp
import gc
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402 - the waits, the alternation, the timing and the results file of every bench
from _common import fsync_tree, in_turn, settle, timed  # noqa: E402

REPO = _common.REPO

# The rows of the table: (label, our operation, target ratio or None, what it is compared with, (operation, side)
# whose median is the denominator). A re-save without the store is save_pretrained + fsync again, so that is the
# re-save's baseline; its ratio to our own first save is shown too. That second ratio has no target: the first save
# runs at the disk's speed and the re-save at BLAKE3's (every byte hashed again), so it measures the disk, not us.
ROWS = [
    ("first save", "first save", 1.0, "save_pretrained + fsync", ("first save", "baseline")),
    ("re-save (unchanged)", "re-save (unchanged)", 0.3, "save_pretrained + fsync", ("first save", "baseline")),
    ("  vs our first save", "re-save (unchanged)", None, "our first save", ("first save", "ours")),
    ("load (warm cache)", "load (warm cache)", 1.0, "from_pretrained(folder)", ("load (warm cache)", "baseline")),
    ("export", "export", 1.2, "cp -r", ("export", "baseline")),
]


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


QUICK = "a small BERT (~15 MB) for a smoke run"  # --quick of the benches on build_model's BERT


def build_model(quick: bool):
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    if quick:
        cfg = BertConfig(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=1024)
    else:
        cfg = BertConfig()  # bert-base: 12 layers, hidden 768, vocab 30522
    return BertModel(cfg).eval()


def one_round(model, work: Path, i: int, results: dict[str, dict[str, list[float]]], check: bool) -> int:
    """One repetition of every measurement, baseline and ours alternating who goes first. Returns folder bytes.

    Each timed write starts from the same state: what the previous one wrote is deleted and everything flushed
    first. (Without that, on this VM the second of two back-to-back 438 MB writes took up to twice as long as the
    first, whichever side it was: fresh page-cache memory is slow to come by, so the order decided the figure.)
    """
    from transformers import AutoModel

    from ckptstore import Store

    def record(what: str, side: str, seconds: float) -> None:
        results.setdefault(what, {}).setdefault(side, []).append(seconds)

    def alternate(pairs):
        return in_turn(pairs, i)

    tag = "warmup" if i < 0 else str(i)
    folder, store_dir = work / f"sp-{tag}", work / f"store-{tag}"
    ref = "bench/step-1"

    def base_save():
        model.save_pretrained(folder)
        fsync_tree(folder)

    def our_save():
        Store.open(store_dir).save(model, ref)

    for side, fn in alternate([("baseline", base_save), ("ours", our_save)]):
        Store.init(store_dir).close()  # a fresh store, created outside the timing
        settle()
        record("first save", side, timed(fn)[0])
        settle(folder, store_dir)

    # The rest works on one folder and one store, written untimed.
    model.save_pretrained(folder)
    store = Store.init(store_dir)
    store.save(model, ref)
    size = folder_bytes(folder)
    settle()
    record("re-save (unchanged)", "ours", timed(lambda: store.save(model, "bench/step-2"))[0])

    # Loads: both read files this round just wrote (page cache warm). Each loaded model is dropped before the next.
    loaded = {}
    loads = [("baseline", lambda: AutoModel.from_pretrained(folder)), ("ours", lambda: store.load(ref))]
    for side, fn in alternate(loads):
        seconds, m = timed(fn)
        record("load (warm cache)", side, seconds)
        if check:
            loaded[side] = m.state_dict()
        del m
        gc.collect()
    if check:
        import torch

        same = loaded["baseline"].keys() == loaded["ours"].keys() and all(
            torch.equal(loaded["baseline"][k], loaded["ours"][k]) for k in loaded["baseline"]
        )
        if not same:
            sys.exit("load check failed: store.load and from_pretrained gave different state dicts")
        loaded.clear()

    # Export vs cp -r: neither is fsynced (cp -r does not fsync).
    dest = work / f"copy-{tag}"

    def check_export() -> None:
        names = sorted(p.name for p in folder.iterdir())
        _, mismatch, errors = filecmp.cmpfiles(folder, dest, names, shallow=False)
        if mismatch or errors or sorted(p.name for p in dest.iterdir()) != names:
            sys.exit(f"export check failed: {mismatch or errors} differ from save_pretrained's files")

    settle()
    for side, fn in alternate([
        ("baseline", lambda: subprocess.run(["cp", "-r", str(folder), str(dest)], check=True)),
        ("ours", lambda: store.export(ref, dest)),
    ]):
        record("export", side, timed(fn)[0])
        if check and side == "ours":
            check_export()
        settle(dest)

    store.close()
    settle(folder, store_dir)
    return size


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    _common.add_arguments(ap, repeat=9, quick=QUICK)
    args = ap.parse_args()
    if args.repeat < 1:
        ap.error("--repeat must be at least 1")

    _common.quiet_transformers()
    with _common.scratch(args, "bench-store") as work:
        model = build_model(args.quick)
        params = sum(p.numel() for p in model.parameters())
        results: dict[str, dict[str, list[float]]] = {}
        # The warm-up round also runs the correctness checks (same state dict loaded, byte-identical export).
        for i in _common.rounds(args, work):
            size = one_round(model, work, i, results if i >= 0 else {}, check=i < 0)

    report(results, size, params, args)


def report(results, size: int, params: int, args) -> None:
    mb = size / 1e6
    title = (f"bench_store: BertModel, {params / 1e6:.1f}M parameters, checkpoint {mb:.1f} MB"
             f"{' (--quick)' if args.quick else ''}; median of {args.repeat} run(s), seconds")
    print(f"\n{title}")
    print("loads read files just written: page cache warm (cold reads need root to drop caches; not measured)")
    quiet = _common.QUIET
    print(quiet.describe())
    print()
    head = f"{'operation':<22}{'baseline':>10}{'MB/s':>8}{'ckptstore':>11}{'MB/s':>8}{'ratio':>8}   target"
    print(head)
    print("-" * (len(head) + 30))
    failed = []
    rows, figures = [], {}
    for label, what, limit, against, (base_op, base_side) in ROWS:
        ours = statistics.median(results[what]["ours"])
        base = statistics.median(results[base_op][base_side])
        ratio = ours / base
        if limit is None:
            verdict = f"   (no target) vs {against}"
            met = "(no target)"
        else:
            ok = ratio <= limit
            failed += [] if ok else [label]
            verdict = f"   <= {limit}x vs {against} {'ok' if ok else 'MISSED'}"
            met = f"<= {limit}x: {'met' if ok else 'MISSED'}"
        base_cell = f"{base:>10.3f}{mb / base:>8.0f}" if base_side == "baseline" else f"{'(ours)':>10}{'':>8}"
        print(f"{label:<22}{base_cell}{ours:>11.3f}{mb / ours:>8.0f}{ratio:>7.2f}x{verdict}")
        name = label.strip() if not label.startswith(" ") else f"re-save, {label.strip()}"
        figures[name] = {"ours_s": round(ours, 4), "baseline_s": round(base, 4), "baseline": against,
                                  "ratio": round(ratio, 3), "target": limit}
        rows.append([name, f"{against} {base:.3f} s", f"{ours:.3f} s", f"{ratio:.2f}x", met])
    print("\nall runs (s), and each round's own ratio (ours / baseline of the same round):")
    for what, sides in results.items():
        for side, xs in sides.items():
            print(f"  {what:<22}{side:<10}" + " ".join(f"{x:.3f}" for x in xs))
        if "baseline" in sides:
            ratios = [o / b for o, b in zip(sides["ours"], sides["baseline"])]
            print(f"  {what:<22}{'ratio':<10}" + " ".join(f"{r:.2f}x" for r in ratios)
                  + f"   (median {statistics.median(ratios):.2f}x)")
    if failed:
        note = " (the targets are for the full-size model; --quick is a smoke run)" if args.quick else ""
        print(f"\ntargets missed: {', '.join(failed)}{note}")
    _common.write_results(
        "bench_store", tmp=args.tmp_dir, args=args, title=title,
        results={"checkpoint_mb": round(mb, 1), "parameters": params, "medians": figures, "runs_s": results,
                 "targets_missed": failed},
        extra={"quiet": quiet.summary()},
        table=(["operation", "baseline", "ckptstore", "ratio", "target"], rows),
    )


if __name__ == "__main__":
    main()
