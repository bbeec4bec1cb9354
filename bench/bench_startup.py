"""How long a `ckpt` command takes to start and finish on a small store, against an empty Python process.

    .venv/bin/python bench/bench_startup.py [--repeat N] [--before REV] [--out bench/results/startup.json]

Every figure is the median wall time of N real processes (`python -m ckptstore ...`, the code of this checkout),
in one run. Each round runs every command once, in an order rotated by one from the last round, so a slow spell
of the machine falls on all of them alike. The baseline is `python -c pass`; `python -c "import torch"` is shown
for reference: it is what every command paid before torch was imported only where a command builds tensors.
The store holds one small model (a few hundred KiB), so the figures are start-up, not work.
Writes the figures, the machine and the git commit to --out, and prints a table.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def make_model_folder(path: Path) -> None:
    import numpy as np
    from safetensors.numpy import save_file

    rng = np.random.default_rng(0)
    path.mkdir(parents=True)
    save_file({f"layer.{i}.weight": rng.standard_normal((64, 64), dtype=np.float32) for i in range(8)},
              str(path / "model.safetensors"))
    (path / "config.json").write_text(json.dumps({"model_type": "bert", "architectures": ["BertModel"]}))


def machine() -> dict[str, str]:
    import importlib.metadata as md

    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    facts = {"python": platform.python_version(), "platform": platform.platform(), "cpu": cpu,
             "cores": str(os.cpu_count())}
    for pkg in ("torch", "transformers", "click", "rich"):
        try:
            facts[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return facts


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True).stdout.strip()
        return out.stdout.strip() + (" (with uncommitted changes)" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "?"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "startup.json")
    parser.add_argument("--before", metavar="REV", default=None,
                        help="Also time `ckpt --help` and `ckpt ls` of this git revision (e.g. the commit before a change).")
    args = parser.parse_args()

    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "HF_HUB_OFFLINE": "1"}
    env.pop("CKPT_STORE", None)
    py = sys.executable
    with tempfile.TemporaryDirectory(prefix="bench-startup-") as tmp:
        work = Path(tmp)
        make_model_folder(work / "model")
        store = str(work / "store")
        ckpt = [py, "-m", "ckptstore"]
        subprocess.run([*ckpt, "save", str(work / "model"), "m/step-1", "--store", store], env=env, check=True,
                       capture_output=True)
        ops: dict[str, list[str] | tuple[dict, list[str]]] = {
            "python -c pass": [py, "-c", "pass"],
            "python -c 'import torch'": [py, "-c", "import torch"],
            "ckpt --help": [*ckpt, "--help"],
            "ckpt ls": [*ckpt, "ls", "--store", store],
            "ckpt show": [*ckpt, "show", "m/step-1", "--store", store],
            "ckpt du": [*ckpt, "du", "--store", store],
            "ckpt verify": [*ckpt, "verify", "--store", store],
        }
        if args.before:
            old = work / "before"
            old.mkdir()
            archive = subprocess.run(["git", "-C", str(REPO), "archive", args.before, "src"], capture_output=True,
                                     check=True).stdout
            subprocess.run(["tar", "-x", "-C", str(old)], input=archive, check=True)
            old_env = {**env, "PYTHONPATH": str(old / "src")}
            # A store of the old code's own format (a newer format is refused by older code, by design).
            old_store = str(work / "before-store")
            subprocess.run([*ckpt, "save", str(work / "model"), "demo/step-1", "--store", old_store], env=old_env,
                           check=True, capture_output=True, cwd=work)
            ops[f"ckpt --help at {args.before}"] = (old_env, [*ckpt, "--help"])
            ops[f"ckpt ls at {args.before}"] = (old_env, [*ckpt, "ls", "--store", old_store])
        names = list(ops)
        times: dict[str, list[float]] = {n: [] for n in names}
        for i in range(args.repeat + 1):  # round 0 warms the page cache and is not counted
            order = names[i % len(names):] + names[: i % len(names)]
            for name in order:
                t0 = time.perf_counter()
                op_env, argv = ops[name] if isinstance(ops[name], tuple) else (env, ops[name])
                subprocess.run(argv, env=op_env, check=True, capture_output=True, cwd=work)
                if i:
                    times[name].append(time.perf_counter() - t0)

    base = statistics.median(times["python -c pass"])
    rows = []
    for name in names:
        med = statistics.median(times[name])
        rows.append({"command": name, "median_s": round(med, 4), "over_baseline_s": round(med - base, 4),
                     "min_s": round(min(times[name]), 4), "max_s": round(max(times[name]), 4),
                     "samples_s": [round(t, 4) for t in times[name]]})
    result = {"benchmark": "bench/bench_startup.py", "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
              "git_commit": git_commit(), "before": args.before, "repeat": args.repeat, "machine": machine(),
              "baseline": "python -c pass", "results": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")

    print(f"median of {args.repeat} processes each ({result['machine']['cpu']}, {result['machine']['cores']} cores)")
    print(f"{'command':<34} {'median':>9} {'over python -c pass':>20} {'min':>8} {'max':>8}")
    for r in rows:
        print(f"{r['command']:<34} {r['median_s']:>8.3f}s {r['over_baseline_s']:>19.3f}s {r['min_s']:>7.3f}s {r['max_s']:>7.3f}s")
    print(f"written to {args.out.relative_to(REPO) if args.out.is_relative_to(REPO) else args.out}")


if __name__ == "__main__":
    main()
