"""What a crash-test child process does, through the public API only. Each job writes an acknowledgement line
(``saved NAME ID`` / ``deleted NAME``) to its ack file, fsynced, right after the call that did the work returned:
an acknowledged checkpoint is one whose save returned to its caller, and the suite checks that none is ever lost."""

from __future__ import annotations

import os
import time
from pathlib import Path

from ckptstore import Store
from ckptstore.errors import CheckpointNotFound, StoreLocked


def _ack(path: str | None, line: str) -> None:
    if not path:
        return
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)


def save(store: str, src: str, name: str, tags: list[str] = (), metrics: dict | None = None, ack: str | None = None):
    with Store.open(store) as s:
        info = s.save(src, name, tags=tags, metrics=metrics)
    _ack(ack, f"saved {name} {info.id}")
    return info.id


def delete_gc(store: str, names: list[str], ack: str | None = None):
    with Store.open(store) as s:
        s.delete(names)
        for name in names:
            _ack(ack, f"deleted {name}")
        plan = s.gc()
    return len(plan.blobs)


def gc(store: str, timeout: float = 60.0):
    with Store.open(store) as s:
        return len(s.gc(timeout=timeout).blobs)


def prune(store: str, run: str, policy: dict | None = None, ack: str | None = None):
    from ckptstore.policies import RetentionPolicy

    with Store.open(store) as s:
        result = s.prune(run, RetentionPolicy.from_json(policy) if policy else None)
        for d in result.plan.remove:
            _ack(ack, f"deleted {d.checkpoint.name}")
    return [d.checkpoint.name for d in result.plan.remove]


def prune_gc(store: str, run: str, policy: dict | None = None, ack: str | None = None):
    removed = prune(store, run, policy, ack)
    gc(store)
    return removed


def writer(store: str, run: str, prefix: str, srcs: list[str], count: int, ack: str, metric_seed: int = 0):
    """Save `count` checkpoints of `run`, cycling through the source folders; a step per save."""
    import random

    rng = random.Random(metric_seed)
    with Store.open(store) as s:
        for i in range(count):
            name = f"{run}/{prefix}step-{i + 1}"
            info = s.save(srcs[i % len(srcs)], name, step=i + 1, metrics={"eval_loss": rng.random()})
            _ack(ack, f"saved {name} {info.id}")
    return count


def janitor(store: str, runs: list[str], stop: str, ack: str, policy: dict | None = None):
    """Until the file `stop` exists: prune each run (or delete its oldest checkpoint when prune is not there),
    then gc. Counts the rounds and the gc runs that found the store locked."""
    from ckptstore.policies import RetentionPolicy

    rounds = locked = 0
    with Store.open(store) as s:
        has_prune = hasattr(s, "prune")
        while not Path(stop).exists():
            rounds += 1
            for run in runs:
                try:
                    if has_prune and policy:
                        result = s.prune(run, RetentionPolicy.from_json(policy))
                        for d in result.plan.remove:
                            _ack(ack, f"deleted {d.checkpoint.name}")
                    else:
                        infos = s.list(run)
                        if len(infos) > 2:
                            victim = infos[-1].name
                            s.delete(victim)
                            _ack(ack, f"deleted {victim}")
                except CheckpointNotFound:
                    pass
            try:
                s.gc(timeout=2.0)
            except StoreLocked:
                locked += 1
            time.sleep(0.01)
    return {"rounds": rounds, "gc_locked": locked}


def sleep(seconds: float):
    time.sleep(seconds)
    return seconds


def manager_async(store: str, steps: list[int], ack: str | None = None):
    """A training loop's saves through CheckpointManager(async_save=True): the weights of step k are the seed-0
    Linear(64, 64) plus k (the test recomputes them)."""
    import torch

    from ckptstore import CheckpointManager

    torch.manual_seed(0)
    model = torch.nn.Linear(64, 64)
    manager = CheckpointManager(store, "r", async_save=True)
    for step in steps:
        with torch.no_grad():
            model.weight.add_(1.0)
        manager.save(step, model)
    info = manager.wait()
    _ack(ack, f"saved {info.name} {info.id}")
    return info.name
