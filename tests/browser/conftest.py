"""Real headless Chromium (Debian's `chromium`, driven by Playwright for Python) against a real `ckpt ui` process.

Without Chromium the browser tests skip, except in CI (CI=true), where they fail: a CI that stopped installing the
browser must not go green by testing nothing."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

CHROMIUM = os.environ.get("CKPT_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]


def _unavailable(why: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{why}: CI must run the browser tests (apt-get install -y chromium; pip install playwright)")
    pytest.skip(why)


@pytest.fixture(scope="session")
def browser():
    if not (Path(CHROMIUM).is_file() or shutil.which(CHROMIUM)):
        _unavailable(f"no Chromium at {CHROMIUM}")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("playwright is not installed")
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser):
    """A fresh page that records console errors and uncaught exceptions (`page.errors`)."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    p = context.new_page()
    p.errors = []
    p.on("console", lambda msg: p.errors.append(f"console.{msg.type}: {msg.text}") if msg.type == "error" else None)
    p.on("pageerror", lambda exc: p.errors.append(f"pageerror: {exc}"))
    yield p
    context.close()


class UiServer:
    def __init__(self, store: Path, *args: str) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen([sys.executable, "-m", "ckptstore", "ui", "--store", str(store), "--port", "0",
                                      *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        line = self.proc.stdout.readline().strip()
        if not line.startswith("http://"):
            self.stop()
            raise AssertionError(f"ckpt ui did not print its URL: {line!r} {self.proc.stderr.read()}")
        self.url = line.rstrip("/")
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(self.url + "/api/runs", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        err = self.proc.stderr.read()
        self.proc.stdout.close()
        self.proc.stderr.close()
        return err


@pytest.fixture
def ui_server():
    """A factory: ui_server(store_path, *extra_args) -> a running `ckpt ui` (its `.url`), stopped after the test."""
    servers = []

    def start(store: Path, *args: str) -> UiServer:
        server = UiServer(store, *args)
        servers.append(server)
        return server

    yield start
    for s in servers:
        s.stop()


@pytest.fixture(scope="session")
def screenshots(tmp_path_factory) -> Path:
    """Where the tests save a screenshot of each page: $CKPT_SCREENSHOTS (docs/screenshots for the committed ones),
    else a temporary folder."""
    target = os.environ.get("CKPT_SCREENSHOTS")
    path = Path(target) if target else tmp_path_factory.mktemp("screenshots")
    path.mkdir(parents=True, exist_ok=True)
    return path
