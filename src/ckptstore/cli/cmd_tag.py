from __future__ import annotations

import click

from ._app import command, err, open_store


@command("tag")
@click.argument("ref")
@click.argument("tag")
def tag(ref: str, tag: str, store_path: str | None) -> None:
    """Point TAG of the checkpoint's run at REF (moving it if it was elsewhere). Then REF works as RUN:TAG.

    \b
    Examples:
      ckpt tag bert-sst2/step-500 v1.0.0     # now bert-sst2:v1.0.0
    Exit codes: 0 ok, 1 failure, 2 usage error (invalid tag).
    """
    store = open_store(store_path)
    run = store.info(ref).run
    before = store.tags(run).get(f"{run}:{tag}")
    info = store.tag(ref, tag)
    if before is not None and before != info.id:
        was = {c.id: c.name for c in store.list(run)}.get(before, before[:12])
        err.print(f"Moved {info.run}:{tag} from {was} to {info.name}")
    else:
        err.print(f"Tagged {info.name} as {info.run}:{tag}")


@command("untag")
@click.argument("tag_ref", metavar="RUN:TAG")
def untag(tag_ref: str, store_path: str | None) -> None:
    """Remove the tag RUN:TAG (the checkpoint stays).

    \b
    Examples:
      ckpt untag bert-sst2:v1.0.0
    Exit codes: 0 ok, 1 failure (no such tag), 2 usage error.
    """
    store = open_store(store_path)
    store.untag(tag_ref)
    err.print(f"Removed tag {tag_ref}")
