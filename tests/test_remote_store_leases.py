"""Leases of a store in object storage on the real moto_server: a lease released while its heartbeat was renewing it
must not stay live (a prune would keep its checkpoint as in use, for a whole lease time, with no holder)."""

from __future__ import annotations

import threading
import time

from ckptstore import Store


def test_a_lease_released_while_its_heartbeat_renews_it_does_not_stay_live(s3_url, monkeypatch):
    store = Store.init(s3_url)
    coord = store._repo.backend.coordination
    docs = coord.docs
    renewing, released, renewed = threading.Event(), threading.Event(), threading.Event()
    real_put = docs.put

    # The real PUT, held back only to order it after the release (as a slow request would be).
    def put(key: str, data: bytes) -> None:
        beat = threading.current_thread().name == "ckpt-lease-heartbeat"
        if beat and key.startswith("leases/"):
            renewing.set()
            released.wait(30)
        real_put(key, data)
        if beat:
            renewed.set()

    monkeypatch.setattr(docs, "put", put)
    with coord.lease("inuse/some-checkpoint"):
        assert renewing.wait(30)  # the heartbeat (every third of the 6 s lease) is renewing it now
    released.set()
    assert renewed.wait(30)
    deadline = time.monotonic() + 3  # well inside the 6 s a renewed lease would live
    while coord.live_leases("inuse/"):
        assert time.monotonic() < deadline, "the released lease was written back live by its heartbeat"
        time.sleep(0.1)
    store.close()
