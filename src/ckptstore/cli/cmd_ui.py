from __future__ import annotations

import click

from ._app import command, err, open_store


@command("ui")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on. Anything but a loopback address lets other machines read the store.")
@click.option("--port", type=click.IntRange(0, 65535), default=8765, show_default=True,
              help="Port to listen on (0: any free port).")
@click.option("--open", "open_browser", is_flag=True, help="Open the view in the default browser.")
@click.option("--allow-write", is_flag=True,
              help="Allow tag, untag, delete and prune from the page (each shows its plan and asks first).")
def ui(host: str, port: int, open_browser: bool, allow_write: bool, store_path: str | None) -> None:
    """Serve a local web view of the store: runs, metric curves, checkpoints, diffs, disk usage.

    Read-only unless --allow-write. Stop it with Ctrl-C.

    \b
    Examples:
      ckpt ui
      ckpt ui --open --port 8800
      ckpt ui --allow-write
    Exit codes: 0 stopped, 1 failure (port in use), 2 usage error.
    """
    from ..ui import is_loopback, serve

    store = open_store(store_path)
    if not is_loopback(host):
        err.print(f"warning: listening on {host}, not a loopback address: anyone who can reach this machine can"
                  " read the store" + (" and change it (--allow-write)" if allow_write else "") + ". Use the"
                  " default --host 127.0.0.1 unless that is what you want.")

    def ready(url: str) -> None:
        err.print(f"Serving {store.root} at {url} ({'writes allowed' if allow_write else 'read-only'};"
                  " Ctrl-C to stop)")
        click.echo(url)

    try:
        serve(store, host=host, port=port, allow_write=allow_write, open_browser=open_browser, on_ready=ready)
    finally:
        store.close()
