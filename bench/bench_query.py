"""Speed of `ckpt ls --where` (answered by the index) against what the public API offered before it, and what
collections cost a prune (every save under a policy runs one), side by side in one process.

    .venv/bin/python bench/bench_query.py [--checkpoints N] [--quick] [--repeat R] [--tmp-dir DIR]

The store holds N checkpoints (real saves of two tiny models, a BERT classifier and a GPT-2, in two runs, each with
its own metrics). Each figure is the median of R runs:

  where     store.query(["eval_accuracy>=0.9", "model_type=bert"])                                     vs
            store.list() filtered on the metric, reading each remaining manifest for its model type
            (the same answer without the model_facts index)
  floor     the same query against store.list() filtered on the metric alone (a plain listing of the
            index: what any answer costs at least)
  prune     store.prune(run, policy, dry_run=True) with 20 collections of 10 checkpoints each, against the
            same prune with no collection (the plan reads every collection document)

Before each timed op the script waits for idle CPUs and disk (Quiet in _common.py); the sides take turns at going
first. The figures, with the machine, the versions and the commit, go to bench/results/bench_query.json and .md.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402 - the waits, the alternation, the timing and the results file of every bench
from _common import in_turn  # noqa: E402

WHERE = ["eval_accuracy>=0.9", "model_type=bert"]


def _timed(fn) -> tuple[float, object]:
    return _common.timed(fn)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    _common.add_arguments(parser, repeat=9)
    parser.add_argument("--checkpoints", type=int, default=600, help="checkpoints in the store (default 600)")
    parser.add_argument("--quick", action="store_true", help="a small run: 120 checkpoints, 5 repeats")
    args = parser.parse_args()
    if args.quick:
        args.checkpoints, args.repeat = 120, 5

    import torch
    import transformers

    from ckptstore import Store
    from ckptstore.policies import RetentionPolicy

    args.tmp_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="bench-query-", dir=args.tmp_dir))
    try:
        store = Store.init(work / "store")
        torch.manual_seed(0)
        bert = transformers.BertForSequenceClassification(transformers.BertConfig(
            vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37))
        gpt = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_embd=16, n_layer=1, n_head=2, vocab_size=50,
                                                                   n_positions=16))
        for i in range(args.checkpoints):
            model, run = (bert, "bert") if i % 2 == 0 else (gpt, "gpt")
            store.save(model, f"{run}/step-{i}", metrics={"eval_accuracy": (i * 37 % 100) / 100, "eval_loss": 1.0})
            if i % 100 == 0:
                print(f"  saved {i}/{args.checkpoints}", file=sys.stderr)
        expected = {c.id for c in store.query(WHERE)}

        def without_index() -> set[str]:
            return {c.id for c in store.list() if c.metrics.get("eval_accuracy", -1) >= 0.9
                    and store.manifest(c.id).model.get("model_type") == "bert"}

        def floor() -> set[str]:
            return {c.id for c in store.list() if c.metrics.get("eval_accuracy", -1) >= 0.9}

        assert without_index() == expected
        policy = RetentionPolicy(keep_last=1_000_000)
        bert_ids = [c.id for c in store.list("bert")]
        times: dict[str, list[float]] = {k: [] for k in ("query", "list+manifests", "list", "prune",
                                                         "prune+collections")}

        def ask(i: int) -> None:
            t, got = _timed(lambda: store.query(WHERE))
            assert {c.id for c in got} == expected
            times["query"].append(t)

        def manifests(i: int) -> None:
            times["list+manifests"].append(_timed(without_index)[0])

        def listing(i: int) -> None:
            times["list"].append(_timed(floor)[0])

        def prune_plain(i: int) -> None:
            times["prune"].append(_timed(lambda: store.prune("bert", policy, dry_run=True))[0])

        def prune_collections(i: int) -> None:
            for n in range(20):
                store.collection_create(f"c{n}")
                for cid in bert_ids[n * 10 % len(bert_ids):][:10]:
                    store.collection_add(f"c{n}", cid)
            times["prune+collections"].append(_timed(lambda: store.prune("bert", policy, dry_run=True))[0])
            for n in range(20):
                store.collection_delete(f"c{n}")

        for i in _common.rounds(args, work):
            if i == 0:
                for xs in times.values():
                    xs.clear()
            for part in in_turn([ask, manifests, listing], max(i, 0)) + in_turn([prune_plain, prune_collections],
                                                                              max(i, 0)):
                part(i)
        store.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)

    rows = {"where": ("list+manifests", "query", "store.list() + a manifest read per metric match"),
            "floor": ("list", "query", "store.list() filtered on the metric alone"),
            "prune": ("prune", "prune+collections", "the same prune with no collection")}
    title = (f"bench_query: {args.checkpoints} checkpoints (tiny BERT and GPT-2, two runs), {len(expected)} match"
             f" {' and '.join(WHERE)}; median of {args.repeat}")
    print(f"\n{title}\n{_common.QUIET.describe()}")
    table, medians = [], {}
    for name, (b, o, what) in rows.items():
        mb, mo = statistics.median(times[b]), statistics.median(times[o])
        print(f"{name:8}{mb * 1000:10.1f} ms{mo * 1000:10.1f} ms{mo / mb:8.2f}x  vs {what}")
        medians[name] = {"baseline": what, "baseline_s": round(mb, 5), "ours_s": round(mo, 5),
                         "ratio": round(mo / mb, 3)}
        ours = "prune with 20 collections" if name == "prune" else "`store.query` (`ls --where`)"
        table.append([name, f"{what} {mb * 1000:.1f} ms", f"{ours} {mo * 1000:.1f} ms", f"{mo / mb:.2f}x"])
    _common.write_results(
        "bench_query", tmp=args.tmp_dir, args=args, title=title,
        results={"checkpoints": args.checkpoints, "matches": len(expected), "medians": medians, "runs_s": times},
        extra={"quiet": _common.QUIET.summary()},
        table=(["measure", "baseline", "ckptstore", "ratio"], table),
    )


if __name__ == "__main__":
    main()
