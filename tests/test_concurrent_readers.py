"""Readers never starve behind a writer: a second Store on the same storage lists and shows checkpoints promptly,
and sees a consistent catalog, while a first one saves in a tight loop (from a thread, from another process, on
the memory and the S3 backends), while a writer is frozen in the middle of its commit, and while another process
holds the index's write lock.

The bound on a read (READ_BOUND) is generous: these are correctness tests (a read must not wait for the writer),
not timings. Before the fix a reader's refresh waited for the writer's commit lock and a reader's open for the
index's write lock, 60 s each, then failed with StoreLocked."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from ckptstore import Store
from conftest import REPO, make_tiny_bert
from reliability._harness import wait_until_stopped

READ_BOUND = 10.0  # seconds one read may take, however busy the machine: the writer must never be waited for
RUN = "loop"


def _read(reader: Store, most: Callable[[], int]) -> tuple[int, float]:
    """One read as `ckpt ui` and `ckpt ls`/`show` do it; checks the catalog it sees. Returns (count, seconds).
    `most`: the highest step the writer may have committed by the end of the read."""
    started = time.monotonic()
    reader.refresh()
    infos = reader.list(RUN)
    if infos:
        shown = reader.show(infos[0].id)
        assert shown.id == infos[0].id and shown.name == infos[0].name
    took = time.monotonic() - started
    names = [c.name for c in infos]
    assert len(set(names)) == len(names), names
    assert len({c.id for c in infos}) == len(infos)
    # The writer saves step 1, 2, 3, ... one after another: a consistent catalog holds steps 1..k, no gap, and no
    # step beyond what the writer can have committed (its saves acknowledged, plus the one committing now).
    steps = sorted(int(n.rsplit("-", 1)[1]) for n in names)
    assert steps == list(range(1, len(steps) + 1)), steps
    assert len(steps) <= most(), (steps, most())
    # One snapshot: `latest` is on exactly one of the checkpoints the same listing returns, once the first commit
    # has moved it (a commit indexes its checkpoint, then moves the tags).
    carrying = sum("latest" in c.tags for c in infos)
    assert carrying == 1 if len(infos) > 1 else carrying <= 1, [(c.name, c.tags) for c in infos]
    return len(infos), took


def _read_while(reader: Store, busy: Callable[[], bool], most: Callable[[], int]) -> list[float]:
    """Read until `busy` turns false; every read prompt, and no read sees fewer checkpoints than the one before."""
    times: list[float] = []
    seen = 0
    while busy():
        count, took = _read(reader, most)
        assert took < READ_BOUND, f"a read waited {took:.1f}s for the writer"
        assert count >= seen, f"the catalog went back from {seen} to {count} checkpoints"
        seen = count
        times.append(took)
    return times


def _save_in_a_thread(writer: Store, count: int) -> tuple[threading.Thread, list[str], list[BaseException]]:
    model = make_tiny_bert()
    acked: list[str] = []
    errors: list[BaseException] = []

    def loop() -> None:
        try:
            for step in range(1, count + 1):
                name = f"{RUN}/step-{step}"
                writer.save(model, name, metrics={"eval_loss": 1.0 / step})
                acked.append(name)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)

    thread = threading.Thread(target=loop, name="tight-loop-writer")
    thread.start()
    return thread, acked, errors


def _check_thread_case(writer: Store, open_reader: Callable[[], Store], count: int) -> None:
    thread, acked, errors = _save_in_a_thread(writer, count)
    try:
        while not acked and thread.is_alive():
            time.sleep(0.01)
        reader = open_reader()  # opened while the writer saves
        try:
            times = _read_while(reader, thread.is_alive, lambda: len(acked) + 1)
            assert times, "the writer finished before a single read"
            reader.refresh()
            assert {c.name for c in reader.list(RUN)} == set(acked)
        finally:
            reader.close()
    finally:
        thread.join(timeout=600)
    assert not errors, errors
    assert len(acked) == count


def test_reads_stay_prompt_while_a_thread_saves_in_a_tight_loop(tmp_path):
    root = tmp_path / "store"
    with Store.init(root) as writer:
        _check_thread_case(writer, lambda: Store.open(root), count=40)


def test_stores_opened_again_and_again_read_promptly_while_a_thread_saves(tmp_path):
    """`ckpt ls` and `ckpt show` open the store each time: opening the index never waits for the writer."""
    root = tmp_path / "store"
    with Store.init(root) as writer:
        thread, acked, errors = _save_in_a_thread(writer, 30)
        try:
            opened = 0
            while thread.is_alive() or not opened:
                started = time.monotonic()
                with Store.open(root) as reader:
                    _read(reader, lambda: len(acked) + 1)
                took = time.monotonic() - started
                assert took < READ_BOUND, f"opening and reading waited {took:.1f}s for the writer"
                opened += 1
        finally:
            thread.join(timeout=600)
        assert not errors, errors


def test_reads_stay_prompt_on_the_memory_backend(tmp_path):
    from conformance.memory_backend import MemoryBackend

    backend = MemoryBackend()
    try:
        with Store.on(backend, create=True) as writer:
            _check_thread_case(writer, lambda: Store.on(backend), count=30)
    finally:
        backend.close()


def test_reads_stay_prompt_on_an_s3_store(s3_url):
    with Store.init(s3_url) as writer:
        _check_thread_case(writer, lambda: Store.open(s3_url), count=6)


# -- another process ---------------------------------------------------------------------------------------------

_WRITER = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, sys.argv[3])
    from conftest import make_tiny_bert
    from ckptstore import Store

    model = make_tiny_bert()
    with Store.open(sys.argv[1]) as store:
        for step in range(1, int(sys.argv[2]) + 1):
            name = f"loop/step-{step}"
            store.save(model, name, metrics={"eval_loss": 1.0 / step})
            print(name, flush=True)
    """
)


def _writer_process(root: Path, count: int, env: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(root), str(count), str(REPO / "tests")],
        env={**os.environ, "PYTHONPATH": str(REPO / "src"), **(env or {})}, stdout=subprocess.PIPE, text=True,
    )


def test_reads_stay_prompt_while_another_process_saves_in_a_tight_loop(tmp_path):
    root = tmp_path / "store"
    Store.init(root).close()
    proc = _writer_process(root, 40)
    acked: set[str] = set()

    def collect() -> None:
        for line in proc.stdout:  # type: ignore[union-attr]
            acked.add(line.strip())

    collector = threading.Thread(target=collect)
    collector.start()
    try:
        while not acked and proc.poll() is None:
            time.sleep(0.01)
        with Store.open(root) as reader:
            # Names reach this process through a pipe, behind the saves: only the total bounds a listing.
            times = _read_while(reader, lambda: proc.poll() is None, lambda: 40)
            assert times, "the writer finished before a single read"
            assert proc.wait(timeout=600) == 0
            collector.join()
            reader.refresh()
            assert {c.name for c in reader.list(RUN)} == acked and len(acked) == 40
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        collector.join()
        proc.stdout.close()  # type: ignore[union-attr]


def test_a_writer_frozen_in_its_commit_holds_up_no_reader(tmp_path):
    """SIGSTOP between the name claim and the index update (the commit lock held): readers open, list, show and
    refresh at once, and see the checkpoint the claim committed."""
    root = tmp_path / "store"
    Store.init(root).close()
    proc = _writer_process(root, 3, env={"CKPT_FAILPOINT": "index.update:stop@3"})
    try:
        wait_until_stopped(proc.pid, timeout=120)
        done = {"loop/step-1", "loop/step-2"}  # acknowledged before the stop (the third save is the frozen one)
        for _ in range(3):
            started = time.monotonic()
            with Store.open(root) as reader:
                count, took = _read(reader, lambda: 3)
                assert took < READ_BOUND
                names = {c.name for c in reader.list(RUN)}
            assert time.monotonic() - started < READ_BOUND
            # Claimed, so committed: the frozen save is visible, its tags not yet moved.
            assert names == done | {"loop/step-3"}
    finally:
        proc.send_signal(signal.SIGCONT)
        out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0 and out.split() == ["loop/step-1", "loop/step-2", "loop/step-3"]
    with Store.open(root) as store:
        assert store.resolve("loop:latest") == store.resolve("loop/step-3")


def test_a_store_opens_and_reads_while_another_process_holds_the_index_write_lock(tmp_path):
    """As a writer stopped inside an index transaction would: readers must neither wait for it nor fail."""
    root = tmp_path / "store"
    with Store.init(root) as store:
        model = make_tiny_bert()
        for step in (1, 2):
            store.save(model, f"{RUN}/step-{step}", metrics={"eval_loss": 1.0 / step})
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(
            """
            import sqlite3, sys, time
            db = sqlite3.connect(sys.argv[1], isolation_level=None)
            db.execute("BEGIN IMMEDIATE")
            print("held", flush=True)
            time.sleep(300)
            """), str(root / "index.sqlite")],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"  # type: ignore[union-attr]
        probe = sqlite3.connect(root / "index.sqlite", timeout=0)
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            probe.execute("BEGIN IMMEDIATE")
        probe.close()
        started = time.monotonic()
        with Store.open(root) as reader:
            count, took = _read(reader, lambda: 2)
            assert count == 2
            assert reader.resolve(f"{RUN}:latest") == reader.resolve(f"{RUN}/step-2")
        assert time.monotonic() - started < READ_BOUND
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()  # type: ignore[union-attr]

