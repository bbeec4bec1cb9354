from __future__ import annotations

import click

from ._app import command, err, fmt_bytes, open_store, progress_bar


@command("checkout")
@click.argument("ref")
@click.argument("dest", type=click.Path(path_type=str))
@click.option("--verify", is_flag=True, help="Re-hash every blob while copying (slower, catches corruption).")
def checkout(ref: str, dest: str, verify: bool, store_path: str | None) -> None:
    """Write training checkpoint REF to DEST to resume from it: trainer.train(resume_from_checkpoint=DEST).

    The folder is byte-identical to what Trainer saved (optimizer, scheduler, RNG state, trainer_state.json), so
    the resumed run continues exactly. A checkpoint without optimizer or trainer state is refused (a resume from it
    would restart the optimizer); use 'ckpt export' for weights alone. DEST must not exist or be empty.

    With --verify, RUN:latest falls back: when the newest checkpoint is damaged (a blob missing or changed), it
    says so and checks out the newest older one that verifies, naming both. A name given explicitly fails instead.

    \b
    Examples:
      ckpt checkout bert-sst2:latest ./resume
      ckpt checkout bert-sst2/step-500 ./resume --verify
    Exit codes: 0 ok, 1 failure (no training state, damaged blob), 2 usage error (DEST not empty).
    """
    store = open_store(store_path)
    info = store.info(ref)
    # RUN:latest with --verify is a resume that must not pick a damaged checkpoint: it falls back to the newest
    # one that verifies. A checkpoint named explicitly is what the user asked for; it fails as it is.
    fallback = verify and ref.endswith(":latest")
    with progress_bar(f"checking out {info.name}", info.logical_bytes) as advance:
        point = store.checkout_point(ref if fallback else info.id, dest, verify=verify, fallback=fallback,
                                     on_progress=advance)
    if point.fell_back:
        err.print(f"[yellow]warning:[/] {point.describe()}")
        info = point.info
    err.print(f"Checked out [bold]{info.name}[/] to {dest} ({info.file_count} files, {fmt_bytes(info.logical_bytes)})")
    if store.manifest(info.id).file("trainer_state.json") is not None:  # Trainer's, not CheckpointManager's
        err.print(f"Resume with: trainer.train(resume_from_checkpoint={dest!r})")
    else:
        err.print(f"Saved by CheckpointManager, not Trainer: resume in the loop with"
                  f" CheckpointManager(store, {info.run!r}).restore(model, optimizer, scheduler, ref={info.name!r})"
                  " (no checkout needed)")
