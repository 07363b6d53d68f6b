"""Counts written with their noun for messages and logs: `1 user`, `3 users`."""

from __future__ import annotations


def count_noun(count: int, noun: str) -> str:
    """Return `count` and `noun`, adding `s` to the noun unless the count is 1.

    Only for nouns with a regular plural (event, user, item, round, field, session, target).
    """
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"
