"""The storage seam's contract, run against every backend: what the repository above it relies on."""

from __future__ import annotations

import threading

import blake3
import pytest

from ckptstore._backend.local import LocalBackend
from ckptstore._backend.protocols import Blobs, Coordination, Documents
from ckptstore.errors import CorruptObject, StoreLocked

from .memory_backend import MemoryBackend


@pytest.fixture(params=["local", "memory"])
def backend(request, tmp_path):
    if request.param == "local":
        yield LocalBackend(tmp_path / "store")
    else:
        b = MemoryBackend()
        yield b
        b.close()


def _digest(data: bytes) -> str:
    return blake3.blake3(data).hexdigest()


def test_backends_fill_the_protocols(backend):
    assert isinstance(backend.blobs, Blobs)
    assert isinstance(backend.documents, Documents)
    assert isinstance(backend.coordination, Coordination)


def test_blobs_are_visible_only_after_commit_and_abort_leaves_nothing(backend):
    a, b = b"a" * 1000, b"bee" * 77
    session = backend.blobs.session()
    assert session.put(_digest(a), a) is True
    assert session.put(_digest(a), a) is False  # staged once
    assert backend.blobs.size(_digest(a)) is None
    session.commit()
    assert backend.blobs.size(_digest(a)) == 1000
    assert backend.blobs.read(_digest(a), 10, 20) == a[10:20]
    assert backend.blobs.read(_digest(a)) == a
    assert backend.blobs.session().put(_digest(a), a) is False  # already stored
    aborted = backend.blobs.session()
    aborted.put(_digest(b), b)
    aborted.abort()
    assert backend.blobs.size(_digest(b)) is None
    assert {d for d, _, _ in backend.blobs.iter()} == {_digest(a)}
    backend.blobs.delete(_digest(a))
    assert backend.blobs.size(_digest(a)) is None
    with pytest.raises(CorruptObject, match="missing"):
        backend.blobs.read(_digest(a))


def test_map_is_zero_copy_where_local_and_none_elsewhere(backend):
    data = bytes(range(256)) * 64
    s = backend.blobs.session()
    s.put(_digest(data), data)
    s.commit()
    view = backend.blobs.map([(_digest(data), len(data))])
    if backend.blobs.local_path(_digest(data)) is None:
        assert view is None
    else:
        assert bytes(view) == data


def test_documents_create_if_absent_and_compare_and_swap(backend):
    docs = backend.documents
    assert docs.get("refs/tags/run/best") is None
    assert docs.create("refs/tags/run/best", b"one") is True
    assert docs.create("refs/tags/run/best", b"two") is False  # If-None-Match
    data, v1 = docs.get("refs/tags/run/best")
    assert data == b"one"
    assert docs.replace("refs/tags/run/best", b"three", v1) is True
    assert docs.replace("refs/tags/run/best", b"four", v1) is False  # stale version: someone moved it
    data, v3 = docs.get("refs/tags/run/best")
    assert data == b"three" and v3 != v1
    assert docs.remove("refs/tags/run/best", expected=v1) is False
    assert docs.remove("refs/tags/run/best", expected=v3) is True
    assert docs.remove("refs/tags/run/best") is False
    assert docs.replace("refs/tags/run/best", b"x", v3) is False  # gone


def test_documents_list_by_prefix(backend):
    docs = backend.documents
    for key in ("names/a/a~1", "names/a/a~2", "names/ab/ab~1", "checkpoints/x.json"):
        assert docs.create(key, b"1")
    assert sorted(docs.list("names/a/")) == ["names/a/a~1", "names/a/a~2"]
    assert sorted(docs.list("names/")) == ["names/a/a~1", "names/a/a~2", "names/ab/ab~1"]
    assert sorted(docs.list("names/a")) == ["names/a/a~1", "names/a/a~2", "names/ab/ab~1"]
    assert list(docs.list("nothing/")) == []


def test_only_one_of_many_concurrent_creates_wins(backend):
    wins = []

    def claim(i: int) -> None:
        if backend.documents.create("names/run/run~step-1", str(i).encode()):
            wins.append(i)

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(wins) == 1
    assert backend.documents.get("names/run/run~step-1")[0] == str(wins[0]).encode()


def test_exclusive_lock_excludes_and_times_out(backend):
    coord = backend.coordination
    held = threading.Event()
    release = threading.Event()

    def holder():
        with coord.lock("objects", exclusive=True):
            held.set()
            release.wait(10)

    t = threading.Thread(target=holder)
    t.start()
    held.wait(10)
    with pytest.raises(StoreLocked):
        with coord.lock("objects", exclusive=False, timeout=0.2):
            pass
    release.set()
    t.join()
    with coord.lock("objects", exclusive=False, timeout=1):
        with coord.lock("objects", exclusive=False, timeout=1):  # shared locks share
            pass


def test_leases_live_while_held(backend):
    coord = backend.coordination
    assert coord.live_leases("inuse/") == set()
    with coord.lease("inuse/abc"):
        assert coord.live_leases("inuse/") == {"inuse/abc"}
    assert coord.live_leases("inuse/") == set()
