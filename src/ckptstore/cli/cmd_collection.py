"""`ckpt collection`: named, ordered groups of checkpoints across runs, kept by retention."""

from __future__ import annotations

import click
from rich.markup import escape

from ._app import command, counted, err, json_option, open_store, out, print_json


@click.group("collection", context_settings={"help_option_names": ["-h", "--help"]})
def collection() -> None:
    """Named, ordered groups of checkpoints across runs (a release, a model family, an ablation).

    A checkpoint in a collection is kept by every prune (the plan says "in collection NAME"), and 'ckpt rm'
    refuses it unless --force, which also takes it out of the collection.

    \b
    Examples:
      ckpt collection create release-1 -m "what ships in 1.0"
      ckpt collection add release-1 sst2:best --note "the classifier"
      ckpt collection show release-1
      ckpt collection rm release-1 sst2/step-500
      ckpt collection delete release-1
    Exit codes: 0 ok, 1 failure (unknown collection or reference), 2 usage error (an invalid name).
    """


def _sub(name: str, *, of_one: bool = True):
    """A `ckpt collection` sub-command taking --json and, when it acts on one collection (`of_one`), its NAME
    before any other argument."""

    def wrap(f):
        f = json_option(f)
        if of_one:
            f = click.argument("name")(f)
        cmd = command(name)(f)
        collection.add_command(cmd)
        return cmd

    return wrap


@_sub("create")
@click.option("-m", "--message", "description", help="What the collection is for.")
def create(name: str, description: str | None, as_json: bool, store_path: str | None) -> None:
    """Create an empty collection NAME (letters, digits, '.', '_', '-').

    \b
    Examples:
      ckpt collection create release-1 -m "what ships in 1.0"
    Exit codes: 0 ok, 1 failure (it exists), 2 usage error (an invalid name).
    """
    col = open_store(store_path).collection_create(name, description)
    if as_json:
        print_json(col.to_json())
        return
    err.print(f"Created collection {col.name}")


@_sub("add")
@click.argument("refs", nargs=-1, required=True, metavar="REF...")
@click.option("--note", help="A note kept with the checkpoint in this collection (replaces the one it has).")
def add(name: str, refs: tuple[str, ...], note: str | None, as_json: bool, store_path: str | None) -> None:
    """Append checkpoints to collection NAME, in the order given (one already there keeps its place).

    \b
    Examples:
      ckpt collection add release-1 sst2:best --note "the classifier"
      ckpt collection add ablation lr-1e-4/step-900 lr-3e-4/step-900
    Exit codes: 0 ok, 1 failure (unknown collection or reference), 2 usage error.
    """
    store = open_store(store_path)
    col = None
    for ref in refs:
        before = store.collection(name)
        col = store.collection_add(name, ref, note=note)
        item = next(i for i in col.items if i.id == store.resolve(ref))
        if as_json:
            continue
        if item.id not in before.ids:
            err.print(f"Added {item.name} ({item.short_id}) to {name}")
        elif note is not None:
            err.print(f"Updated the note of {item.name} ({item.short_id}) in {name}")
        else:
            err.print(f"{item.name} ({item.short_id}) is already in {name}")
    if as_json and col is not None:
        print_json(col.to_json())


@_sub("rm")
@click.argument("refs", nargs=-1, required=True, metavar="REF...")
def rm(name: str, refs: tuple[str, ...], as_json: bool, store_path: str | None) -> None:
    """Take checkpoints out of collection NAME (the checkpoints stay; prune may remove them later).

    REF may also be the name a checkpoint had when it was added, or a prefix of its id.

    \b
    Examples:
      ckpt collection rm release-1 sst2/step-500
    Exit codes: 0 ok, 1 failure (unknown collection, or REF not in it), 2 usage error.
    To delete the collection itself: 'ckpt collection delete NAME'.
    """
    store = open_store(store_path)
    before = {i.id: i.name for i in store.collection(name).items}
    col = store.collection_remove(name, refs)
    if as_json:
        print_json(col.to_json())
        return
    for cid, item_name in before.items():
        if cid not in col.ids:
            err.print(f"Took {item_name} out of {name}")


@_sub("delete")
def delete(name: str, as_json: bool, store_path: str | None) -> None:
    """Delete collection NAME. Its checkpoints stay in the store; retention no longer keeps them for it.

    \b
    Examples:
      ckpt collection delete release-1
    Exit codes: 0 ok, 1 failure (unknown collection), 2 usage error.
    """
    col = open_store(store_path).collection_delete(name)
    if as_json:
        print_json(col.to_json())
        return
    err.print(f"Deleted collection {col.name} ({counted(len(col.items), 'checkpoint')} left in the store)")


@_sub("ls", of_one=False)
def ls(as_json: bool, store_path: str | None) -> None:
    """List the collections: name, checkpoints, created, description.

    \b
    Examples:
      ckpt collection ls
      ckpt collection ls --json
    Exit codes: 0 ok, 1 failure, 2 usage error.
    """
    cols = open_store(store_path).collections()
    if as_json:
        print_json([c.to_json() for c in cols])
        return
    if not cols:
        err.print("No collections. Create one: ckpt collection create NAME")
        return
    width = max(len(c.name) for c in cols)
    for c in cols:
        out.print(escape(f"{c.name:<{width}}  {counted(len(c.items), 'checkpoint'):>14}  {c.created_at_str}"
                         f"  {c.description or ''}".rstrip()))


@_sub("show")
def show(name: str, as_json: bool, store_path: str | None) -> None:
    """Show collection NAME: its checkpoints in order, with their ids, notes, and those no longer stored.

    \b
    Examples:
      ckpt collection show release-1
    Exit codes: 0 ok, 1 failure (unknown collection), 2 usage error.
    """
    col = open_store(store_path).collection(name)
    if as_json:
        print_json(col.to_json())
        return
    out.print(escape(f"{col.name}: {col.description}" if col.description else col.name))
    if not col.items:
        out.print("  (empty)")
    width = max((len(i.name) for i in col.items), default=0)
    for n, i in enumerate(col.items, 1):
        gone = "" if i.exists else "  (no longer stored)"
        renamed = f"  (added as {i.saved_name})" if i.exists and i.saved_name != i.name else ""
        out.print(escape(f"  {n:>2}. {i.name:<{width}}  {i.short_id}{renamed}{gone}  {i.note or ''}".rstrip()))
