"""Checkpoint names, runs, tags and the syntax of references.

A name is one or more segments joined by '/', each of letters, digits, '.', '_' and '-', never '.' or '..'.
The run is the first segment. A tag is one segment and belongs to a run, written ``RUN:TAG``.
These rules keep every name usable as a relative path inside the store: nothing can point outside it.
"""

from __future__ import annotations

import re

from ..errors import InvalidName

_SEGMENT = re.compile(r"[A-Za-z0-9._-]+")
MAX_NAME_LENGTH = 200

# Tags the store maintains itself; a user may not set them by hand (they would be overwritten).
RESERVED_TAGS = frozenset({"latest", "best"})

# The names a training loop gives its checkpoints: 'step-500', Trainer's 'checkpoint-500', ... The optional '.K' is
# a second attempt at a step after a resume from an earlier checkpoint ('step-500.1', see _manager).
_STEP_RE = re.compile(r"(?:^|[-_])(?:step|checkpoint|ckpt|iter)[-_]?(\d+)(\.\d+)?$")


def step_from_name(name: str) -> int | None:
    """'bert/step-500' -> 500, 'run/checkpoint-1000' -> 1000: Trainer's and our own naming. A second attempt
    ('step-500.1') carries its step explicitly, so it is not read from the name."""
    m = _STEP_RE.search(name.rsplit("/", 1)[-1])
    return int(m.group(1)) if m and m.group(2) is None else None


def is_step_name(name: str) -> bool:
    """True for a name a training loop gives a checkpoint by its step ('run/step-500', 'run/step-500.1'); False for
    a name someone chose ('run/serve', 'run/final')."""
    return _STEP_RE.search(name.rsplit("/", 1)[-1]) is not None


def _check_segments(value: str, *, kind: str, max_segments: int | None = None) -> None:
    if not isinstance(value, str) or not value:
        raise InvalidName(str(value), "it is empty", kind=kind)
    if len(value) > MAX_NAME_LENGTH:
        raise InvalidName(value, f"it is longer than {MAX_NAME_LENGTH} characters", kind=kind)
    if value.startswith("/") or value.startswith("\\") or re.match(r"^[A-Za-z]:", value):
        raise InvalidName(value, "it is an absolute path; give a relative name such as 'run/step-100'", kind=kind)
    segments = value.split("/")
    if max_segments is not None and len(segments) > max_segments:
        raise InvalidName(value, "it may not contain '/'", kind=kind)
    for segment in segments:
        if segment == "":
            raise InvalidName(value, "it has an empty segment ('//' or a trailing '/')", kind=kind)
        if segment in (".", ".."):
            raise InvalidName(value, f"it has a {segment!r} segment", kind=kind)
        if not _SEGMENT.fullmatch(segment):
            bad = sorted({c for c in segment if not _SEGMENT.fullmatch(c)})
            shown = "".join(bad).encode("unicode_escape").decode()
            raise InvalidName(value, f"it contains {shown!r}; use letters, digits, '.', '_' and '-'", kind=kind)


def check_name(name: str) -> str:
    _check_segments(name, kind="name")
    return name


def check_run(run: str) -> str:
    _check_segments(run, kind="run", max_segments=1)
    return run


def check_tag(tag: str, *, allow_reserved: bool = True) -> str:
    _check_segments(tag, kind="tag", max_segments=1)
    if not allow_reserved and tag in RESERVED_TAGS:
        raise InvalidName(tag, "it is kept up to date by ckptstore itself", kind="tag")
    return tag


def file_path_problem(path: object) -> str | None:
    """Why `path` cannot name a file inside a checkpoint, or None when it can.

    Looser than names (hub files have spaces, '+', '@'), but a path must stay inside the folder it is exported to
    on every platform: relative, '/'-separated, no '.' or '..' segment, no backslash (a separator on Windows), no
    drive letter, no control character (NUL truncates paths in C)."""
    if not isinstance(path, str) or not path:
        return "it is empty"
    if any(ord(c) < 32 or ord(c) == 127 for c in path):
        return "it contains a control character"
    if "\\" in path:
        return "it contains a backslash"
    if path.startswith("/") or re.match(r"^[A-Za-z]:", path):
        return "it is absolute"
    if any(segment in ("", ".", "..") for segment in path.split("/")):
        return "it has an empty, '.' or '..' segment"
    return None


def run_of(name: str) -> str:
    return name.split("/", 1)[0]


def split_tag_ref(ref: str) -> tuple[str, str] | None:
    """'bert:best' -> ('bert', 'best'); anything without exactly one ':' is not a tag reference."""
    if ref.count(":") != 1:
        return None
    run, tag = ref.split(":")
    return run, tag
