"""SIGKILL at every failpoint and at random moments of save, delete, prune and gc, in real processes.

After each kill the store must pass `verify`, every acknowledged checkpoint must export byte-exact, no manifest may
reference a missing blob, a delete that was acknowledged must stay done, and gc must leave it all intact.
Figure (long mode): N kills, N clean stores, 0 acknowledged checkpoints lost.
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import pytest

from ckptstore import Store

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


def _trial(forkserver, base_store, work: Path, op: dict, digests, after_src, *, failpoint=None, kill_after=None):
    store = work / "store"
    copy_store(base_store, store)
    ack = work / "ack"
    out = forkserver.run(op["job"], failpoint=failpoint, kill_after=kill_after, store=str(store), ack=str(ack),
                         **op["kw"])
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
    failures: list[str] = []
    enumerated = 0
    plans: list[tuple[str, dict, str | None, float | None]] = []
    for op_name, op in ops.items():
        # A traced run finds every failpoint the operation reaches and how often (never trusting a hand-kept list).
        out, result, _ = _trial(forkserver, base_store, tmp_path / f"trace-{op_name}", op, digests, sources[5],
                                     failpoint="*:trace")
        assert out.code == 0 and not result.problems, (op_name, out.error, result.problems)
        assert out.seen, f"{op_name} reached no failpoint"
        for name, count in sorted(out.seen.items()):
            hits = range(1, count + 1) if scale.long else sorted({1, (count + 1) // 2, count})
            plans += [(op_name, op, f"{name}:kill@{n}", None) for n in hits]
            enumerated += len(hits)
        # Random moments within the operation as it runs untraced (the traced run paid first-use costs).
        elapsed = min(
            _trial(forkserver, base_store, tmp_path / f"time-{op_name}-{k}", op, digests, sources[5])[0].elapsed
            for k in range(2)
        )
        randoms = scale.pick(5, 250)
        plans += [(op_name, op, None, rng.uniform(0, elapsed)) for _ in range(randoms)]
    assert enumerated >= 3 * len(ops)
    for i, (op_name, op, spec, delay) in enumerate(plans):
        out, result, n_acked = _trial(forkserver, base_store, tmp_path / f"t{i}", op, digests, sources[5],
                                      failpoint=spec, kill_after=delay)
        if spec is not None and not out.killed:
            failures.append(f"{op_name} {spec}: the failpoint was not reached (exit {out.code})")
        kills += out.killed
        acked += n_acked
        lost += sum(p.startswith(("acknowledged", "export of")) for p in result.problems)
        if result.problems:
            failures.append(f"{op_name} {spec or f'kill after {delay * 1000:.1f} ms'}: {result.problems}")
        elif out.killed:
            clean += 1
    figure(
        "crash (SIGKILL)",
        f"{kills} kills over {len(ops)} operations ({', '.join(ops)}): {enumerated} at every failpoint hit"
        f"{'' if scale.long else ' (first, middle, last of each)'}, {kills - enumerated} at random moments (of"
        f" {len(plans) - enumerated} tries; the others finished first); {clean} clean stores; {len(failures)}"
        f" failures; {acked} acknowledged checkpoints checked byte-exact after the kills, {lost} lost",
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
