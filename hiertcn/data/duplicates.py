"""Exact duplicate events of a log that was just read, counted by sorting integer keys.

An exact duplicate has the user, item and timestamp (in the file's unit) of an earlier event.
The readers keep duplicates, because a user can click an item twice within one timestamp, and
log one line that counts them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hiertcn.data.interning import CodeColumn


@dataclass(frozen=True)
class Duplicates:
    """The events that repeat the user, item and timestamp of an earlier event."""

    count: int
    # The repeated event that comes first by user code, item code and time, where codes follow
    # the order of first appearance. `time` is in the file's unit.
    user: str
    item: str
    time: int


def find_duplicates(users: CodeColumn, items: CodeColumn, times: np.ndarray) -> Duplicates | None:
    """Count the exact duplicates among the events of `users`, `items` and `times` `[E]`.

    Returns None when no event repeats an earlier one.
    """
    if len(times) < 2:
        return None
    num_items = len(items.interner)
    # One code per (user, item) pair, in the order of the user and then the item code.
    pairs = users.codes().astype(np.int64)
    pairs *= num_items
    pairs += items.codes()
    duplicate = _first_duplicate(pairs, times)
    if duplicate is None:
        return None
    count, pair, time = duplicate
    user, item = users.distinct()[pair // num_items], items.distinct()[pair % num_items]
    return Duplicates(count, user, item, time)


def _first_duplicate(pairs: np.ndarray, times: np.ndarray) -> tuple[int, int, int] | None:
    """Count the repeated (pair, time) events of int64 `pairs` and `times` `[E]`.

    Returns the count and the smallest repeated (pair, time), or None without repeats. `pairs`
    may be overwritten.
    """
    start = int(times.min())
    span = int(times.max()) - start + 1
    if (int(pairs.max()) + 1) * span <= np.iinfo(np.int64).max:
        # Both fit in one int64 key, and sorting the keys in place is much faster, and takes
        # much less memory, than a lexsort.
        keys = pairs
        keys *= span
        keys += times - start
        keys.sort()
        repeats = keys[1:] == keys[:-1]
        if not repeats.any():
            return None
        key = int(keys[int(np.argmax(repeats)) + 1])
        return int(np.count_nonzero(repeats)), key // span, key % span + start
    order = np.lexsort((times, pairs))
    sorted_pairs, sorted_times = pairs[order], times[order]
    repeats = (np.diff(sorted_pairs) == 0) & (np.diff(sorted_times) == 0)
    if not repeats.any():
        return None
    first = int(np.argmax(repeats)) + 1
    return int(np.count_nonzero(repeats)), int(sorted_pairs[first]), int(sorted_times[first])
