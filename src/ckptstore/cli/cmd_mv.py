from __future__ import annotations

import click

from ._app import command, err, json_option, open_store, print_json


@command("mv")
@click.argument("ref")
@click.argument("new_name")
@json_option
def mv(ref: str, new_name: str, as_json: bool, store_path: str | None) -> None:
    """Rename the checkpoint REF to NEW_NAME.

    Nothing is copied: the checkpoint keeps its id, files, metrics, lineage and annotations; only its name moves.
    Its tags go with it within its run; moved to another run (NEW_NAME's first segment), it leaves its old run's
    tags behind, and both runs' latest and best are brought up to date.

    \b
    Examples:
      ckpt mv bert-sst2/step-500 bert-sst2/release-candidate
      ckpt mv scratch/try-3 bert-sst2/step-900
    Exit codes: 0 ok, 1 failure (unknown REF, NEW_NAME taken), 2 usage error (invalid NEW_NAME).
    """
    store = open_store(store_path)
    before = store.info(ref)
    info = store.rename(before.id, new_name)
    left = sorted(f"{before.run}:{t}" for t in before.tags if t not in ("latest", "best")) \
        if info.run != before.run else []
    if as_json:
        print_json({**info.to_json(), "renamed_from": before.name, "tags_left_behind": left})
        return
    err.print(f"Renamed {before.name} to [bold]{info.name}[/] ({info.short_id})")
    if left:
        err.print(f"Tags of run {before.run!r} that pointed at it were removed: {', '.join(left)}")
