"""The grace period a preempted run needs: SIGTERM to exit of a plain loop saving on the signal.

    .venv/bin/python bench/bench_preemption.py [--repeat N] [--tmp-dir DIR]

A child process trains a BERT-base-sized model (bench_training.bert_base_training: ~110M parameters, AdamW) with
CheckpointManager(save_on_signal=True), calling `step_boundary` after each step, sync and async. Its store already
holds one earlier checkpoint of the run (as a preempted run's store would), and every step changes weights and
moments, so the save on the signal writes everything anew (~1.3 GB). Once the child reports its second step the
parent sends SIGTERM and times:
  signal -> exit      what the scheduler's grace period must cover (the rest of the step in progress included)
  boundary -> exit    the save itself: snapshot, hash, write, commit, exit (the extra time the signal costs)
  step                one training step, for scale
Median of N runs. Results go to bench/results/bench_preemption.json and .md.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import _common  # noqa: E402


def child_main(store_path: str, async_save: bool) -> None:
    from bench_training import bert_base_training, train_step

    from ckptstore import CheckpointManager

    model, optimizer, scheduler = bert_base_training()
    manager = CheckpointManager(store_path, "bench", async_save=async_save)
    train_step(model, optimizer, scheduler)
    manager.save(0, model, optimizer, scheduler)
    manager.wait()
    for step in range(1, 1000):
        t0 = time.time()
        train_step(model, optimizer, scheduler)
        t1 = time.time()
        print(f"step {step} {t1 - t0:.3f}", flush=True)
        if manager.preempted:
            print(f"boundary {t1:.6f}", flush=True)
        manager.step_boundary(step, model, optimizer, scheduler)


def one_run(tmp: Path, async_save: bool) -> dict:
    store = tmp / f"store-{time.time_ns()}"
    code = (f"import sys; sys.path.insert(0, {str(HERE)!r}); import bench_preemption as b; "
            f"b.child_main({str(store)!r}, {async_save!r})")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    steps, boundary, t_signal = [], None, None
    assert proc.stdout is not None
    for line in proc.stdout:
        parts = line.split()
        if parts[0] == "step":
            steps.append(float(parts[2]))
            if int(parts[1]) == 2 and t_signal is None:
                time.sleep(0.3)  # into the next step, as a scheduler's signal would be
                t_signal = time.time()
                proc.send_signal(signal.SIGTERM)
        elif parts[0] == "boundary":
            boundary = float(parts[1])
    code_ = proc.wait()
    t_exit = time.time()
    shutil.rmtree(store, ignore_errors=True)
    assert code_ == 128 + signal.SIGTERM and boundary is not None and t_signal is not None, code_
    return {"signal_to_exit": t_exit - t_signal, "boundary_to_exit": t_exit - boundary,
            "step": statistics.median(steps)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    _common.add_arguments(ap, repeat=3)
    args = ap.parse_args()
    args.tmp_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=args.tmp_dir))
    results: dict[str, dict] = {}
    try:
        for mode, async_save in (("sync", False), ("async", True)):
            runs = [one_run(tmp, async_save) for _ in range(args.repeat)]
            results[mode] = {k: statistics.median(r[k] for r in runs) for k in runs[0]} | {"runs": runs}
            print(mode, {k: round(v, 2) for k, v in results[mode].items() if k != "runs"})
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    rows = [[mode, f"{r['step']:.2f} s", f"{r['boundary_to_exit']:.2f} s", f"{r['signal_to_exit']:.2f} s"]
            for mode, r in results.items()]
    _common.write_results(
        "bench_preemption", tmp=args.tmp_dir, args=args, results=results,
        table=(["save", "one step", "save on SIGTERM (boundary to exit)", "grace needed (signal to exit)"], rows),
        title="Save on SIGTERM: BERT-base (110M) + AdamW, plain loop, CheckpointManager",
    )


if __name__ == "__main__":
    main()
