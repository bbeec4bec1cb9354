from __future__ import annotations

import click

from ._app import command, counted, fmt_bytes, json_option, open_store, out, print_json


@command("show")
@click.argument("ref")
@json_option
def show(ref: str, as_json: bool, store_path: str | None) -> None:
    """Show a checkpoint: files, tensors, parameters, dtypes, model type, metrics, metadata, lineage, sizes.

    REF is a name (bert/step-500), RUN:TAG (bert:best) or an id prefix.

    \b
    Examples:
      ckpt show bert-sst2:best
      ckpt show 3fa2c1 --json
    Exit codes: 0 ok, 1 failure (unknown reference), 2 usage error.
    """
    store = open_store(store_path)
    info = store.info(ref)
    manifest = store.manifest(info.id)
    blobs = manifest.blob_refs()
    unique = store.catalog.blob_refcount(blobs)
    own_bytes = sum(size for d, size in blobs.items() if unique.get(d, 0) <= 1)
    lineage = [c if isinstance(c, str) else c.name for c in store.lineage(info.id)[1:]]
    lineage = [f"{c[:12]} (deleted)" if len(c) == 64 and "/" not in c else c for c in lineage]
    details = {
        **info.to_json(),
        "model": manifest.model,
        "environment": manifest.environment,
        "stored_bytes": sum(blobs.values()),
        "unshared_bytes": own_bytes,
        "lineage": lineage,
        "files": [
            {"path": f.path, "size": f.size, "kind": f.kind, "blobs": len(f.blobs), "tensors": len(f.tensors),
             **({"converted_from": f.converted_from} if f.converted_from else {})}
            for f in manifest.files
        ],
    }
    try:
        from .._inspect import show_details  # per-module parameters and dtype breakdown (issue 4)

        details.update(show_details(store, info.id))
    except ImportError:
        pass
    if as_json:
        print_json(details)
        return
    m = manifest.model
    # Recorded from a Trainer folder (trainer_state.json, JSON args files): a row of their own, not one long value.
    hyper = info.metadata.get("hyperparameters")
    hyper = hyper if isinstance(hyper, dict) else {}
    rows = [
        ("name", info.name), ("id", info.id), ("run", info.run), ("step", "-" if info.step is None else info.step), ("created", info.created_at_str),
        ("tags", ", ".join(info.tags) or "-"), ("message", info.message or "-"),
        ("model type", m.get("model_type", "-")), ("architectures", ", ".join(m.get("architectures", [])) or "-"),
        ("parameters", f"{m['parameters']:,}" if "parameters" in m else "-"),
        ("dtypes", ", ".join(f"{k}: {v:,}" for k, v in m.get("dtypes", {}).items()) or "-"),
        ("metrics", ", ".join(f"{k}={v:.6g}" for k, v in info.metrics.items()) or "-"),
        ("metadata", ", ".join(f"{k}={v}" for k, v in info.metadata.items()
                                 if not (k == "hyperparameters" and hyper)) or "-"),
        ("hyperparameters", ", ".join(f"{k}={v}" for k, v in hyper.items()) or "-"),
        ("parent", lineage[0] if lineage else "-"),
        ("lineage", " <- ".join([info.name, *lineage]) if lineage else "-"),
        ("size", f"{fmt_bytes(info.logical_bytes)} logical, {fmt_bytes(details['stored_bytes'])} in blobs,"
                 f" {fmt_bytes(own_bytes)} not shared with other checkpoints"),
        ("saved with", ", ".join(f"{k} {v}" for k, v in manifest.environment.items() if k != "platform")),
    ]
    for extra_key in ("parameters_by_module",):
        if extra_key in details:
            rows.append((extra_key.replace("_", " "), ", ".join(f"{k}: {v:,}" for k, v in details[extra_key].items())))
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        out.print(f"[bold]{key:<{width}}[/]  {value}")
    out.print(f"[bold]{'files':<{width}}[/]")
    for f in manifest.files:
        extra = f"  {counted(len(f.tensors), 'tensor')}" if f.tensors else ""
        out.print(f"  {f.path:<40} {fmt_bytes(f.size):>10}  {counted(len(f.blobs), 'blob')}{extra}")
