"""Did-you-mean: the one place that picks candidates for an unknown name, tag, run, file or keyword."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


def close_matches(word: str, choices: Iterable[str], *, n: int = 3, cutoff: float = 0.6) -> tuple[str, ...]:
    """Up to `n` of `choices` closest to `word`, best first."""
    return tuple(difflib.get_close_matches(word, list(choices), n=n, cutoff=cutoff))


def did_you_mean(word: str, choices: Iterable[str], *, cutoff: float = 0.6) -> str:
    """The sentence " Did you mean 'x'?" (or "'x' or 'y'") to append to a message; empty when nothing is close."""
    found = close_matches(word, choices, cutoff=cutoff)
    if not found:
        return ""
    return " Did you mean " + " or ".join(repr(f) for f in found) + "?"
