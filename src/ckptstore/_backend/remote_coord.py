"""Coordination on an object store: locks and leases as documents with an expiry, kept fresh by a heartbeat.

There is no flock between machines, and no process death the server could notice, so every hold is a promise with
a deadline: its holder renews it every third of the lease time from a background thread, and anyone may clear a
hold whose deadline has passed (its holder died, or lost the network for a whole lease). Clocks of the machines
must agree to within a small part of the lease time (60 s by default, ``CKPT_REMOTE_LEASE_SECONDS``).

- a lock ``locks/<name>`` is one JSON document ``{"holders": {token: {"x": exclusive, "until": t}}}`` changed
  only by compare-and-swap on its ETag: taking it adds this holder when no holder conflicts (an exclusive hold
  conflicts with every other), releasing it removes the holder. The repository's locks keep their meaning:
  saves hold ``objects`` shared, gc exclusive; commits hold ``commit``.
- a lease ``leases/<key>/<token>`` is a document of its own holding its deadline; `live_leases` lists them and
  removes the expired ones.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from ..errors import StoreLocked


class RemoteCoordination:
    def __init__(self, docs: Any, *, ttl: float, url: str) -> None:
        self.docs = docs
        self.ttl = ttl
        self.url = url
        self._held: dict[str, tuple[str, bool]] = {}  # token -> (lock name or lease key, is a lease)
        self._lock = threading.Lock()
        self._beat: threading.Thread | None = None
        self._stop = threading.Event()

    # -- heartbeat ---------------------------------------------------------------------------------------------------
    def _start_heartbeat(self) -> None:
        with self._lock:
            if self._beat is not None and self._beat.is_alive():
                return
            self._stop.clear()
            self._beat = threading.Thread(target=self._heartbeat, name="ckpt-lease-heartbeat", daemon=True)
            self._beat.start()

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.ttl / 3):
            with self._lock:
                held = list(self._held.items())
            for token, (name, is_lease) in held:
                try:
                    if is_lease:
                        self.docs.put(name + "/" + token, _deadline(self.ttl))
                        with self._lock:
                            released = token not in self._held
                        if released:  # released while this beat was renewing it: the beat wrote it back, live
                            self.docs.remove(name + "/" + token)
                    else:
                        self._update(name, lambda holders, t=token: _renew(holders, t, self.ttl), wait=False)
                except Exception:  # noqa: BLE001 - a missed beat is retried at the next; the deadline has slack
                    pass

    def close(self) -> None:
        self._stop.set()

    @contextlib.contextmanager
    def _held_while(self, token: str, name: str, *, is_lease: bool, release: Callable[[], object]) -> Iterator[None]:
        """The heartbeat renews the hold `token` (of the lock `name`, or in the lease folder `name`) while the
        caller's block runs; then it stops, and `release` gives the hold up, whatever happened in the block."""
        with self._lock:
            self._held[token] = (name, is_lease)
        self._start_heartbeat()
        try:
            yield
        finally:
            with self._lock:
                self._held.pop(token, None)
            release()

    # -- locks -------------------------------------------------------------------------------------------------------
    def _update(self, name: str, change, *, wait: bool) -> bool:
        """Apply `change` (holders -> new holders, or None when it cannot apply now) by compare-and-swap."""
        key = f"locks/{name}"
        while True:
            got = self.docs.get(key)
            holders = _parse(got[0]) if got else {}
            now = time.time()
            live = {t: h for t, h in holders.items() if h.get("until", 0) > now}
            new = change(live)
            if new is None:
                return False
            data = json.dumps({"holders": new}, sort_keys=True).encode()
            ok = self.docs.create(key, data) if got is None else self.docs.replace(key, data, got[1])
            if ok:
                return True
            # Someone else changed it between the read and the write: read again.

    @contextlib.contextmanager
    def lock(self, name: str, *, exclusive: bool = True, timeout: float = 60.0) -> Iterator[None]:
        token = secrets.token_hex(8)

        def take(holders: dict) -> dict | None:
            if any(h.get("x") for h in holders.values()) or (exclusive and holders):
                return None
            return {**holders, token: {"x": exclusive, "until": time.time() + self.ttl}}

        deadline = time.monotonic() + timeout
        delay = 0.05
        while not self._update(name, take, wait=True):
            if time.monotonic() >= deadline:
                raise StoreLocked(
                    f"Timed out after {timeout:.0f}s waiting for the {name} lock of the store {self.url} (held by"
                    f" another process; a holder that died frees it within {self.ttl:.0f}s)."
                )
            time.sleep(delay)
            delay = min(delay * 2, 1.0)

        def release() -> None:
            self._update(name, lambda holders: _without(holders, token), wait=False)

        with self._held_while(token, name, is_lease=False, release=release):
            yield

    # -- leases ------------------------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def lease(self, key: str) -> Iterator[None]:
        token = secrets.token_hex(8)
        folder = f"leases/{key}"
        self.docs.put(f"{folder}/{token}", _deadline(self.ttl))

        def release() -> None:
            with contextlib.suppress(Exception):  # an expired lease document is cleared by the next live_leases
                self.docs.remove(f"{folder}/{token}")

        with self._held_while(token, folder, is_lease=True, release=release):
            yield

    def live_leases(self, prefix: str) -> set[str]:
        live = set()
        now = time.time()
        for key in list(self.docs.list(f"leases/{prefix}")):
            got = self.docs.get(key)
            if got is None:
                continue
            try:
                until = float(got[0])
            except ValueError:
                until = 0.0
            item = key[len("leases/"):].rsplit("/", 1)[0]
            if until > now:
                live.add(item)
            else:
                with contextlib.suppress(Exception):
                    self.docs.remove(key)  # its holder is gone
        return live


def _deadline(ttl: float) -> bytes:
    return f"{time.time() + ttl:.3f}".encode()


def _parse(data: bytes) -> dict:
    try:
        holders = json.loads(data).get("holders", {})
    except (ValueError, AttributeError):
        return {}
    return holders if isinstance(holders, dict) else {}


def _renew(holders: dict, token: str, ttl: float) -> dict | None:
    if token not in holders:
        return None  # released meanwhile (or expired and cleared: the hold is lost)
    return {**holders, token: {**holders[token], "until": time.time() + ttl}}


def _without(holders: dict, token: str) -> dict:
    return {t: h for t, h in holders.items() if t != token}
