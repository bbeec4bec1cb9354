from __future__ import annotations

import sys

import click
from click.shell_completion import get_completion_class

from ._app import command

_SHELLS = ("bash", "zsh", "fish")
# The variable click's completion protocol reads: _<PROG>_COMPLETE for the program named ckpt.
COMPLETE_VAR = "_CKPT_COMPLETE"


@command("completion")
@click.argument("shell", type=click.Choice(_SHELLS))
def completion(shell: str, store_path: str | None) -> None:
    """Print the shell completion script for SHELL (bash, zsh or fish).

    \b
    Examples:
      eval "$(ckpt completion bash)"                         # in ~/.bashrc
      eval "$(ckpt completion zsh)"                          # in ~/.zshrc
      ckpt completion fish > ~/.config/fish/completions/ckpt.fish
    Exit codes: 0 ok, 2 usage error (an unknown shell).
    """
    from . import cli

    comp_cls = get_completion_class(shell)
    assert comp_cls is not None  # click ships all three
    sys.stdout.write(comp_cls(cli, {}, "ckpt", COMPLETE_VAR).source() + "\n")
