"""Tiny EventLogs built by hand for the training, batching and evaluation tests."""

from __future__ import annotations

import numpy as np

from hiertcn.data.log import EventLog
from hiertcn.data.vocab import ItemVocab

# Seconds between two events of a session and between two sessions of a user.
EVENT_STEP = 60
SESSION_STEP = 7200


def make_log(
    users: list[list[list[int]]],
    num_items: int | None = None,
    targets: list[bool] | None = None,
    impressions: list[list[int]] | None = None,
) -> EventLog:
    """Build an EventLog from item rows nested as users -> sessions -> events.

    `targets` and `impressions` are given per event in log order; every event is a target by
    default. Sessions of a user are `SESSION_STEP` seconds apart, events `EVENT_STEP` apart.
    """
    items, timestamps, user_offsets, user_session_offsets, session_offsets = [], [], [0], [0], [0]
    for sessions in users:
        clock = 1_600_000_000
        for session in sessions:
            for item in session:
                items.append(item)
                timestamps.append(clock)
                clock += EVENT_STEP
            clock += SESSION_STEP
            session_offsets.append(len(items))
        user_offsets.append(len(items))
        user_session_offsets.append(len(session_offsets) - 1)
    num_items = num_items if num_items is not None else max(items) + 1
    impression_offsets = impression_rows = None
    if impressions is not None:
        impression_offsets = np.cumsum([0] + [len(row) for row in impressions]).astype(np.int64)
        impression_rows = np.asarray([r for row in impressions for r in row], dtype=np.int32)
    return EventLog(
        user_ids=np.asarray([f"u{index}" for index in range(len(users))], dtype=object),
        user_offsets=np.asarray(user_offsets, dtype=np.int64),
        user_session_offsets=np.asarray(user_session_offsets, dtype=np.int64),
        session_offsets=np.asarray(session_offsets, dtype=np.int64),
        items=np.asarray(items, dtype=np.int32),
        timestamps=np.asarray(timestamps, dtype=np.int64),
        targets=np.ones(len(items), dtype=bool) if targets is None else np.asarray(targets),
        impression_offsets=impression_offsets,
        impressions=impression_rows,
        vocab=ItemVocab(tuple(f"i{row}" for row in range(num_items))),
    )


def random_log(num_users: int, num_items: int, seed: int) -> EventLog:
    """Build a log of users with 1 to 4 sessions of 1 to 6 events each, drawn from `seed`."""
    rng = np.random.default_rng(seed)
    users = [
        [
            rng.integers(0, num_items, size=rng.integers(1, 7)).tolist()
            for _ in range(rng.integers(1, 5))
        ]
        for _ in range(num_users)
    ]
    return make_log(users, num_items=num_items)
