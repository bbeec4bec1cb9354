"""The changes the web view can make with --allow-write: tag, untag, delete, prune. Each is asked for twice: first
for its plan (nothing changes), then with ``confirm`` and the plan's `expect` echoed back, and it acts only if the
plan is still what the user saw (another process may have saved, tagged or pruned in between)."""

from __future__ import annotations

from typing import Any

from .._core.info import human_bytes
from .._core.names import RESERVED_TAGS
from ..errors import CheckpointNotFound, InvalidArgument
from ..policies import RetentionPolicy
from ..store import Store

ACTIONS = ("tag", "untag", "delete", "prune")


class PlanChanged(Exception):
    """The plan differs from the one the user confirmed."""


def _str(body: dict[str, Any], key: str) -> str:
    value = body.get(key)
    if not isinstance(value, str) or not value:
        raise InvalidArgument(f"'{key}' must be a non-empty string.", hint=f"Send {{\"{key}\": \"...\"}}.")
    return value


def _tag_plan(store: Store, body: dict[str, Any]) -> dict[str, Any]:
    ref, tag = _str(body, "ref"), _str(body, "tag")
    info = store.info(ref)
    current = store.tags(info.run).get(f"{info.run}:{tag}")
    was = store.info(current).name if current else None
    summary = (f"Point {info.run}:{tag} at {info.name}" + (f" (it points at {was} now)." if was else "."))
    return {"summary": summary, "expect": [info.id, current], "args": {"ref": info.id, "tag": tag}}


def _untag_plan(store: Store, body: dict[str, Any]) -> dict[str, Any]:
    ref = _str(body, "tag")
    if ref.count(":") != 1:
        raise InvalidArgument(f"'{ref}' is not RUN:TAG.", hint="Send {\"tag\": \"run:tag\"}.")
    run, tag = ref.split(":")
    if tag in RESERVED_TAGS:
        raise InvalidArgument(f"{ref} is moved by the store itself and cannot be removed.",
                              hint="Delete or prune checkpoints instead; latest and best follow what is left.")
    cid = store.tags(run).get(ref)
    if cid is None:
        raise CheckpointNotFound(ref, run=run, kind="tag")
    return {"summary": f"Remove the tag {ref} (it points at {store.info(cid).name}).", "expect": [cid],
            "args": {"tag": ref}}


def _delete_plan(store: Store, body: dict[str, Any]) -> dict[str, Any]:
    refs = body.get("refs")
    if not isinstance(refs, list) or not refs or not all(isinstance(r, str) for r in refs):
        raise InvalidArgument("'refs' must be a list of checkpoint names.", hint="Send {\"refs\": [\"run/step-1\"]}.")
    plan = store.delete(refs, dry_run=True)
    names = ", ".join(c.name for c in plan.checkpoints)
    summary = (f"Delete {len(plan.checkpoints)} checkpoint(s): {names}"
               + (f"; tags removed: {', '.join(plan.tags)}" if plan.tags else "")
               + f". gc can then free {human_bytes(plan.reclaimable_bytes)}.")
    return {"summary": summary, "expect": sorted(c.id for c in plan.checkpoints), "plan": plan.to_json(),
            "args": {"refs": [c.id for c in plan.checkpoints]}}


def _policy(body: dict[str, Any]) -> RetentionPolicy | None:
    keep_last = body.get("keep_last")
    if keep_last in (None, ""):
        return None
    if isinstance(keep_last, str) and keep_last.isdigit():
        keep_last = int(keep_last)
    if not isinstance(keep_last, int) or isinstance(keep_last, bool):
        raise InvalidArgument(f"keep_last must be a whole number, got {keep_last!r}.", hint="Send {\"keep_last\": 3}.")
    return RetentionPolicy(keep_last=keep_last)


def _prune_plan(store: Store, body: dict[str, Any]) -> dict[str, Any]:
    run = _str(body, "run")
    result = store.prune(run, _policy(body), dry_run=True)
    removed = [d.checkpoint.name for d in result.plan.remove]
    summary = (f"Prune {run} by '{result.policy}': remove {len(removed)} checkpoint(s)"
               + (f" ({', '.join(removed)})" if removed else "")
               + f", keep {len(result.plan.keep)}. gc can then free {human_bytes(result.reclaimable_bytes)}.")
    return {"summary": summary, "expect": sorted(d.checkpoint.id for d in result.plan.remove),
            "plan": result.to_json(), "args": {"run": run, "keep_last": body.get("keep_last")}}


_PLANS = {"tag": _tag_plan, "untag": _untag_plan, "delete": _delete_plan, "prune": _prune_plan}


def plan(store: Store, action: str, body: dict[str, Any]) -> dict[str, Any]:
    return {"action": action, **_PLANS[action](store, body)}


def act(store: Store, action: str, body: dict[str, Any]) -> dict[str, Any]:
    """Act, when the plan made now matches the one confirmed (`body["expect"]`)."""
    fresh = plan(store, action, body)
    if fresh["expect"] != body.get("expect"):
        raise PlanChanged(fresh["summary"])
    args = fresh["args"]
    if action == "tag":
        done = f"{store.tag(args['ref'], args['tag']).name} is now tagged {args['tag']}."
    elif action == "untag":
        store.untag(args["tag"])
        done = f"Removed the tag {args['tag']}."
    elif action == "delete":
        result = store.delete(args["refs"])
        done = f"Deleted {len(result.checkpoints)} checkpoint(s); 'ckpt gc' frees their blobs."
    else:
        result = store.prune(args["run"], _policy(body))
        done = f"Pruned {len(result.plan.remove)} checkpoint(s) from {args['run']}; 'ckpt gc' frees their blobs."
    return {"action": action, "done": done, "summary": fresh["summary"]}
