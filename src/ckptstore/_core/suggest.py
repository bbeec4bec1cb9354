"""Did-you-mean: the one place that picks candidates for an unknown name, tag, run, file or keyword."""

from __future__ import annotations

import difflib
from collections.abc import Iterable

from ..errors import did_you_mean


def close_matches(word: str, choices: Iterable[str], *, n: int = 3, cutoff: float = 0.6) -> tuple[str, ...]:
    """Up to `n` of `choices` closest to `word`, best first."""
    return tuple(difflib.get_close_matches(word, list(choices), n=n, cutoff=cutoff))


def suggest(word: str, choices: Iterable[str], *, cutoff: float = 0.6) -> str:
    """The sentence " Did you mean 'x'?" (or "'x' or 'y'") to append to a message; empty when nothing is close."""
    return did_you_mean(close_matches(word, choices, cutoff=cutoff))
