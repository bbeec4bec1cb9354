"""The web view works from an installed wheel: templates, script, styles and the vendored chart library with its
licence are package data (the pages fetch nothing from the network)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile

import pytest

from conftest import REPO


@pytest.mark.slow
def test_the_wheel_ships_the_web_views_files(tmp_path):
    tree = tmp_path / "tree"
    shutil.copytree(REPO / "src", tree / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, tree / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path / "dist"), str(tree)], check=True, capture_output=True, timeout=600)
    (wheel,) = (tmp_path / "dist").glob("ckptstore-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    ui = REPO / "src" / "ckptstore" / "ui"
    expected = {f"ckptstore/ui/{p.relative_to(ui).as_posix()}" for p in ui.rglob("*")
                if p.is_file() and "__pycache__" not in p.parts}
    assert expected <= names, sorted(expected - names)
    assert {"ckptstore/ui/static/vendor/uPlot.iife.min.js", "ckptstore/ui/static/vendor/uPlot.LICENSE",
            "ckptstore/ui/templates/run.html"} <= names


def test_pages_load_nothing_from_another_origin():
    ui = REPO / "src" / "ckptstore" / "ui"
    for path in [*ui.glob("templates/*.html"), ui / "static" / "app.js", ui / "static" / "style.css"]:
        text = path.read_text()
        assert "http://" not in text and "https://" not in text and "//cdn" not in text, path
