"""SIGKILL at every failpoint and at random moments of save, delete, prune and gc, in real processes.

After each kill the store must pass `verify`, every acknowledged checkpoint must export byte-exact, no manifest may
reference a missing blob, a delete that was acknowledged must stay done, and gc must leave it all intact.

Only kills that landed inside the operation are counted: each child records when its job started and ended and the
last failpoint it passed (_phasetrace.py), random kills are aimed at a moment after the job started, and a kill that
still landed before the start or after the end is reported apart. The figure says how many kills landed in each
phase (the last failpoint passed: blob.write, blob.sync, blob.rename, manifest.*, ref.*, index.*, delete.*, gc.*).
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import pytest

from ckptstore import Store

from . import _phasetrace
from ._harness import check_store, read_acks, sha256_tree
from .conftest import copy_store

pytestmark = pytest.mark.crash

BASE = {"r/step-1": 0, "r/step-2": 1, "r/step-3": 2, "other/step-1": 3}


@pytest.fixture(scope="session")
def base_store(fast_tmp, sources) -> Path:
    """Four checkpoints in two runs, 4 KiB chunks (so a save writes dozens of blobs: many places to die)."""
    root = fast_tmp / "crash-base"
    with Store.init(root, chunk_bytes=4096) as store:
        for name, i in BASE.items():
            store.save(sources[i], name, metrics={"eval_loss": 1.0 / (i + 1)}, tags=["v1"] if i == 0 else ())
    return root


@pytest.fixture(scope="session")
def fresh_source(tmp_path_factory) -> Path:
    """A checkpoint that shares no tensor with the store: its save writes every blob anew."""
    from conftest import make_tiny_bert

    path = tmp_path_factory.mktemp("fresh") / "ckpt"
    make_tiny_bert(seed=99).save_pretrained(path)
    (path / "optimizer.pt").write_bytes(random.Random(99).randbytes(30_000))
    return path


def _ops(sources) -> dict[str, dict]:
    ops = {
        # job kwargs (store and ack filled in per trial), checkpoints the op adds, checkpoints it may remove
        "save": dict(job="save", kw={"src": str(sources[4]), "name": "r/step-4", "tags": ["v2"],
                                     "metrics": {"eval_loss": 0.1}}, adds={"r/step-4": 4}, removes=set()),
        "save (all new blobs)": dict(job="save", kw={"src": str(sources[6]), "name": "fresh/step-1"},
                                     adds={"fresh/step-1": 6}, removes=set()),
        "delete+gc": dict(job="delete_gc", kw={"names": ["r/step-1", "other/step-1"]}, adds={},
                          removes={"r/step-1", "other/step-1"}),
    }
    if hasattr(Store, "prune"):
        ops["prune+gc"] = dict(job="prune_gc", kw={"run": "r", "policy": {"keep_last": 1}}, adds={},
                               removes={"r/step-2"})
    return ops


def _trial(forkserver, base_store, work: Path, op: dict, digests, after_src, *, failpoint="*:trace", kill_in_op=None):
    store = work / "store"
    copy_store(base_store, store)
    ack = work / "ack"
    # A spec is always set (*:trace at least) so that the child records every failpoint it passes.
    out = forkserver.run(op["job"], failpoint=failpoint, kill_in_op=kill_in_op, trace_phase=True, store=str(store),
                         ack=str(ack), **op["kw"])
    saved, deleted = read_acks(ack)
    expected = {n: digests[i] for n, i in BASE.items() if n not in op["removes"]}
    maybe = {n: digests[BASE[n]] for n in op["removes"]} | {n: digests[i] for n, i in op["adds"].items()}
    for name in saved:
        expected[name] = maybe.pop(name)
    for name in deleted:
        maybe.pop(name, None)
    if out.error is not None:
        raise AssertionError(f"{op['job']} failed without a kill: {out.error['traceback']}")
    result = check_store(store, expected, maybe=maybe, gone=set(deleted), scratch=work)
    if not result.problems:
        # The store keeps working after the crash: a new save succeeds and verifies.
        with Store.open(store) as s:
            s.save(after_src, "after/crash")
            if not s.verify("after/crash").ok:
                result.problems.append("a save after the crash does not verify")
    shutil.rmtree(work)
    return out, result, len(expected)


def test_sigkill_at_every_failpoint_and_random_moments(forkserver, base_store, sources, source_digests, scale,
                                                       figure, fast_path, fresh_source):
    tmp_path = fast_path
    sources = [*sources, fresh_source]
    digests = [source_digests[p] for p in sources[:-1]] + [sha256_tree(fresh_source)]
    ops = _ops(sources)
    rng = random.Random(5)
    kills = clean = acked = lost = 0
    phases: dict[str, int] = {}  # kills inside the operation, by the last failpoint passed
    outside = dict.fromkeys(_phasetrace.OUTSIDE, 0)  # kills that landed before the job started or after it ended
    finished_first = random_inside = 0
    failures: list[str] = []
    enumerated = 0
    plans: list[tuple[str, dict, str | None, float | None]] = []
    for op_name, op in ops.items():
        # A traced run finds every failpoint the operation reaches and how often (never trusting a hand-kept list).
        out, result, _ = _trial(forkserver, base_store, tmp_path / f"trace-{op_name}", op, digests, sources[5])
        assert out.code == 0 and not result.problems, (op_name, out.error, result.problems)
        assert out.seen, f"{op_name} reached no failpoint"
        for name, count in sorted(out.seen.items()):
            hits = range(1, count + 1) if scale.long else sorted({1, (count + 1) // 2, count})
            plans += [(op_name, op, f"{name}:kill@{n}", None) for n in hits]
            enumerated += len(hits)
        # Random moments within the operation: from its start to its end as the child itself recorded them (the
        # shorter of two runs, so that few kills come after the end; the traced run paid first-use costs).
        window = min(
            (o.phase["end"] - o.phase["start"])
            for o in (_trial(forkserver, base_store, tmp_path / f"time-{op_name}-{k}", op, digests, sources[5])[0]
                      for k in range(2))
        )
        randoms = scale.pick(5, 250)
        plans += [(op_name, op, None, rng.uniform(0, window)) for _ in range(randoms)]
    assert enumerated >= 3 * len(ops)
    for i, (op_name, op, spec, delay) in enumerate(plans):
        if spec is None:
            out, result, n_acked = _trial(forkserver, base_store, tmp_path / f"t{i}", op, digests, sources[5],
                                          kill_in_op=delay)
        else:
            out, result, n_acked = _trial(forkserver, base_store, tmp_path / f"t{i}", op, digests, sources[5],
                                          failpoint=spec)
        where = _phasetrace.phase(out.phase) if out.killed else None
        if spec is not None:
            if not out.killed:
                failures.append(f"{op_name} {spec}: the failpoint was not reached (exit {out.code})")
            elif out.phase["last"] != spec.split(":")[0]:
                failures.append(f"{op_name} {spec}: the child recorded {out.phase} as where it died")
        if where in outside:
            outside[where] += 1
        elif where is not None:
            phases[where] = phases.get(where, 0) + 1
            kills += 1
            random_inside += spec is None
        else:
            finished_first += 1
        acked += n_acked
        lost += sum(p.startswith(("acknowledged", "export of")) for p in result.problems)
        if result.problems:
            failures.append(f"{op_name} {spec or f'kill {delay * 1000:.1f} ms into it'} ({where}): {result.problems}")
        elif where is not None and where not in outside:
            clean += 1
    randoms = len(plans) - enumerated
    figure(
        "crash (SIGKILL)",
        f"{kills} kills inside {len(ops)} operations ({', '.join(ops)}): {enumerated} at every failpoint hit"
        f"{'' if scale.long else ' (first, middle, last of each)'}, {random_inside} at random moments (of"
        f" {randoms} tries: {finished_first} finished first, {sum(outside.values())} landed outside the operation"
        f" ({outside['before start']} before its start, {outside['after end']} after its end) and are not counted);"
        f" by phase (last failpoint passed): {_phasetrace.describe(phases)}; {clean} clean stores; {len(failures)}"
        f" failures; {acked} acknowledged checkpoints checked byte-exact after the kills, {lost} lost",
        data={"kills_inside": kills, "at_failpoints": enumerated, "random_tries": randoms,
              "random_finished_first": finished_first, "outside": outside, "by_phase": phases, "clean": clean,
              "failures": len(failures), "acknowledged_checked": acked, "lost": lost, "operations": list(ops)},
    )
    assert not failures, "\n".join(failures[:10])
    assert kills >= scale.pick(20, 500)


def test_cli_save_killed_by_env_failpoint(tmp_path, base_store, sources, source_digests):
    """The real `ckpt save` command, killed through CKPT_FAILPOINT in its environment between two blob renames."""
    from conftest import run_ckpt_subprocess

    store = copy_store(base_store, tmp_path / "store")
    proc = run_ckpt_subprocess("save", sources[4], "r/step-4", "--store", store,
                               env={"CKPT_FAILPOINT": "blob.rename:kill@2"})
    assert proc.returncode == -9, proc.stderr
    expected = {n: source_digests[sources[i]] for n, i in BASE.items()}
    result = check_store(store, expected, maybe={}, scratch=tmp_path)
    assert not result.problems
    with Store.open(store) as s:
        assert s.save(sources[4], "r/step-4").name == "r/step-4"
