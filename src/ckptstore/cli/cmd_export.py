from __future__ import annotations

from pathlib import Path

import click

from ._app import command, err, fmt_bytes, open_store, progress_bar


@command("export")
@click.argument("ref")
@click.argument("dest", type=click.Path(path_type=str))
@click.option("--verify", is_flag=True, help="Re-hash every blob while copying (slower, catches corruption).")
@click.option("--card", is_flag=True, help="Also write the checkpoint's model card as DEST/README.md (see 'ckpt card').")
@click.option("--hf", is_flag=True,
              help="A distributed (torch.distributed.checkpoint) checkpoint as a from_pretrained folder: full"
              " tensors consolidated from the ranks' shards, with the config and tokenizer saved beside them.")
@click.option("--max-shard-size", default="5GB", show_default=True, help="With --hf: the largest weights file.")
def export(ref: str, dest: str, verify: bool, card: bool, hf: bool, max_shard_size: str,
           store_path: str | None) -> None:
    """Write checkpoint REF as a plain folder DEST, byte-identical to what was saved.

    DEST must not exist or be empty; from_pretrained(DEST) loads it. With --hf, a checkpoint saved by
    torch.distributed.checkpoint (ckptstore.integrations.dcp.StoreWriter) becomes a Hugging Face folder instead.

    \b
    Examples:
      ckpt export bert-sst2:best ./deploy
      ckpt export bert-sst2:best ./deploy --card    # with README.md, the model card
      ckpt export llama-fsdp/step-1000 ./hf-model --hf --max-shard-size 2GB
    Exit codes: 0 ok, 1 failure (damaged blob), 2 usage error (DEST not empty, not a DCP checkpoint with --hf).
    """
    store = open_store(store_path)
    info = store.info(ref)
    card_text = str(store.model_card(info.id)) if card else None  # made first: a card that fails writes nothing
    if hf:
        store.export_hf(info.id, dest, max_shard_size=max_shard_size, verify=verify)
        err.print(f"Exported [bold]{info.name}[/] to {dest} as a Hugging Face model folder")
    else:
        with progress_bar(f"exporting {info.name}", info.logical_bytes) as advance:
            store.export(info.id, dest, verify=verify, on_progress=advance)
        err.print(f"Exported [bold]{info.name}[/] to {dest} ({info.file_count} files, {fmt_bytes(info.logical_bytes)})")
    if card_text is not None:
        readme = Path(dest) / "README.md"
        replaced = readme.exists()
        readme.write_text(card_text + "\n", encoding="utf-8")
        err.print(f"Wrote the model card to {readme}" + (" (in place of the checkpoint's own README.md)" if replaced else ""))
