"""`ckpt ui` as a real process: the URL it prints is served, a non-loopback --host is warned about, a port in use is
one clear error, and SIGTERM stops it."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request

import pytest

pytest.importorskip("uvicorn")


def _start(store, *args):
    return subprocess.Popen([sys.executable, "-m", "ckptstore", "ui", "--store", str(store), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})


def _stop(proc) -> tuple[int, str]:
    proc.send_signal(signal.SIGTERM)
    try:
        code = proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    err = proc.stderr.read()
    proc.stdout.close()
    proc.stderr.close()
    return code, err


def test_serves_on_loopback_and_stops_on_sigterm(store, tiny_bert):
    store.save(tiny_bert(), "r/step-1", metrics={"eval_loss": 0.5})
    proc = _start(store.root, "--port", "0")
    url = proc.stdout.readline().strip()
    assert url.startswith("http://127.0.0.1:") and url.endswith("/")
    with urllib.request.urlopen(url + "api/runs", timeout=30) as r:
        assert [x["run"] for x in json.loads(r.read())["runs"]] == ["r"]
    # A page of another site resolving its name to 127.0.0.1 sends its own Host: refused.
    req = urllib.request.Request(url + "api/runs", headers={"Host": "evil.example"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(req, timeout=30)
    assert refused.value.code == 400
    refused.value.close()
    code, err = _stop(proc)
    # uvicorn shuts down cleanly, then re-raises the signal so the parent sees how the process ended.
    assert code == -signal.SIGTERM and "Traceback" not in err
    assert f"at {url} (read-only; Ctrl-C to stop)" in err
    assert "warning" not in err


def test_a_host_that_is_not_loopback_is_warned_about(store, tiny_bert):
    store.save(tiny_bert(), "r/step-1")
    proc = _start(store.root, "--host", "0.0.0.0", "--port", "0", "--allow-write")
    url = proc.stdout.readline().strip()
    with urllib.request.urlopen(url + "api/runs", timeout=30) as r:
        assert r.status == 200
    code, err = _stop(proc)
    assert "warning: listening on 0.0.0.0, not a loopback address" in err
    assert "and change it (--allow-write)" in err


def test_a_port_in_use_is_one_clear_error(store, ckpt):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        result = ckpt("ui", "--port", str(port), store=store.root)
    assert result.code == 1
    assert f"error: Port {port} on 127.0.0.1 is in use." in result.err and "--port 0" in result.err
