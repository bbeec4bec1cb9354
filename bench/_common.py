"""What every bench shares: waiting for a quiet machine, alternating who goes first, timing, and the results file.

A figure quoted in README.md must come from a file a bench wrote, with the machine, the versions and the commit it
was measured on; `write_results` writes bench/results/<bench>.json and a short .md table beside it. This module
imports nothing heavy at import time: tests/reliability also uses `environment` for its figures file.
"""

from __future__ import annotations

import contextlib
import datetime
import gc
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"


class Quiet:
    """Waits, before each timed operation, until the CPUs and the disk have been idle for a moment.

    On a machine shared with other work (CI, other test suites) a single burst of someone else's CPU or disk use
    can double one figure; so can the disk still busy with the previous round's deletes (a filesystem mounted with
    `discard` trims freed blocks after the delete returns). Waiting for a quiet moment keeps the medians about this
    code. CPU idleness comes from /proc/stat, disk idleness from the time the disk spent on I/O
    (/sys/class/block/DEV/stat) and from the time tasks stalled on I/O (/proc/pressure/io). Ops that found no
    quiet moment within the timeout still run, and are counted (`busy`), as is the time spent waiting.
    """

    def __init__(self, timeout: float, disk: str | None = None) -> None:
        self.timeout = timeout
        self.waited = 0.0
        self.busy = 0
        self.ops = 0
        self.enabled = timeout > 0 and os.path.exists("/proc/stat")
        stat = Path(f"/sys/class/block/{disk}/stat") if disk else None
        self.disk_stat = stat if stat is not None and stat.exists() else None

    def _ticks(self) -> tuple[int, int, int, int]:
        with open("/proc/stat") as f:
            ticks = [int(x) for x in f.readline().split()[1:]]
        io_ms = int(self.disk_stat.read_text().split()[9]) if self.disk_stat else 0
        # Time any task stalled on I/O (pressure stall information, microseconds): it also sees a virtual disk
        # slowed by its host, which the disk's own busy time does not.
        try:
            with open("/proc/pressure/io") as f:
                stall_us = int(f.readline().rsplit("total=", 1)[1])
        except (OSError, IndexError, ValueError):
            stall_us = 0
        return ticks[3], sum(ticks), io_ms, stall_us  # idle only: time waiting on the disk counts as busy

    def wait(self) -> None:
        self.ops += 1
        if not self.enabled:
            return
        start = time.monotonic()
        quiet, before = 0, self._ticks()
        while time.monotonic() - start < self.timeout:
            time.sleep(0.2)
            after = self._ticks()
            share = (after[0] - before[0]) / max(1, after[1] - before[1])
            disk_busy_ms = after[2] - before[2]
            stalled_us = after[3] - before[3]
            before = after
            quiet = quiet + 1 if share >= 0.9 and disk_busy_ms <= 10 and stalled_us <= 10_000 else 0
            if quiet >= 2:
                break
        else:
            self.busy += 1
        self.waited += time.monotonic() - start

    def summary(self) -> dict:
        return {"timeout_s": self.timeout, "timed_ops": self.ops, "ops_without_quiet_moment": self.busy,
                "total_wait_s": round(self.waited, 1),
                "disk": self.disk_stat.parent.name if self.disk_stat else None}

    def describe(self) -> str:
        if not self.enabled:
            return "no wait for a quiet machine (--quiet-timeout 0)"
        disk = f" and an idle disk ({self.disk_stat.parent.name})" if self.disk_stat else ""
        return (f"each timed op waited for idle CPUs{disk} (total wait {self.waited:.0f} s); {self.busy} of"
                f" {self.ops} found none within {self.timeout:.0f} s and ran on a busy machine")


QUIET = Quiet(0)


def use_quiet(timeout: float, folder: Path) -> Quiet:
    """From now on `timed` waits for a quiet machine (up to `timeout` s) and an idle disk under `folder`."""
    global QUIET
    QUIET = Quiet(timeout, block_device(folder))
    return QUIET


def timed(fn: Callable[[], object]) -> tuple[float, object]:
    """(seconds, result) of fn(), after waiting for a quiet machine."""
    QUIET.wait()
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def seconds(fn: Callable[[], object]) -> float:
    """The seconds of fn(), after waiting for a quiet machine."""
    return timed(fn)[0]


def settle(*paths: Path) -> None:
    """Remove what the previous op wrote and flush dirty pages, so that the next op pays for nobody else's."""
    for p in paths:
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        elif p.exists():
            p.unlink()
    gc.collect()
    os.sync()


def in_turn(items: Sequence, i: int) -> list:
    """Round i's order: round 0 as given, each next round starting one further (two items: they alternate).

    On this VM a write right after another pays for fresh memory, so whoever went first would win every round."""
    k = i % len(items)
    return [*items[k:], *items[:k]]


def fsync_tree(folder: Path) -> None:
    """What a durable save_pretrained needs on top of save_pretrained: every file and the folder fsynced."""
    for entry in os.scandir(folder):
        if entry.is_file():
            fd = os.open(entry.path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def block_device(path: Path) -> str | None:
    """The kernel name of the block device holding `path` (vda, nvme0n1p2, dm-0), or None."""
    try:
        st = os.stat(path)
        link = os.readlink(f"/sys/dev/block/{os.major(st.st_dev)}:{os.minor(st.st_dev)}")
    except OSError:
        return None
    return os.path.basename(link)


def add_arguments(ap, *, repeat: int, quick: str | None = None) -> None:
    """The options every bench takes; with `quick` (its help), --quick too."""
    ap.add_argument("--repeat", type=int, default=repeat,
                    help=f"runs per figure; the median is reported (default {repeat})")
    ap.add_argument("--tmp-dir", type=Path, default=REPO.parent / "bench-tmp", help="scratch space (removed after)")
    ap.add_argument("--quiet-timeout", type=float, default=30.0, metavar="S",
                    help="before each timed op, wait up to S s for idle CPUs and disk (0: do not wait; default 30)")
    ap.add_argument("--results", type=Path, default=RESULTS, metavar="DIR",
                    help="where <bench>.json and .md are written (default bench/results)")
    ap.add_argument("--note", default="", help="a remark stored with the results (e.g. what else ran meanwhile)")
    if quick is not None:
        ap.add_argument("--quick", action="store_true", help=quick)


def quiet_transformers() -> None:
    """No transformers warnings or progress bars between a bench's lines."""
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()


@contextlib.contextmanager
def scratch(args, bench: str) -> Iterator[Path]:
    """A fresh folder under --tmp-dir for this run of `bench`, removed afterwards; --tmp-dir too, when this run
    made it and nothing else is left in it."""
    made_root = not args.tmp_dir.exists()
    args.tmp_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f"{bench}-", dir=args.tmp_dir))
    try:
        yield work
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if made_root and not any(args.tmp_dir.iterdir()):
            args.tmp_dir.rmdir()


def rounds(args, work: Path) -> Iterator[int]:
    """The rounds of a bench: -1 first, a warm-up whose figures the caller drops (lazy imports, first-call costs,
    first touches of fresh memory: costly on a VM); then, each timed op waiting for a quiet machine and an idle
    disk under `work` (use_quiet), rounds 0 to --repeat - 1, each said done on stderr."""
    yield -1
    use_quiet(args.quiet_timeout, work)
    for i in range(args.repeat):
        yield i
        print(f"  round {i + 1}/{args.repeat} done", file=sys.stderr)


# -- where a figure was measured ---------------------------------------------------------------------------------


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


def commit() -> str:
    """HEAD, with "+dirty" when the work tree differs from it (results files aside: a bench run writes them)."""
    head = _git("rev-parse", "HEAD") or "unknown"
    dirty = _git("status", "--porcelain", "--", ".", ":(exclude)bench/results")
    return head + ("+dirty" if dirty else "")


def _filesystem(path: Path) -> str:
    path = Path(path).resolve()
    best, fs = "", "?"
    with open("/proc/mounts") as mounts:
        for line in mounts:
            dev, mnt, kind = line.split()[:3]
            if (str(path) == mnt or str(path).startswith(mnt.rstrip("/") + "/")) and len(mnt) > len(best):
                best, fs = mnt, f"{kind} on {dev} ({mnt})"
    return fs


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def _memory() -> str:
    try:
        with open("/proc/meminfo") as f:
            kb = int(f.readline().split()[1])
        return f"{kb / 2**20:.1f} GiB"
    except (OSError, ValueError, IndexError):
        return "?"


def _version(pkg: str) -> str:
    import importlib.metadata as md

    try:
        return md.version(pkg)
    except md.PackageNotFoundError:
        return "-"


# Taken when the bench starts, before it imports the code it measures: the commit of that code, even if the tree
# changes while a long bench runs.
_COMMIT_AT_START = commit()
_LOAD_AT_START = os.getloadavg() if hasattr(os, "getloadavg") else None


def _load() -> str:
    """The 1-, 5- and 15-minute load averages when the bench started and when it wrote its results: on a shared
    machine they say how much else ran meanwhile."""
    if _LOAD_AT_START is None:
        return "?"
    start, end = (" ".join(f"{x:.1f}" for x in load) for load in (_LOAD_AT_START, os.getloadavg()))
    return f"{start} at the start, {end} at the end"


def environment(tmp: Path) -> dict:
    """Date, machine facts, versions and commit: what a figure needs beside it to mean something."""
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "commit": _COMMIT_AT_START,
        "machine": {
            "cpu": _cpu_model(),
            "cores": f"{os.cpu_count()} online, {affinity} usable",
            "memory": _memory(),
            "kernel": platform.release(),
            "platform": platform.platform(),
            "tmp_filesystem": _filesystem(tmp),
            "load_average": _load(),
        },
        "versions": {
            "python": platform.python_version(),
            **{pkg: _version(pkg) for pkg in ("torch", "transformers", "safetensors", "blake3", "ckptstore")},
        },
    }


def write_results(bench: str, *, tmp: Path, args, results: dict, table: tuple[list[str], list[list]],
                  title: str, extra: dict | None = None, out_dir: Path | None = None) -> Path:
    """Write <out_dir>/<bench>.json (everything) and <bench>.md (the table a reader quotes); returns the .json."""
    out_dir = Path(out_dir or getattr(args, "results", None) or RESULTS)
    out_dir.mkdir(parents=True, exist_ok=True)
    env = environment(tmp)
    arguments = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k not in ("results",)}
    note = arguments.pop("note", "") or ""
    data = {"bench": bench, "title": title, **env, "note": note, "args": arguments, **(extra or {}),
            "results": results}
    path = out_dir / f"{bench}.json"
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")
    header, rows = table
    m = env["machine"]
    lines = [
        f"# {title}",
        "",
        f"{env['date']}, commit {env['commit']}; {m['cpu']}, {m['cores']}, {m['memory']}, kernel {m['kernel']},"
        f" tmp on {m['tmp_filesystem']}; load average {m['load_average']}; python {env['versions']['python']},"
        f" torch {env['versions']['torch']}, transformers {env['versions']['transformers']}.",
        "",
    ]
    if note:
        lines += [f"Note: {note}", ""]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    path.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(f"\nresults written to {path} and {path.with_suffix('.md').name}")
    return path
