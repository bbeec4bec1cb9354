"""The figures the reliability and crash tests report: printed at the end of the run, and written with the machine,
the versions and the commit to $CKPT_FIGURES_OUT/reliability-<mode>.json (and .md) when that variable names a
folder, so that README quotes figures a run wrote down rather than figures copied by hand. CKPT_FIGURES_NOTE adds a
remark to that file (what else ran on the machine meanwhile, say).

    CKPT_FIGURES_OUT=bench/results pytest tests/reliability tests/crash    # writes reliability-default.json/.md
"""

from __future__ import annotations

import importlib.util
import json
import os
import time
from pathlib import Path

ENV = "CKPT_FIGURES_OUT"
REPO = Path(__file__).resolve().parents[2]
FIGURES: list[dict] = []
_reported = False
_STARTED = time.monotonic()  # imported by the reliability conftest, or the crash test, as the run starts


def record(title: str, text: str, data: dict | None = None) -> None:
    FIGURES.append({"title": title, "text": text, "data": data or {}})


def _bench_common():
    # bench/_common.py is not a package; it holds the one description of a machine that every figure carries.
    spec = importlib.util.spec_from_file_location("_bench_common", REPO / "bench" / "_common.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# Loaded when the run starts: it notes the commit and the load average then.
_common = _bench_common()


def _scratch() -> Path:
    # Where the stores of the kill and corruption tests live (conftest.fast_tmp): tmpfs when there is one.
    import tempfile

    shm = Path("/dev/shm")
    return shm if shm.is_dir() and os.access(shm, os.W_OK) else Path(tempfile.gettempdir())


def mode(config) -> str:
    long = config.getoption("--long", False) or os.environ.get("CKPT_LONG", "") not in ("", "0")
    return "long" if long else "default"


class _Reporter:
    def pytest_terminal_summary(self, terminalreporter, exitstatus, config):
        report(terminalreporter, exitstatus, mode(config))


def ensure_reporting(config) -> None:
    """For tests outside tests/reliability (tests/crash): report the figures at the end of the run even when the
    reliability conftest, whose hook does it, was not loaded. (A conftest.py in tests/crash would shadow the
    top-level `conftest` module the tests import helpers from.)"""
    if not config.pluginmanager.has_plugin("ckpt-figures"):
        config.pluginmanager.register(_Reporter(), "ckpt-figures")


def report(terminalreporter, exitstatus, mode: str) -> None:
    """Print the figures once (the reliability conftest and ensure_reporting both call this) and write them."""
    global _reported
    if _reported or not FIGURES:
        return
    _reported = True
    terminalreporter.section(f"reliability figures ({mode} mode)")
    for fig in FIGURES:
        terminalreporter.write_line(f"{fig['title']}: {fig['text']}")
    out = os.environ.get(ENV, "")
    if not out:
        return
    common = _common
    stats = {k: len(v) for k, v in terminalreporter.stats.items() if k in ("passed", "failed", "error", "skipped")}
    duration = round(time.monotonic() - _STARTED, 1)  # from the conftest's import: about the session's length
    data = {
        "bench": f"reliability-{mode}", **common.environment(_scratch()),
        "note": os.environ.get("CKPT_FIGURES_NOTE", ""), "mode": mode, "exit_status": int(exitstatus),
        "tests": stats, "duration_s": duration, "figures": FIGURES,
    }
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"reliability-{mode}.json"
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")
    m = data["machine"]
    lines = [f"# reliability figures ({mode} mode)", "",
             f"{data['date']}, commit {data['commit']}; {m['cpu']}, {m['cores']}, {m['memory']}, kernel {m['kernel']},"
             f" stores on {m['tmp_filesystem']}, load average {m['load_average']};"
             f" python {data['versions']['python']}, torch {data['versions']['torch']}; tests {stats} in about"
             f" {duration} s, exit status {int(exitstatus)}.", ""]
    if data["note"]:
        lines += [f"Note: {data['note']}", ""]
    lines += [f"- **{fig['title']}:** {fig['text']}" for fig in FIGURES]
    path.with_suffix(".md").write_text("\n".join(lines) + "\n")
    terminalreporter.write_line(f"figures written to {path}")
