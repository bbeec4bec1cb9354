from __future__ import annotations

import json
from typing import Any

import click
from rich.markup import escape

from ._app import command, counted, fmt_bytes, json_option, open_store, out, print_json


def _value(v: Any) -> str:
    # Metadata values are whatever the user gave (numbers, lists, dicts): JSON, never a Python repr.
    return v if isinstance(v, str) else json.dumps(v, ensure_ascii=False, default=str)


def _hub_lines(pushes: Any) -> list[str]:
    """The Hub repositories `ckpt push` published the checkpoint to: 'ORG/NAME@BRANCH commit ABC (tags T)'."""
    if not isinstance(pushes, dict):
        return []
    return [f"{p.get('repo_id')}@{p.get('revision')} commit {str(p.get('commit'))[:12]}"
            + (f" (tags {', '.join(p['tags'])})" if p.get("tags") else "") + (f" {p['url']}" if p.get("url") else "")
            for p in pushes.values() if isinstance(p, dict)]


@command("show")
@click.argument("ref")
@click.option("--tensors", "with_tensors", is_flag=True, help="Also list every stored tensor: name, dtype, shape.")
@json_option
def show(ref: str, with_tensors: bool, as_json: bool, store_path: str | None) -> None:
    """Show a checkpoint: files, tensors, parameters, dtypes, model type, metrics, metadata, lineage, sizes.

    REF is a name (bert/step-500), RUN:TAG (bert:best) or an id prefix. Parameters are counted as the loaded
    model counts them (and 'ckpt validate' reports them): buffers such as position_ids are left out. --json always
    includes the tensor list.

    \b
    Examples:
      ckpt show bert-sst2:best
      ckpt show bert-sst2:best --tensors
      ckpt show 3fa2c1 --json
    Exit codes: 0 ok, 1 failure (unknown reference), 2 usage error.
    """
    store = open_store(store_path)
    info = store.info(ref)
    details = store.describe(info.id)
    inside = details  # per-module parameters, dtypes, tensors, lineage
    lineage = details["lineage"]
    if as_json:
        print_json(details)
        return
    m = details["model"]
    buffers = inside["buffers"]
    parameters = f"{inside['parameters']:,}" if inside["parameters"] else "-"
    if buffers:
        parameters += (f" (buffers not counted: {', '.join(buffers)}, {sum(buffers.values()):,} values)"
                       if len(buffers) <= 3 else f" ({len(buffers)} buffers, {sum(buffers.values()):,} values, not counted)")
    env = details["environment"]
    # Recorded from a Trainer folder (trainer_state.json, JSON args files): a row of their own, not one long value.
    hyper = info.metadata.get("hyperparameters")
    hyper = hyper if isinstance(hyper, dict) else {}
    rows: list[tuple[str, str | list[str]]] = [
        ("name", info.name), ("id", info.id), ("run", info.run), ("step", "-" if info.step is None else info.step), ("created", info.created_at_str),
        ("tags", ", ".join(info.tags) or "-"), ("message", info.message or "-"),
        ("model type", m.get("model_type", "-")), ("architectures", ", ".join(m.get("architectures", [])) or "-"),
        ("parameters", parameters),
        ("dtypes", ", ".join(f"{k}: {v:,}" for k, v in inside["parameter_dtypes"].items()) or "-"),
        ("metrics", ", ".join(f"{k}={v:.6g}" for k, v in info.metrics.items()) or "-"),
        ("metadata", [f"{k}: {_value(v)}" for k, v in info.metadata.items()
                      if not (k == "hyperparameters" and hyper) and not (k == "hub" and _hub_lines(v))] or "-"),
        ("hyperparameters", [f"{k}: {_value(v)}" for k, v in hyper.items()] or "-"),
        *([("hub", _hub_lines(info.metadata.get("hub")))] if _hub_lines(info.metadata.get("hub")) else []),
        ("parent", lineage[0] if lineage else "-"),
        ("lineage", " <- ".join([info.name, *lineage]) if lineage else "-"),
        ("size", f"{fmt_bytes(info.logical_bytes)} logical, {fmt_bytes(details['stored_bytes'])} in blobs,"
                 f" {fmt_bytes(details['unshared_bytes'])} not shared with other checkpoints"),
        # Two different versions, easily taken for one: the transformers that wrote config.json (maybe years ago,
        # elsewhere) and the environment that put the checkpoint into this store.
        ("config written by", f"transformers {m['transformers_version']} (config.json's transformers_version)"
         if m.get("transformers_version") else "-"),
        ("stored from", ", ".join(f"{k} {v}" for k, v in env.items() if k != "platform")
         + " (the environment that saved it into the store)"),
    ]
    rows += _storage_rows(store, info)
    for extra_key in ("parameters_by_module",):
        if extra_key in details:
            rows.append((extra_key.replace("_", " "), ", ".join(f"{k}: {v:,}" for k, v in details[extra_key].items())))
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        lines = value if isinstance(value, list) else [value]
        out.print(f"[bold]{key:<{width}}[/]  {escape(str(lines[0]))}")
        for line in lines[1:]:
            out.print(f"{'':<{width}}  {escape(line)}")
    out.print(f"[bold]{'files':<{width}}[/]")
    for f in details["files"]:
        extra = f"  {counted(f['tensors'], 'tensor')}" if f["tensors"] else ""
        out.print(f"  {escape(f['path']):<40} {fmt_bytes(f['size']):>10}  {counted(f['blobs'], 'blob')}{extra}")
    if with_tensors:
        _print_tensors(inside["tensors"], width)


def _print_tensors(tensors: list[dict[str, Any]], width: int) -> None:
    out.print(f"[bold]{'tensors':<{width}}[/]" + ("" if tensors else "  -"))
    if not tensors:
        return
    table = [("name", "dtype", "shape", "parameters")] + [
        (t["name"], t["dtype"], "[" + ", ".join(map(str, t["shape"])) + "]",
         f"{t['numel']:,}" if t["parameter"] else "buffer")
        for t in tensors
    ]
    widths = [max(len(row[i]) for row in table) for i in range(3)]
    for name, dtype, shape, count in table:
        out.print(escape(f"  {name:<{widths[0]}}  {dtype:<{widths[1]}}  {shape:<{widths[2]}}  {count:>12}"))


def _storage_rows(store, info) -> list[tuple[str, str]]:
    """How the blobs are stored (raw, zstd, delta), and training state a storage policy dropped."""
    rows = []
    mix = store.encodings(info.id)
    # Blob counts as "n of them": the files list below counts blobs per file, and tests read those counts.
    rows.append(("encodings", ", ".join(
        f"{name} {fmt_bytes(row['raw_bytes'])}"
        + (f" stored in {fmt_bytes(row['stored_bytes'])}" if row["stored_bytes"] != row["raw_bytes"] else "")
        + f" ({row['blobs']:,} of them)"
        for name, row in sorted(mix.items()))))
    slimmed = info.metadata.get("slimmed")
    if isinstance(slimmed, dict):
        rows.append(("training state", f"dropped by the run's policy ({slimmed.get('rule')}):"
                     f" {', '.join(slimmed.get('dropped', []))} ({fmt_bytes(slimmed.get('dropped_bytes', 0))});"
                     " loadable and exportable, not resumable"))
    return rows
