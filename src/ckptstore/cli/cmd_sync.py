from __future__ import annotations

import click

from ..store import Store
from ._app import counted, debug_option, err, fmt_bytes, json_option, out, print_json, progress_bar


@click.command("sync", context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("src", metavar="SRC")
@click.argument("dst", metavar="DST")
@click.argument("refs", nargs=-1, metavar="[REF|RUN]...")
@click.option("--dry-run", is_flag=True, help="Show what would be copied and how many bytes sent; write nothing.")
@click.option("--move-tags", is_flag=True, help="Move user tags that point elsewhere at DST to follow SRC.")
@json_option
@debug_option
def sync(src: str, dst: str, refs: tuple[str, ...], dry_run: bool, move_tags: bool, as_json: bool) -> None:
    """Copy checkpoints from the store SRC to the store DST, like git push: with their tags, metrics, annotations,
    lineage and run settings, sending only the blobs DST lacks, each re-hashed on arrival. A checkpoint becomes
    visible at DST only once all of it has arrived, so an interrupted sync leaves nothing half there; run it again
    to finish. DST is created when missing, keeps its own latest/best and applies the run's retention policy.

    REF names a checkpoint (name, RUN:TAG, id prefix); a RUN every checkpoint of the run; none, everything.
    A name DST holds for another checkpoint is never overwritten (a conflict: exit 1); a checkpoint deleted at DST
    is not brought back.

    \b
    Examples:
      ckpt sync ./ckpts /mnt/shared/ckpts               # everything
      ckpt sync ./ckpts /mnt/shared/ckpts bert-sst2     # one run
      ckpt sync /mnt/shared/ckpts ./ckpts bert-sst2:prod --dry-run
    Exit codes: 0 ok, 1 failure (a conflict, a damaged blob at SRC, unknown reference), 2 usage error.
    """
    source = Store.open(src)
    destination = Store.open(dst, create=not dry_run)
    try:
        # The bytes to send are known only checkpoint by checkpoint (what DST lacks): the bar counts, without a total.
        with progress_bar("Syncing", None) as advance:
            report = source.sync(destination, *refs, dry_run=dry_run, move_tags=move_tags, on_progress=advance)
    finally:
        destination.close()
        source.close()
    if as_json:
        print_json(report.to_json())
        report.raise_for_conflicts()
        return
    verb = "would copy" if dry_run else "copied"
    for c in report.copied:
        out.print(f"{verb:<10} {c.name}  {c.id[:12]}  {counted(c.blobs, 'blob')}, {fmt_bytes(c.bytes)}")
    # Checkpoints already present are only counted (a sync of a big store would list them all; --json has them).
    for label, names in (("deleted", report.deleted), ("not kept", report.not_kept), ("gone", report.gone),
                         ("pruned", report.pruned)):
        for name in names:
            out.print(f"{label:<10} {name}")
    for conflict in report.conflicts:
        out.print(f"{'conflict':<10} {conflict}")
    err.print(
        f"{'Would copy' if dry_run else 'Copied'} {counted(len(report.copied), 'checkpoint')}:"
        f" {counted(report.blobs_transferred, 'blob')} ({fmt_bytes(report.bytes_transferred)})"
        f" {'to send' if dry_run else 'sent'}, {counted(report.blobs_present, 'blob')}"
        f" ({fmt_bytes(report.bytes_present)}) already there; {len(report.present)} already present"
    )
    if report.deleted:
        err.print(f"Not brought back (deleted at the destination): {', '.join(report.deleted)}")
    if report.not_kept:
        err.print(f"Not sent (the run's policy at the destination would remove them): {', '.join(report.not_kept)}")
    if report.tags:
        err.print(f"Tags {'to set' if dry_run else 'set'}: {', '.join(report.tags)}")
    if report.pruned:
        err.print(f"Pruned at the destination by the run's policy: {', '.join(report.pruned)}; 'ckpt gc --store"
                  f" {dst}' reclaims their blobs")
    report.raise_for_conflicts()
