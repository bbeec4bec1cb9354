"""The repository: a store's objects, manifests, names, tags, deletion records and run settings over the storage
seam, with the SQLite catalog that caches them, the locks and leases, and reference resolution."""

from .repository import Repository

__all__ = ["Repository"]
