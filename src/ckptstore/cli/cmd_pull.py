from __future__ import annotations

import click
from rich.markup import escape

from ._app import command, err, fmt_bytes, json_option, open_store, print_json
from .cmd_import import _Bars
from .cmd_push import hub_output


@command("pull")
@click.argument("spec", metavar="REPO_ID[@REV]")
@click.option("--name", metavar="NAME", help="Store it as NAME (default ORG--MODEL/rev-<commit[:12]>).")
@json_option
def pull(spec, name, as_json, store_path) -> None:
    """Bring a Hugging Face Hub model into the store.

    The revision (default main) is downloaded with huggingface_hub's snapshot_download into the hub cache, then
    stored like any import: tensors already in the store are not stored again, legacy weight pickles become
    safetensors. The branches and tags that point at the commit become tags of the run (ORG--MODEL:main). With
    HF_HUB_OFFLINE=1 the snapshot is read from the local hub cache. Pulling what is stored already is a no-op.

    \b
    Examples:
      ckpt pull google-bert/bert-base-uncased
      ckpt pull ana/bert-sst2@v2.0 --name bert-sst2/hub-v2
      HF_HUB_OFFLINE=1 ckpt pull sentence-transformers/all-MiniLM-L6-v2
    Exit codes: 0 ok, 1 failure (no such repository or revision, unreachable), 2 usage error.
    """
    store = open_store(store_path, create=True)
    with hub_output():
        result = store.pull(spec, name=name, progress=_Bars())
    if as_json:
        print_json(result.to_json())
        return
    for note in result.notes:
        err.print(f"note: {escape(note)}")
    where = f"{result.repo_id}@{result.revision}" + (" (from the local hub cache)" if result.offline else "")
    tags = f"; tags {', '.join(result.tags)}" if result.tags else ""
    if result.status == "added":
        err.print(f"Pulled {escape(where)} (commit {result.commit[:12]}) as [bold]{escape(result.name)}[/]:"
                  f" {fmt_bytes(result.bytes_read)} read, {fmt_bytes(result.bytes_stored)} newly stored{escape(tags)}")
    else:
        err.print(f"{escape(where)} (commit {result.commit[:12]}) is already stored as"
                  f" [bold]{escape(result.name)}[/]{escape(tags)}")
    click.echo(result.name)
