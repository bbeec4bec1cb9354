"""What each page shows, as JSON-ready dicts built from the public Store API: the API serves them as they are, and
the pages render them (the same dict, so a page and its API never disagree).

Everything here comes from the index and the small documents beside it; blobs are read only by `diff` (tensors)
and by `checkpoint` for config.json (a few kilobytes)."""

from __future__ import annotations

import json
import math
import shlex
import time
from typing import Any

from .._core.info import human_bytes
from ..errors import CkptError
from ..store import Store


def _num(x: Any) -> Any:
    # JSON has no inf or nan; a metric can be either.
    return x if not isinstance(x, float) or math.isfinite(x) else str(x)


def _metrics(m: dict[str, Any]) -> dict[str, Any]:
    return {k: _num(v) for k, v in m.items()}


def _policy_text(store: Store, run: str) -> str:
    try:
        policy = store.get_policy(run)
    except CkptError as exc:
        return f"unreadable ({exc.message})"
    return str(policy) if policy is not None else "none: every checkpoint is kept"


class ByteTotals:
    """`du()` and the bytes per run, kept while the store's checkpoints stay the same: they sum over every blob
    reference in the index (tens of milliseconds at a thousand checkpoints), and change only when a checkpoint
    is saved or deleted, which changes a run's count or its newest save time."""

    def __init__(self) -> None:
        self._key: tuple | None = None
        self._value: tuple[Any, dict[str, int]] | None = None

    def get(self, store: Store, summaries: list | None = None) -> tuple[Any, dict[str, int]]:
        summaries = store.run_summaries() if summaries is None else summaries
        key = tuple((r.run, r.checkpoints, r.logical_bytes, r.last_saved) for r in summaries)
        if key != self._key or self._value is None:
            self._value = (store.du(), store.run_stored_bytes())
            self._key = key
        return self._value


def runs(store: Store, totals: ByteTotals | None = None) -> dict[str, Any]:
    """Every run: checkpoints, latest step, best metric, policy in words, logical and stored bytes."""
    summaries = store.run_summaries()
    du, stored = (totals or ByteTotals()).get(store, summaries)
    unique = {r.run: r.unique_bytes for r in du.runs}
    out = []
    for r in summaries:
        metric, mode = store.best_metric(r.run)
        out.append({
            "run": r.run,
            "checkpoints": r.checkpoints,
            "latest_step": r.latest_step,
            "best": None if r.best is None else {"name": r.best.name, "metric": metric, "mode": mode,
                                                 "value": _num(r.best.metrics.get(metric))},
            "best_metric": metric,
            "policy": _policy_text(store, r.run),
            "logical_bytes": r.logical_bytes,
            "stored_bytes": stored.get(r.run, 0),
            "unique_bytes": unique.get(r.run, 0),
            "last_saved": r.last_saved,
        })
    return {"runs": out}


def run(store: Store, run: str, deleted: list) -> dict[str, Any]:
    """A run: its checkpoints in step order (with the bytes each added), the metrics they log, which are best,
    latest and tagged, the pruned ones, and the storage over time."""
    store.check_run(run)
    infos = store.log(run)
    storage = store.storage_growth(run)
    growth = {g.id: g for g in storage}
    metric, mode = store.best_metric(run)
    tags = store.tags(run)
    best_id, latest_id = tags.get(f"{run}:best"), tags.get(f"{run}:latest")
    metrics = list(dict.fromkeys(k for c in infos for k in c.metrics))
    checkpoints = []
    for c in infos:
        g = growth.get(c.id)
        # What the chart and the table need, no more: a run page of 1,000 checkpoints carries all of it.
        checkpoints.append({
            "name": c.name,
            "step": c.step,
            "created_at": c.created_at,
            "tags": list(c.tags),
            "user_tags": [t for t in c.tags if t not in ("latest", "best")],
            "metrics": _metrics(c.metrics),
            "logical_bytes": c.logical_bytes,
            "new_bytes": g.new_bytes if g else None,
            "best": c.id == best_id,
            "latest": c.id == latest_id,
        })
    return {
        "run": run,
        "best_metric": metric,
        "best_mode": mode,
        "policy": _policy_text(store, run),
        "metrics": metrics,
        "checkpoints": checkpoints,
        "pruned": [d.to_json() for d in sorted(deleted, key=lambda d: (d.step is None, d.step or 0, d.name))],
        "storage": [{"created_at": g.created_at, "folders_bytes": g.folders_bytes, "stored_bytes": g.stored_bytes}
                    for g in storage],
    }


def _config(store: Store, ref: str) -> dict[str, Any] | None:
    try:
        cfg = json.loads(store.read_file(ref, "config.json", verify=False))
    except (CkptError, ValueError):
        return None
    return cfg if isinstance(cfg, dict) else None


def _modules(d: dict[str, Any]) -> list[dict[str, Any]]:
    """Tensors grouped by the modules `describe` counts parameters for (longest matching prefix)."""
    names = sorted(d["parameters_by_module"], key=len, reverse=True)
    groups: dict[str, dict[str, Any]] = {m: {"module": m, "parameters": d["parameters_by_module"][m], "tensors": []}
                                         for m in d["parameters_by_module"]}
    other = {"module": "(other)", "parameters": 0, "tensors": []}
    for t in d["tensors"]:
        home = next((groups[m] for m in names if t["name"] == m or t["name"].startswith(m + ".")), other)
        home["tensors"].append(t)
        if home is other and t["parameter"]:
            other["parameters"] += t["numel"]
    out = [g for g in groups.values() if g["tensors"]]
    return out + ([other] if other["tensors"] else [])


def _age(seconds: float) -> str:
    seconds = max(0.0, seconds)
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size:
            n = int(seconds // size)
            return f"{n} {unit}{'s' if n != 1 else ''} ago"
    return "just now"


def _with_age(record: dict[str, Any] | None) -> dict[str, Any] | None:
    """A recorded check result with its age in words ("3 hours ago"), as of this request."""
    if record is None or not isinstance(record.get("at"), (int, float)):
        return record
    return {**record, "age": _age(time.time() - record["at"])}


def _checks(results: dict[str, Any]) -> dict[str, Any]:
    return {k: _with_age(v) for k, v in results.items()}


def checkpoint(store: Store, ref: str) -> dict[str, Any]:
    """A checkpoint: record, files, tensors by module, config, lineage (parents and children), commands."""
    d = store.describe(ref)
    d["metrics"] = _metrics(d["metrics"])
    children = [{"id": c.id, "name": c.name, "step": c.step} for c in store.children(d["id"])]
    q = shlex.quote(d["name"])
    leaf = d["name"].rsplit("/", 1)[-1]
    return {
        **{k: v for k, v in d.items() if k != "tensors"},
        "modules": _modules(d),
        "config": _config(store, d["id"]),
        "children": children,
        # What 'ckpt validate' and 'ckpt verify REF' last recorded on it (None: never run on a writable store).
        **_checks(store.check_results(d["id"])),
        "commands": {
            "export": f"ckpt export {q} {shlex.quote('./' + leaf)}",
            "checkout": f"ckpt checkout {q} ./resume",
            "validate": f"ckpt validate {q}",
            "verify": f"ckpt verify {q}",
            "python": f"store.load({d['name']!r})",
        },
    }


def diff(store: Store, a: str, b: str) -> dict[str, Any]:
    report = store.diff(a, b).to_json()
    # Per layer (a tensor's module): the largest relative change of its tensors, for the chart.
    layers: dict[str, float] = {}
    for t in report["tensors"]["changed"]:
        layer = t["name"].rsplit(".", 1)[0]
        rel = t["rel_l2"]
        value = math.inf if isinstance(rel, str) else float(rel)
        layers[layer] = max(layers.get(layer, 0.0), value)
    report["layers"] = [{"layer": k, "rel_change": _num(v)}
                        for k, v in sorted(layers.items(), key=lambda kv: (-kv[1], kv[0]))]
    return report


def store_summary(store: Store, totals: ByteTotals | None = None) -> dict[str, Any]:
    du, stored = (totals or ByteTotals()).get(store)
    return {
        "url": store.url,
        "read_only": store.read_only,
        "format": store.config.format,
        "compression": store.config.compression,
        **du.to_json(),
        "saved_str": human_bytes(du.saved_bytes),
        "runs": [{**r, "stored_bytes": stored.get(r["run"], 0)} for r in du.to_json()["runs"]],
        "last_verify": _with_age(store.last_verify()),
    }


def packing_savings(store: Store) -> dict[str, Any]:
    """What compression and deltas (`ckpt pack`) saved, over the store's distinct blobs (it reads every manifest,
    so the page asks for it after it has painted)."""
    try:
        total = store.storage_usage()["total"]
    except (CkptError, OSError) as exc:
        return {"error": getattr(exc, "message", str(exc))}
    saved = total["zstd_saved_bytes"] + total["delta_saved_bytes"]
    return {**total, "saved_bytes": saved, "saved_str": human_bytes(saved),
            "zstd_saved_str": human_bytes(total["zstd_saved_bytes"]),
            "delta_saved_str": human_bytes(total["delta_saved_bytes"])}


def gc_estimate(store: Store) -> dict[str, Any]:
    """What gc would reclaim now (a dry run: it lists the blobs and reads the manifests, so the page asks for it
    after it has painted)."""
    try:
        plan = store.gc(dry_run=True, timeout=5.0)
    except (CkptError, OSError) as exc:
        return {"error": getattr(exc, "message", str(exc))}
    return {**plan.to_json(), "bytes_freed_str": plan.bytes_freed_str}
