"""The storage seam: the protocols every backend fills (protocols.py), the local folder backend (local.py) and
the POSIX file helpers it is built on (posix.py)."""

from .local import LocalBackend
from .protocols import Backend, BlobSession, Blobs, Coordination, Documents, Version

__all__ = ["Backend", "BlobSession", "Blobs", "Coordination", "Documents", "LocalBackend", "Version"]
