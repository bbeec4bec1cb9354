from __future__ import annotations

from pathlib import Path

import click

from ._app import command, err, fmt_bytes, open_store, progress_bar


@command("export")
@click.argument("ref")
@click.argument("dest", type=click.Path(path_type=str))
@click.option("--verify", is_flag=True, help="Re-hash every blob while copying (slower, catches corruption).")
@click.option("--card", is_flag=True, help="Also write the checkpoint's model card as DEST/README.md (see 'ckpt card').")
def export(ref: str, dest: str, verify: bool, card: bool, store_path: str | None) -> None:
    """Write checkpoint REF as a plain folder DEST, byte-identical to what was saved.

    DEST must not exist or be empty; from_pretrained(DEST) loads it.

    \b
    Examples:
      ckpt export bert-sst2:best ./deploy
      ckpt export bert-sst2:best ./deploy --card    # with README.md, the model card
    Exit codes: 0 ok, 1 failure (damaged blob), 2 usage error (DEST not empty).
    """
    store = open_store(store_path)
    info = store.info(ref)
    card_text = str(store.model_card(info.id)) if card else None  # made first: a card that fails writes nothing
    with progress_bar(f"exporting {info.name}", info.logical_bytes) as advance:
        store.export(info.id, dest, verify=verify, on_progress=advance)
    err.print(f"Exported [bold]{info.name}[/] to {dest} ({info.file_count} files, {fmt_bytes(info.logical_bytes)})")
    if card_text is not None:
        readme = Path(dest) / "README.md"
        replaced = readme.exists()
        readme.write_text(card_text + "\n", encoding="utf-8")
        err.print(f"Wrote the model card to {readme}" + (" (in place of the checkpoint's own README.md)" if replaced else ""))
