from __future__ import annotations

from pathlib import Path

import click

from ._app import command, err, open_store


@command("card")
@click.argument("ref")
@click.option("--out", "out_file", type=click.Path(path_type=Path), metavar="FILE",
              help="Write the card to FILE (e.g. README.md) instead of stdout.")
def card(ref: str, out_file: Path | None, store_path: str | None) -> None:
    """Print the Hugging Face model card of checkpoint REF (README.md: YAML metadata, then Markdown).

    Made with huggingface_hub's ModelCard: base model (from lineage or the Hub repo it was imported or pulled
    from), library, pipeline tag (from the architecture), tags, the stored metrics as model-index evaluation
    results, training facts (trainer_state.json and JSON argument files; training_args.bin is never opened),
    intended use (the checkpoint's message), lineage, id and file hashes.

    \b
    Examples:
      ckpt card bert-sst2:best
      ckpt card bert-sst2:best --out README.md
      ckpt export bert-sst2:best ./deploy --card     # the card beside the weights
    Exit codes: 0 ok, 1 failure (unknown reference), 2 usage error.
    """
    store = open_store(store_path)
    text = str(store.model_card(ref))
    if out_file is None:
        click.echo(text)
        return
    out_file.write_text(text + "\n", encoding="utf-8")
    err.print(f"Wrote the model card of {ref} to {out_file}")
