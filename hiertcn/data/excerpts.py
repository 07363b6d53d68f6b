"""Bounded excerpts of log text for reader messages.

A malformed row can be very long, such as a row whose quoted field is never closed and runs to
the end of the file, so messages quote at most `MAX_EXCERPT_CHARS` characters of a value.
"""

from __future__ import annotations

MAX_EXCERPT_CHARS = 200


def excerpt(value: object, limit: int = MAX_EXCERPT_CHARS) -> str:
    """Return `repr(value)` for a message, with a string cut to its first `limit` characters.

    A cut string ends with `... (N more characters)`. A value of another type, such as a JSON
    list, is cut to `limit` characters of its repr.
    """
    if isinstance(value, str):
        if len(value) <= limit:
            return repr(value)
        return f"{value[:limit]!r}... ({len(value) - limit} more characters)"
    text = repr(value)
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text) - limit} more characters)"
