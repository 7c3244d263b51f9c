"""The one exception type users see: a one-line message naming the thing to fix."""

from __future__ import annotations


class ConvlensError(Exception):
    """A user-facing error. The CLI prints ``error: <message>`` and exits non-zero, without a traceback."""


def nearest_names(name: str, candidates: list[str], n: int = 5) -> list[str]:
    """Candidates closest to ``name``: close spellings first, then names sharing its prefix."""
    import difflib

    close = difflib.get_close_matches(name, candidates, n=n, cutoff=0.5)
    if len(close) < n:
        stem = name.rsplit(".", 1)[0]
        close += [c for c in candidates if c.startswith(stem) and c not in close][: n - len(close)]
    return close or candidates[:n]
