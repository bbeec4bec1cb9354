from __future__ import annotations

import click

from ._app import command, err, fmt_bytes, json_option, open_store, print_json, transformers_output, verbose_option


@command("convert")
@click.argument("ref")
@click.option("--to", type=click.Choice(["safetensors"]), default="safetensors", show_default=True,
              help="Target format.")
@click.option("--dtype", type=click.Choice(["bf16", "fp16", "fp32"]), help="Cast floating-point weights.")
@click.option("--max-shard-size", metavar="SIZE", help="Split the weights into shards of at most SIZE (e.g. 2GB).")
@click.option("--name", metavar="NEW", help="Name of the new checkpoint (default: REF's name + '-DTYPE').")
@verbose_option
@json_option
def convert(ref, to, dtype, max_shard_size, name, verbose, as_json, store_path) -> None:
    """Write a new checkpoint from REF with its weights as safetensors, in another dtype or shard size.

    The new checkpoint's parent is REF. Tied weights are handled as save_pretrained handles them, legacy .bin
    weights are read with torch's restricted unpickler only, and every other file (tokenizer, training state) is
    carried over without being copied.

    \b
    Examples:
      ckpt convert bert-sst2:best --dtype bf16
      ckpt convert legacy-model --to safetensors --max-shard-size 2GB --name legacy-model/st
    Exit codes: 0 ok, 1 failure (unsafe pickle, unknown REF), 2 usage error.
    """
    store = open_store(store_path)
    with transformers_output(verbose):
        info = store.convert(ref, to=to, dtype=dtype, max_shard_size=max_shard_size, name=name)
    if as_json:
        print_json(info.to_json())
        return
    err.print(f"Converted {ref} -> [bold]{info.name}[/] ({info.short_id}): {info.file_count} files,"
              f" {fmt_bytes(info.logical_bytes)}")
