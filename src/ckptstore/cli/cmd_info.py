from __future__ import annotations

import click
from rich.markup import escape

from ._app import command, fmt_bytes, json_option, open_store, out, print_json


@command("info")
@click.argument("ref")
@click.option("--sha256", "sha256", is_flag=True, help="Add each file's SHA-256 (the Hub's LFS hash; reads every"
              " byte).")
@json_option
def info(ref: str, sha256: bool, as_json: bool, store_path: str | None) -> None:
    """What huggingface_hub's model_info tells of a Hub model, for a stored checkpoint: architecture, pipeline tag,
    library, parameters and dtypes, size, tags, base model, the card's summary (when a README.md is stored),
    collections, and its files with sizes and hashes.

    Hashes are the store's BLAKE3 file ids (known without reading the file); --sha256 adds SHA-256s.

    \b
    Examples:
      ckpt info sst2:best
      ckpt info minilm/base --json
      ckpt info sst2/step-500 --sha256
    Exit codes: 0 ok, 1 failure (unknown reference), 2 usage error.
    """
    mi = open_store(store_path).model_info(ref, sha256=sha256)
    if as_json:
        print_json(mi.to_json())
        return
    rows = [
        ("name", mi.name), ("id", mi.id), ("model type", mi.model_type or "-"),
        ("architecture", ", ".join(mi.architectures) or "-"), ("pipeline tag", mi.pipeline_tag or "-"),
        ("auto class", mi.auto_model or "-"), ("library", mi.library_name or "-"),
        ("parameters", f"{mi.parameters:,}" if mi.parameters else "-"),
        ("dtypes", ", ".join(f"{k}: {v:,}" for k, v in mi.dtypes.items()) or "-"),
        ("size", f"{fmt_bytes(mi.size)} ({mi.size:,} bytes)"), ("tags", ", ".join(mi.tags) or "-"),
        ("store tags", ", ".join(mi.store_tags) or "-"), ("base model", mi.base_model or "-"),
        ("metrics", ", ".join(f"{k}={v:.6g}" for k, v in mi.metrics.items()) or "-"),
        ("collections", ", ".join(mi.collections) or "-"), ("card", mi.card_summary or "-"),
    ]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        out.print(f"[bold]{key:<{width}}[/]  {escape(str(value))}")
    out.print(f"[bold]{'files':<{width}}[/]")
    path_width = max((len(f.path) for f in mi.files), default=0)
    for f in mi.files:
        digest = f"sha256:{f.sha256}" if f.sha256 else f"id {f.digest[:16]}"
        out.print(escape(f"  {f.path:<{path_width}}  {fmt_bytes(f.size):>10}  {digest}"))
