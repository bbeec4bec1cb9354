"""Four processes saving into one store (two into the same run) while prune and gc run in a loop; a writer paused
(SIGSTOP) before its commit. No acknowledged checkpoint lost, no manifest with a missing blob, and gc never collects
the blobs of a save that has not committed yet."""

from __future__ import annotations

import os
import signal

import pytest

from ckptstore import Store, StoreLocked

from ._harness import check_store, read_acks, wait_until_stopped

pytestmark = pytest.mark.crash

POLICY = {"keep_last": 2}


def test_four_writers_with_prune_and_gc_looping(forkserver, fast_path, sources, source_digests, scale, figure):
    from ckptstore.policies import RetentionPolicy

    root = fast_path / "store"
    with Store.init(root, chunk_bytes=8192) as store:
        # Run "a" carries its policy, so its two writers prune each other on every save; the janitor prunes
        # "b" and "c" from outside.
        store.set_policy("a", RetentionPolicy(**POLICY))
    count = scale.pick(6, 40)
    srcs = [str(p) for p in sources]
    writers = [("a", "w0-"), ("a", "w1-"), ("b", ""), ("c", "")]
    acks = [fast_path / f"ack-{i}" for i in range(len(writers))]
    spawned = [
        forkserver.spawn("writer", store=str(root), run=run, prefix=prefix, srcs=srcs[i:] + srcs[:i], count=count,
                         ack=str(acks[i]), metric_seed=i)
        for i, (run, prefix) in enumerate(writers)
    ]
    stop = fast_path / "stop"
    janitor_ack = fast_path / "ack-janitor"
    janitor = forkserver.spawn("janitor", store=str(root), runs=["b", "c"], stop=str(stop),
                               ack=str(janitor_ack), policy=POLICY)
    outcomes = [forkserver.wait(s, timeout=600) for s in spawned]
    stop.touch()
    janitor_out = forkserver.wait(janitor, timeout=120)
    for out in [*outcomes, janitor_out]:
        assert out.code == 0, out.error and out.error["traceback"]

    # What each acknowledged checkpoint must export: the source folder its writer saved.
    expected: dict[str, dict[str, str]] = {}
    for i, ack in enumerate(acks):
        saved, _ = read_acks(ack)
        assert len(saved) == count
        rotated = sources[i:] + sources[:i]
        for name in saved:
            step = int(name.rsplit("-", 1)[1])
            expected[name] = source_digests[rotated[(step - 1) % len(rotated)]]
    _, deleted = read_acks(janitor_ack)
    for name in deleted:
        expected.pop(name, None)
    # Of run "a", the policy keeps the last two: the two writers' final steps. The others may be gone.
    maybe = {n: d for n, d in expected.items() if n.startswith("a/") and not n.endswith(f"step-{count}")}
    for name in maybe:
        del expected[name]
    result = check_store(root, expected, maybe=maybe, gone=set(deleted), scratch=fast_path)
    # Beside the last two, retention keeps the run's best (lowest eval_loss seen): never pruned, so still a:best.
    with Store.open(root) as store:
        best = store.info("a:best")
        assert best.metrics["eval_loss"] == min(c.metrics["eval_loss"] for c in store.list("a"))
    extra = {n for n in result.listed - set(expected) if n.startswith("a/")} - {best.name}
    assert not extra, f"run a kept more than its policy and its best: {sorted(extra)}"
    assert not result.problems, result.problems
    assert deleted, "prune never removed anything: the test did not exercise concurrent deletes"
    stats = janitor_out.value
    figure("concurrency", f"4 writers x {count} saves (2 into one run whose policy prunes on every save) with prune"
           f" + gc looping ({stats['rounds']} rounds, {stats['gc_locked']} gc runs found the store busy):"
           f" {4 * count - len(result.listed)} pruned, {len(result.listed)} kept, all byte-exact, verify clean")


@pytest.mark.parametrize("pause_at", ["blob.sync", "blob.rename@3", "manifest.write"])
def test_gc_never_collects_the_blobs_of_a_paused_writer(pause_at, forkserver, fast_path, sources, source_digests):
    """The writer stops itself (SIGSTOP) with its new blobs still in tmp/, half renamed into objects/, or all in
    place with no manifest referencing them yet: gc must wait rather than collect them, and the save completes
    when the writer resumes."""
    root = fast_path / "store"
    with Store.init(root, chunk_bytes=8192) as store:
        store.save(sources[0], "r/step-1")
    name, at = (pause_at.split("@") + ["1"])[:2]
    child = forkserver.spawn("save", failpoint=f"{name}:stop@{at}", store=str(root), src=str(sources[1]),
                             name="r/step-2", ack=str(fast_path / "ack"))
    pid = child[0]
    try:
        wait_until_stopped(pid)
        before = {p.name for p in (root / "tmp").iterdir()} | {p.name for p in (root / "objects").rglob("*")}
        with Store.open(root) as store:
            with pytest.raises(StoreLocked):
                store.gc(timeout=1.0)
            plan = store.gc(dry_run=True, timeout=1.0)  # a dry run may look, and deletes nothing
            assert not plan.executed
            if name != "manifest.write":  # the paused writer holds the commit lock at manifest.write
                store.save(sources[2], "other/step-1")  # other saves go on meanwhile
        after = {p.name for p in (root / "tmp").iterdir()} | {p.name for p in (root / "objects").rglob("*")}
        assert before <= after, "gc removed files of the paused save"
    finally:
        os.kill(pid, signal.SIGCONT)
    out = forkserver.wait(child, timeout=60)
    assert out.code == 0, out.error
    expected = {"r/step-1": source_digests[sources[0]], "r/step-2": source_digests[sources[1]]}
    if name != "manifest.write":
        expected["other/step-1"] = source_digests[sources[2]]
    result = check_store(root, expected, scratch=fast_path)
    assert not result.problems, result.problems
