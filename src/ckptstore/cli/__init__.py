"""The `ckpt` command line. One module per command; `main` maps errors to one line and an exit code.

Exit codes: 0 success, 1 failure (a problem found, a checkpoint missing or damaged, ...), 2 usage error (a bad
argument or option), 130 interrupted.
"""

from __future__ import annotations

import errno
import importlib
import sys
import warnings

import click

from ..errors import CkptError
from ._app import debug_option, group_store_option

# (module, attribute) of each command, in the order `ckpt --help` lists them.
COMMANDS = [
    ("cmd_init", "init"),
    ("cmd_save", "save"),
    ("cmd_ls", "ls"),
    ("cmd_show", "show"),
    ("cmd_cat", "cat"),
    ("cmd_annotate", "annotate"),
    ("cmd_mv", "mv"),
    ("cmd_export", "export"),
    ("cmd_checkout", "checkout"),
    ("cmd_tag", "tag"),
    ("cmd_tag", "untag"),
    ("cmd_rm", "rm"),
    ("cmd_verify", "verify"),
    ("cmd_prune", "prune"),
    ("cmd_policy", "policy"),
    ("cmd_gc", "gc"),
    ("cmd_sync", "sync"),
    ("cmd_du", "du"),
    ("cmd_fsck", "fsck"),
    ("cmd_import", "import_"),
    ("cmd_convert", "convert"),
    ("cmd_log", "log"),
    ("cmd_diff", "diff"),
    ("cmd_validate", "validate"),
    ("cmd_collection", "collection"),
    ("cmd_info", "info"),
    ("cmd_ui", "ui"),
    ("cmd_completion", "completion"),
    ("cmd_card", "card"),
    ("cmd_push", "push"),
    ("cmd_pull", "pull"),
    ("cmd_cache", "cache"),
    ("cmd_pack", "pack"),
    ("cmd_storage", "storage"),
    ("cmd_slim", "slim"),
]


class _Group(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(self.commands)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="ckptstore", prog_name="ckpt")
@group_store_option
@debug_option
def cli() -> None:
    """ckpt: Hugging Face checkpoints stored once, deduplicated, verifiable, named and pruned by policy.

    \b
    Examples:
      ckpt init
      ckpt save ./out/checkpoint-500 bert-sst2/step-500 --tag v1 --metric eval_loss=0.31
      ckpt ls bert-sst2
      ckpt export bert-sst2:v1 ./deploy

    Every command takes --store PATH (default $CKPT_STORE, else ./.ckpt) and --debug,
    after the command or before it.
    Exit codes: 0 ok, 1 failure, 2 usage error.
    """


def _register() -> None:
    for module_name, attr in COMMANDS:
        try:
            module = importlib.import_module(f"{__name__}.{module_name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"{__name__}.{module_name}":
                continue  # a command still being written
            raise
        cli.add_command(getattr(module, attr))


_register()


# OSErrors that describe the machine, not a bug in ckpt (those the store raises itself are StoreFull and
# StoreReadOnly; these come from writes outside it, such as an export's destination).
_DISK_HINTS = {
    errno.ENOSPC: "Free space on that disk, or write somewhere else.",
    errno.EROFS: "That filesystem is mounted read-only: write somewhere else.",
    errno.EACCES: "This user may not write there: check the folder's permissions, or write somewhere else.",
}


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    click.echo(f"warning: {message}", err=True)


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    if not debug:
        warnings.showwarning = _one_line_warning
    try:
        cli.main(args=args, prog_name="ckpt", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("Interrupted.", err=True)
        sys.exit(130)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:  # a usage error: its message says all, --debug or not
        exc.show()
        sys.exit(exc.exit_code)  # 2 for usage errors
    except CkptError as exc:
        if debug:
            raise
        click.echo(f"error: {exc.message}", err=True)
        if exc.hint:
            click.echo(f"hint: {exc.hint}", err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo("Interrupted.", err=True)
        sys.exit(130)
    except Exception as exc:  # noqa: BLE001 - the last line of defence: one line, not a traceback
        if debug:
            raise
        if isinstance(exc, OSError) and exc.errno in _DISK_HINTS:
            # Not a bug: the machine's state (a full disk, say, when exporting). Say which, and what to do.
            where = f": {exc.filename!r}" if exc.filename else ""
            click.echo(f"error: {exc.strerror or exc}{where}", err=True)
            click.echo(f"hint: {_DISK_HINTS[exc.errno]}", err=True)
            sys.exit(1)
        click.echo(f"error: {type(exc).__name__}: {exc}", err=True)
        click.echo("hint: run again with --debug for the traceback, and report it if it looks like a bug.", err=True)
        sys.exit(1)
