"""A real S3 API server for the tests: moto's server in a subprocess on a free 127.0.0.1 port, started once per
session and stopped after; each test gets a bucket of its own, the AWS variables that point the client at it, and
a blob cache and index folder of its own (XDG_CACHE_HOME in its tmp_path)."""

from __future__ import annotations

import itertools
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

_buckets = itertools.count(1)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class MotoServer:
    endpoint: str
    process: subprocess.Popen
    port: int

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id="testing",
                            aws_secret_access_key="testing", region_name="us-east-1")


def start_moto(port: int | None = None) -> MotoServer:
    port = port or free_port()
    exe = Path(sys.executable).with_name("moto_server")
    proc = subprocess.Popen([str(exe), "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    endpoint = f"http://127.0.0.1:{port}"
    # A fresh install compiles moto's thousands of modules on its first start: a minute or more on 2 cores.
    deadline = time.monotonic() + 240
    while True:
        try:
            urllib.request.urlopen(endpoint + "/moto-api/", timeout=1).close()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError("moto_server did not start") from None
            time.sleep(0.1)
    return MotoServer(endpoint, proc, port)


@pytest.fixture(scope="session")
def moto_server():
    server = start_moto()
    yield server
    server.stop()


def point_at(monkeypatch, endpoint: str, cache: Path) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    for var in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3", "CKPT_CACHE_DIR", "CKPT_CACHE_MAX_BYTES"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    monkeypatch.setenv("CKPT_REMOTE_LEASE_SECONDS", "6")


@pytest.fixture
def s3_url(moto_server, monkeypatch, tmp_path) -> str:
    """s3://BUCKET/store on the session's moto server: a new bucket, and this test's own cache folder."""
    bucket = f"ckpt-test-{os.getpid()}-{next(_buckets)}"
    moto_server.client().create_bucket(Bucket=bucket)
    point_at(monkeypatch, moto_server.endpoint, tmp_path / "xdg-cache")
    return f"s3://{bucket}/store"


def flip_object_bit(client, url: str, key: str) -> None:
    """Flip one bit of the object at `key` of the store at `url` on the server, keeping its size (bit rot in the
    bucket, where the store's own client and its caches never see it being written)."""
    bucket, _, prefix = url.split("://", 1)[1].partition("/")
    full = f"{prefix.strip('/')}/{key}" if prefix.strip("/") else key
    raw = bytearray(client.get_object(Bucket=bucket, Key=full)["Body"].read())
    raw[0] ^= 1
    client.put_object(Bucket=bucket, Key=full, Body=bytes(raw))


class TcpProxy:
    """A TCP relay in front of the server: stopping it is the server going away for the client (connections cut,
    new ones refused) while what the server stored stays, so a test can retry against the same bucket after."""

    def __init__(self, target_port: int, port: int | None = None) -> None:
        self.target_port = target_port
        self.port = port or free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._listener: socket.socket | None = None
        self._conns: list[socket.socket] = []
        self._lock = __import__("threading").Lock()

    def start(self) -> "TcpProxy":
        import threading

        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()
        return self

    def _accept(self, listener: socket.socket) -> None:
        import threading

        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port))
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(a: socket.socket, b: socket.socket) -> None:
        try:
            while data := a.recv(1 << 16):
                b.sendall(data)
        except OSError:
            pass
        finally:
            for s in (a, b):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def stop(self) -> None:
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        with self._lock:
            conns, self._conns = self._conns, []
        for s in conns:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()
