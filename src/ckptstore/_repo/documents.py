"""Where each kind of document lives (its key), and the small helpers every kind shares.

Format 2 keys (docs/format.md):
  store.json                     the store's settings
  checkpoints/<id>.json          manifests, immutable, named by the hash of their bytes
  names/<run>/<name, '/' as '~'> a checkpoint's name claim: the id it names (the commit point of a save)
  refs/tags/<run>/<tag>          a tag: the id it points at (moved by compare-and-swap)
  policies/<run>.json            a run's settings (retention policy, what RUN:best follows)
  deleted/<id>                   one record per checkpoint the store deleted: its name
  collections/<name>.json        a collection: named, ordered checkpoints (_format/collection.py)
"""

from __future__ import annotations

from .._backend.protocols import Documents
from .._core.names import check_name, check_run, check_tag, run_of

STORE_JSON = "store.json"
MANIFESTS = "checkpoints/"
NAMES = "names/"
TAGS = "refs/tags/"
SETTINGS = "policies/"
DELETED = "deleted/"


def manifest_key(cid: str) -> str:
    return f"{MANIFESTS}{cid}.json"


def name_key(name: str) -> str:
    # '~' cannot appear in a name, so the mapping is one to one, and no claim is both a file and a folder
    # ('a' and 'a/b' are names/a/a and names/a/a~b).
    return f"{NAMES}{run_of(check_name(name))}/{name.replace('/', '~')}"


def name_of_key(key: str) -> str:
    return key.rsplit("/", 1)[-1].replace("~", "/")


def tag_key(run: str, tag: str) -> str:
    return f"{TAGS}{check_run(run)}/{check_tag(tag)}"


def settings_key(run: str) -> str:
    return f"{SETTINGS}{check_run(run)}.json"


def deleted_key(cid: str) -> str:
    return f"{DELETED}{cid}"


def upsert(docs: Documents, key: str, data: bytes) -> bool:
    """Write `data` under `key`, created or replaced, retrying when another writer moved it in between (the
    compare-and-swap an object store offers). Returns False when it already held `data`."""
    while True:
        current = docs.get(key)
        if current is None:
            if docs.create(key, data):
                return True
        elif current[0] == data:
            return False
        elif docs.replace(key, data, current[1]):
            return True
