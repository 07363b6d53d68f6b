"""Event ordering and session boundaries.

Events are ordered by user, then by time in whole seconds, then by `RawLog.positions`. That is
the position in the source file, so equal timestamps keep their logged order. For a log read in
milliseconds it is the millisecond order, and events of the same millisecond keep their logged
order. A session is a maximal run of one user's events with no idle gap above `gap` seconds: a
gap of exactly `gap` stays in the session, and calendar days play no part.
"""

from __future__ import annotations

import logging

import numpy as np

from hiertcn.errors import DataError

logger = logging.getLogger(__name__)

DEFAULT_SESSION_GAP = 1800


def sort_events(
    user_codes: np.ndarray, timestamps: np.ndarray, positions: np.ndarray
) -> np.ndarray:
    """Return the order (int64 `[E]`) by user code, then time, then `positions`, as a stable
    lexsort gives it. The user codes must be 0 or more."""
    if len(timestamps) == 0:
        return np.zeros(0, dtype=np.int64)
    start = int(timestamps.min())
    span = int(timestamps.max()) - start + 1
    if (int(user_codes.max()) + 1) * span > np.iinfo(np.int64).max:
        return np.lexsort((positions, timestamps, user_codes)).astype(np.int64, copy=False)
    # One int64 key per (user, time) sorts much faster than a lexsort of three keys.
    keys = user_codes.astype(np.int64)
    keys *= span
    keys += timestamps - start
    if np.all(positions[1:] > positions[:-1]):
        # A stable sort keeps events of equal keys in index order, which is position order.
        return np.argsort(keys, kind="stable").astype(np.int64, copy=False)
    return np.lexsort((positions, keys)).astype(np.int64, copy=False)


def session_starts(user_codes: np.ndarray, timestamps: np.ndarray, gap: int) -> np.ndarray:
    """Mark the first event of each session, bool `[E]`, for events already in `sort_events` order.

    A session starts at a user's first event and wherever the gap to the previous event of the same
    user is strictly greater than `gap` seconds.
    """
    if gap < 0:
        raise DataError(f"session gap {gap} s is negative: give 0 or more seconds")
    starts = np.ones(len(timestamps), dtype=bool)
    if len(timestamps) > 1:
        same_user = user_codes[1:] == user_codes[:-1]
        # int64 differences, so second-resolution gaps stay exact.
        within_gap = np.diff(timestamps.astype(np.int64, copy=False)) <= gap
        starts[1:] = ~(same_user & within_gap)
    return starts


def offsets_from_starts(starts: np.ndarray) -> np.ndarray:
    """Turn a bool mask of run starts `[E]` into run offsets, int64 `[R+1]` ending with `E`."""
    return np.append(np.flatnonzero(starts), len(starts)).astype(np.int64)
