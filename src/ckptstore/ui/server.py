"""Serving the web view with uvicorn on a socket bound here, so that the URL printed is the one served (port 0
picks a free port) and a port in use is one clear error."""

from __future__ import annotations

import errno
import ipaddress
import socket
import threading
import webbrowser
from collections.abc import Callable

from ..errors import InvalidArgument, StoreLocked
from ..store import Store
from .app import create_app

# The names a browser sends as Host for a loopback server; any other Host is a page of another site that resolved
# its own name to this machine (DNS rebinding), and is refused.
LOOPBACK_HOSTS = ["127.0.0.1", "localhost", "::1", "[::1]"]


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]"), port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise StoreLocked(f"Port {port} on {host} is in use.",
                              hint="Pick another with --port N, or --port 0 for any free port.") from None
        raise InvalidArgument(f"Cannot listen on {host}:{port}: {exc.strerror or exc}.",
                              hint="Check --host (an address of this machine) and --port.") from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def url_of(sock: socket.socket, host: str) -> str:
    port = sock.getsockname()[1]
    shown = "127.0.0.1" if host in ("0.0.0.0", "") else host
    shown = f"[{shown.strip('[]')}]" if ":" in shown else shown
    return f"http://{shown}:{port}/"


def serve(store: Store, *, host: str = "127.0.0.1", port: int = 8765, allow_write: bool = False,
          open_browser: bool = False, on_ready: Callable[[str], None] | None = None) -> None:
    """Serve until interrupted (Ctrl-C, SIGTERM). `on_ready` gets the URL once the socket listens."""
    import uvicorn

    sock = bind(host, port)
    url = url_of(sock, host)
    app = create_app(store, allow_write=allow_write, allowed_hosts=LOOPBACK_HOSTS if is_loopback(host) else None)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off"))
    if on_ready:
        on_ready(url)
    if open_browser:
        threading.Timer(0.5, webbrowser.open, args=(url,)).start()
    stop_refreshing = app.state.start_refresher()
    try:
        server.run(sockets=[sock])
    finally:
        stop_refreshing.set()
