# Two entry points a fresh machine needs: `make demo` and `make test` (each installs first).
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip

.PHONY: install demo test test-fast bench browser

install: $(VENV)/.installed

# torch is pinned to the CPU wheel that lies on this machine's disk; an unpinned torch pulls a multi-GB CUDA build.
$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[test,demo]'
	touch $@

demo: install
	HF_HUB_OFFLINE=1 $(PY) demo/demo.py

# The web view's tests drive a real headless Chromium: Debian's package, installed here when missing (as root).
browser:
	@command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } || \
	  { echo "make test needs Debian's chromium for the web view's tests: sudo apt-get install chromium" >&2; exit 1; }

# The layer rules first (imports only downward; apps use the public API), then the suite.
test: install browser
	$(VENV)/bin/lint-imports --no-cache
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q -p no:cacheprovider

bench: install
	$(PY) bench/bench_store.py
