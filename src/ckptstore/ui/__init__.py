"""`ckpt ui`: a local web view of a store, a client of the public API (Store, policies, errors, config, records).

``create_app(store)`` is the ASGI app (Starlette); ``serve`` runs it with uvicorn. Pages are Jinja2 templates,
the charts uPlot (vendored in static/vendor with its licence: the view works offline).
"""

from .app import create_app
from .server import is_loopback, serve

__all__ = ["create_app", "is_loopback", "serve"]
