"""How fast `ckpt ui` answers on a store of 20 runs, one of them 1,000 checkpoints long.

    .venv/bin/python bench/bench_ui.py [--quick] [--repeat N] [--tmp-dir DIR] [--quiet-timeout S]

The store: tiny synthetic models (4 linear layers of 16x16, one layer changed per step, saved through the public
`Store.save`), a run `big` of 1,000 checkpoints (200 with --quick) and 19 runs of 20 (5 runs of 10 with --quick).
A real `ckpt ui` process serves it; figures are medians of --repeat rounds, each round taking the items in an order
rotated by one from the last (bench/_common.py), after waiting for a quiet machine.

- Pages, in headless Chromium (/usr/bin/chromium, a fresh browser context each time, so nothing is cached): first
  contentful paint and, on the run page, the moment its metric chart is drawn (1,000 points), from the start of
  the navigation. Baseline: the same run page's HTML saved to a file, scripts removed, opened from disk (what the
  browser needs to lay out that table at all).
- API: the wall time of each GET under /api/ through HTTP. Baseline: a static file from the same server (an HTTP
  round trip that does no work). The server keeps du and the bytes per run until the store changes, so /api/runs
  is also timed right after a save (made by this process, seen by the server within 2 s).
Targets: the run page drawn within 1 s, every API within 100 ms (the gc estimate, which reads every manifest, is
reported but not held to it).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, add_arguments, in_turn, timed, use_quiet, write_results  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]


# The first contentful paint, once the browser has recorded it (it may come after the load event).
FCP_JS = """() => new Promise((resolve) => new PerformanceObserver((list, obs) => {
  const e = list.getEntriesByName('first-contentful-paint')[0];
  if (e) { obs.disconnect(); resolve(e.startTime); }
}).observe({type: 'paint', buffered: true}))"""


def build_store(path: Path, big: int, runs: int, per_run: int) -> float:
    """The store; returns the seconds it took. The big run and the others are saved by two threads."""
    import torch

    from ckptstore import Store

    t0 = time.perf_counter()
    store = Store.init(path)

    def save_run(s: Store, run: str, count: int, seed: int) -> None:
        torch.manual_seed(seed)
        model = torch.nn.Sequential(*[torch.nn.Linear(16, 16) for _ in range(4)])
        for i in range(count):
            with torch.no_grad():
                model[i % 4].weight.add_(0.01)
            step = (i + 1) * 10
            loss = 2.0 / (1 + i / 50) + 0.05 * ((i * 7919) % 13) / 13  # falls, with noise
            s.save(model, f"{run}/step-{step}", metrics={"eval_loss": round(loss, 4),
                                                          "eval_accuracy": round(1 - loss / 3, 4)},
                   message=f"{run} step {step}")

    # One after another: a second Store saving from a thread beside this one waited over 60 s for the index
    # while this loop kept it busy (a bench of the pages, not of concurrent saves).
    save_run(store, "big", big, 0)
    for r in range(1, runs):
        save_run(store, f"run-{r:02d}", per_run, r)
    store.close()
    return time.perf_counter() - t0


class Server:
    def __init__(self, store: Path) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "ckptstore", "ui", "--store", str(store), "--port", "0"],
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                                     env={**os.environ, "PYTHONPATH": str(REPO / "src")})
        self.url = self.proc.stdout.readline().strip().rstrip("/")
        for _ in range(300):
            try:
                get(self.url + "/api/runs")
                break
            except OSError:
                time.sleep(0.1)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)
        self.proc.stdout.close()


def get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=120) as r:
        return r.read()


def median_ms(xs: list[float]) -> float:
    return round(statistics.median(xs) * 1000, 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(ap, repeat=7)
    ap.add_argument("--quick", action="store_true", help="200 checkpoints in the big run, 5 runs of 10")
    args = ap.parse_args()
    big, runs, per_run = (200, 5, 10) if args.quick else (1000, 20, 20)
    tmp = args.tmp_dir / "bench_ui"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    store_path = tmp / "store"
    print(f"building the store: big run {big}, {runs - 1} runs of {per_run} ...", flush=True)
    build_s = build_store(store_path, big, runs, per_run)
    print(f"  built in {build_s:.0f} s", flush=True)
    quiet = use_quiet(args.quiet_timeout, tmp)

    server = Server(store_path)
    mid = (big // 2) * 10
    api = {
        f"GET /api/runs ({runs} runs)": "/api/runs",
        f"GET /api/runs/big ({big} checkpoints)": "/api/runs/big",
        "GET /api/checkpoints/big:latest": "/api/checkpoints/big:latest",
        "GET /api/diff (two checkpoints of big)": f"/api/diff?a=big/step-{mid}&b=big:latest",
        "GET /api/store": "/api/store",
        "GET /api/store/gc (dry run, reads every manifest)": "/api/store/gc",
    }
    baseline_url = "/static/app.js"
    timings: dict[str, list[float]] = {k: [] for k in [*api, "baseline"]}
    items = ["baseline", *api]
    try:
        for url in (baseline_url, *api.values()):  # warm: the first request of each pays imports and caches
            get(server.url + url)
        for i in range(args.repeat):
            for key in in_turn(items, i):
                url = baseline_url if key == "baseline" else api[key]
                seconds, _ = timed(lambda: get(server.url + url))
                timings[key].append(seconds)

        # The runs and store figures above come from totals the server keeps until the store changes; a request
        # right after a save pays for computing them again.
        from ckptstore import Store

        after_save: list[float] = []
        with Store.open(store_path) as writer:
            import torch

            for i in range(args.repeat):
                writer.save(torch.nn.Linear(4, 4), f"run-01/extra-{i}", metrics={"eval_loss": 1.0})
                time.sleep(2.5)  # the server sees other processes' saves within 2 s
                seconds, _ = timed(lambda: get(server.url + "/api/runs"))
                after_save.append(seconds)
        timings["GET /api/runs, first after a save"] = after_save
        api["GET /api/runs, first after a save"] = "/api/runs"

        from playwright.sync_api import sync_playwright

        pages = {"run page /runs/big": "/runs/big", "runs page /": "/", "checkpoint page": "/c/big:latest",
                 "store page": "/store"}
        static_html = tmp / "run-page-static.html"
        html = get(server.url + "/runs/big").decode()
        html = re.sub(r"<script\b.*?</script>", "", html, flags=re.S)
        html = html.replace('href="/static/', f'href="{server.url}/static/')
        static_html.write_text(html)
        paint: dict[str, list[float]] = {k: [] for k in [*pages, "baseline"]}
        drawn: list[float] = []
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            for i in range(args.repeat):
                for key in in_turn(["baseline", *pages], i):
                    context = browser.new_context(viewport={"width": 1280, "height": 900})
                    page = context.new_page()
                    target = static_html.as_uri() if key == "baseline" else server.url + pages[key]
                    quiet.wait()
                    page.goto(target, wait_until="load")
                    if key == "run page /runs/big":
                        page.wait_for_selector("#metric-chart[data-drawn-at]")
                        drawn.append(float(page.get_attribute("#metric-chart", "data-drawn-at")) / 1000)
                        assert page.get_attribute("#metric-chart", "data-points") == str(big)
                    fcp = page.evaluate(FCP_JS)
                    paint[key].append(fcp / 1000)
                    context.close()
            browser.close()
    finally:
        server.stop()

    base_api = median_ms(timings["baseline"])
    rows = []
    results: dict = {"build_seconds": round(build_s, 1), "checkpoints": big + (runs - 1) * per_run,
                     "big_run": big, "runs": runs, "api_ms": {}, "paint_ms": {}}
    base_paint = median_ms(paint["baseline"])
    run_drawn = median_ms(drawn)
    for key in pages:
        ms = median_ms(paint[key])
        results["paint_ms"][key] = ms
        rows.append([f"{key}: first contentful paint", f"static HTML from disk {base_paint} ms", f"{ms} ms",
                     f"{ms / base_paint:.2f}x", "<= 1000 ms: " + ("met" if ms <= 1000 else "missed")])
        if key == "run page /runs/big":
            results["paint_ms"]["run page chart drawn"] = run_drawn
            rows.append([f"run page: chart of {big} points drawn", f"static HTML from disk {base_paint} ms",
                         f"{run_drawn} ms", f"{run_drawn / base_paint:.2f}x",
                         "<= 1000 ms: " + ("met" if run_drawn <= 1000 else "missed")])
    for key in api:
        ms = median_ms(timings[key])
        results["api_ms"][key] = ms
        target = ("n/a (reads every manifest)" if "gc" in key else
                  "<= 100 ms: " + ("met" if ms <= 100 else "missed"))
        rows.append([key, f"static file {base_api} ms", f"{ms} ms", f"{ms / base_api:.1f}x", target])
    results["baseline_static_file_ms"] = base_api
    results["baseline_static_html_paint_ms"] = base_paint
    results["quiet"] = quiet.summary()
    title = f"ckpt ui on a store of {runs} runs, one of {big} checkpoints (median of {args.repeat})"
    write_results("bench_ui" + ("-quick" if args.quick else ""), tmp=tmp, args=args, results=results,
                  table=(["what", "baseline", "ckpt ui", "ratio", "target"], rows), title=title,
                  extra={"quiet_note": quiet.describe()})
    for row in rows:
        print(" | ".join(str(c) for c in row))
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
