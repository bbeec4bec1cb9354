from __future__ import annotations

import json

import click
from rich.table import Table

from ._app import command, fmt_bytes, json_option, open_store, out, print_json

MAX_ROWS = 50


@command("diff")
@click.argument("a")
@click.argument("b")
@click.option("--all", "show_all", is_flag=True, help=f"List every changed tensor (default: the {MAX_ROWS} largest).")
@json_option
def diff(a: str, b: str, show_all: bool, as_json: bool, store_path: str | None) -> None:
    """Show how checkpoint B differs from A: config keys (old -> new), files, and tensors added, removed, reshaped or
    changed (relative L2 change and max absolute difference, largest first). Tensors whose blobs are equal are
    counted unchanged without being read.

    \b
    Examples:
      ckpt diff bert-sst2/step-500 bert-sst2/step-1000
      ckpt diff bert-sst2:prod bert-sst2:best --json
    Exit codes: 0 ok (whether or not they differ), 1 failure (unknown reference), 2 usage error.
    """
    store = open_store(store_path)
    report = store.diff(a, b)
    if as_json:
        print_json(report.to_json())
        return
    out.print(f"[bold]{report.a}[/] ({report.a_id[:12]}) -> [bold]{report.b}[/] ({report.b_id[:12]})")
    if report.identical:
        out.print("identical: same config, same files")
        return
    if report.config:
        out.print("[bold]config[/]")
        for c in report.config:
            old, new = json.dumps(c.old), json.dumps(c.new)
            text = {"added": f"+ {c.key} = {new}", "removed": f"- {c.key} (was {old})"}.get(
                c.change, f"~ {c.key}: {old} -> {new}")
            out.print(f"  {text}", markup=False)
    if report.files:
        out.print(f"[bold]files[/] ({report.files_unchanged} unchanged)")
        for f in report.files:
            sizes = {"added": fmt_bytes(f.new_size or 0), "removed": fmt_bytes(f.old_size or 0)}.get(
                f.change, f"{fmt_bytes(f.old_size or 0)} -> {fmt_bytes(f.new_size or 0)}")
            out.print(f"  {'+-~'['added removed changed'.split().index(f.change)]} {f.path}  {sizes}", markup=False)
    t = report
    out.print(
        f"[bold]tensors[/]: {len(t.tensors_changed)} changed, {len(t.tensors_added)} added, {len(t.tensors_removed)}"
        f" removed, {len(t.tensors_reshaped)} reshaped, {t.tensors_unchanged} unchanged (equal hashes, not read)"
    )
    for item in (*t.tensors_added, *t.tensors_removed, *t.tensors_reshaped):
        shape = {"added": f"{item.new_dtype} {list(item.new_shape or ())}",
                 "removed": f"{item.old_dtype} {list(item.old_shape or ())}"}.get(
            item.change, f"{list(item.old_shape or ())} -> {list(item.new_shape or ())}")
        out.print(f"  {item.change:<9} {item.name}  {shape}", markup=False)
    if t.tensors_changed:
        table = Table(box=None, header_style="bold", pad_edge=False)
        for col in ("TENSOR", "REL L2", "MAX ABS", "SHAPE", "DTYPE"):
            table.add_column(col, justify="left" if col in ("TENSOR", "DTYPE") else "right")
        rows = t.tensors_changed if show_all else t.tensors_changed[:MAX_ROWS]
        for c in rows:
            dtype = c.new_dtype if c.old_dtype == c.new_dtype else f"{c.old_dtype} -> {c.new_dtype}"
            table.add_row(c.name, f"{c.rel_l2:.3g}", f"{c.max_abs:.3g}", str(list(c.new_shape or ())), dtype)
        out.print(table)
        if len(rows) < len(t.tensors_changed):
            out.print(f"  ... {len(t.tensors_changed) - len(rows)} more (--all lists them)")
