"""Write one part of a split log as a JSON Lines event file that `hiertcn-stream replay` reads.

Each line is an event map of the stream's input format: `user`, `item` (the external id), `ts`
(seconds) and `event_id` (`PART-N`, N counting the part's events in the order written). An
event with an impression list also gets `impressions`, without the ids outside the vocabulary,
which no bundle of this log can rank. An event that is not a target (the history of a warm
split's valid and test parts) gets `type` `context`, which `hiertcn-stream replay
--context-type context` leaves out of its metrics, as `hiertcn evaluate` does. Lines are sorted
by time, then by user and by position in the user's history, so replay's default file order
equals its time order.

Every event is written, also one that the stream rejects: a time before 1970, after the year
5138, or more than 5 minutes ahead of the clock, an id over 256 characters, or more than 1000
impressions in the vocabulary. A warning counts them by the stream's reason code. Replay then
reports the same events as rejected, so the difference from `hiertcn evaluate`, which keeps
them, shows on both sides, and the event ids stay those of the whole part.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from hiertcn.data.counts import count_noun
from hiertcn.data.log import EventLog

logger = logging.getLogger(__name__)

# The `type` of a non-target event; stream.replay.CONTEXT_TYPE is the same string.
CONTEXT_TYPE = "context"
# Limits that `stream.events.decode_event` checks, repeated because hiertcn does not import
# stream: the bounds of `ts` in seconds (MAX_TS_SECONDS and DEFAULT_MAX_FUTURE_SECONDS there),
# and the characters of an id and the entries of a list (EventConfig.max_id_length and
# max_list_length). Tests check that both sides reject the same events.
STREAM_MAX_TS_SECONDS = 1e11
STREAM_MAX_FUTURE_SECONDS = 300.0
STREAM_MAX_ID_LENGTH = 256
STREAM_MAX_LIST_LENGTH = 1000
# Meaning of each reason code of a rejected time, for the warning.
_REJECTED_TIMES = {
    "invalid_ts": "before 1970",
    "ts_in_milliseconds": "after the year 5138",
    "ts_in_future": f"over {STREAM_MAX_FUTURE_SECONDS:.0f} s after the current time",
}
# Meaning of each reason code that the warning names.
_REJECTED = {
    "invalid_user": f"user id over {STREAM_MAX_ID_LENGTH} characters",
    "invalid_item": f"item id over {STREAM_MAX_ID_LENGTH} characters",
    **_REJECTED_TIMES,
    "too_many_impressions": f"over {STREAM_MAX_LIST_LENGTH} impressions in the vocabulary",
    "invalid_impressions": f"an impression id over {STREAM_MAX_ID_LENGTH} characters",
}


def event_maps(log: EventLog, part: str) -> Iterator[dict[str, Any]]:
    """Yield the events of `log` as stream event maps, sorted by time (stable)."""
    users = np.repeat(np.arange(log.num_users), np.diff(log.user_offsets))  # [E] user index
    order = np.lexsort((np.arange(log.num_events), users, log.timestamps))
    ids = log.vocab.ids
    targets = log.targets
    for number, event in enumerate(order.tolist()):
        fields: dict[str, Any] = {
            "user": str(log.user_ids[users[event]]),
            "item": ids[int(log.items[event])],
            "ts": int(log.timestamps[event]),
            "event_id": f"{part}-{number}",
        }
        if not targets[event]:
            fields["type"] = CONTEXT_TYPE
        impressions = log.event_impressions(event)
        if impressions is not None and len(impressions):
            fields["impressions"] = [ids[int(row)] for row in impressions if row >= 0]
        yield fields


def write_event_file(log: EventLog, part: str, path: Path) -> int:
    """Write the events of `log` to `path` as JSON Lines; return the number written.

    Logs a warning when the stream rejects some events, see `stream_rejections`.
    """
    count = 0
    with path.open("w", encoding="utf-8") as out:
        for fields in event_maps(log, part):
            out.write(json.dumps(fields, ensure_ascii=False) + "\n")
            count += 1
    warn_stream_rejections(log, path)
    return count


def stream_time_rejections(timestamps: np.ndarray, now: float) -> dict[str, np.ndarray]:
    """Return the events whose time the stream rejects, as a bool mask `[E]` per reason code.

    `timestamps` are int64 seconds `[E]`, and `now` is the wall-clock time in seconds. Reasons
    without an event are left out. The checks follow `stream.events.decode_event` in its order.
    """
    negative = timestamps < 0
    milliseconds = timestamps > STREAM_MAX_TS_SECONDS
    future = ~milliseconds & (timestamps > now + STREAM_MAX_FUTURE_SECONDS)
    masks = {"invalid_ts": negative, "ts_in_milliseconds": milliseconds, "ts_in_future": future}
    return {reason: mask for reason, mask in masks.items() if mask.any()}


def stream_rejections(log: EventLog, now: float) -> dict[str, np.ndarray]:
    """Return the events of `log` that the stream rejects, as a bool mask `[E]` per reason code.

    The checks follow `stream.events.decode_event` in its order: the user id, the item id, the
    time, then the impression list as `event_maps` writes it. Each event counts under its first
    reason only, the one that replay reports. Reasons without an event are left out.
    """
    users = np.repeat(np.arange(log.num_users), np.diff(log.user_offsets))  # [E] user index
    long_items = _long_ids(log.vocab.ids)  # [N]
    checks = {
        "invalid_user": _long_ids(log.user_ids)[users],
        "invalid_item": long_items[np.asarray(log.items)],
    }
    checks.update(stream_time_rejections(np.asarray(log.timestamps), now))
    checks.update(_impression_rejections(log, long_items))
    masks = {}
    earlier = np.zeros(log.num_events, dtype=bool)
    for reason, mask in checks.items():
        first = mask & ~earlier
        earlier |= mask
        if first.any():
            masks[reason] = first
    return masks


def _long_ids(ids: Any) -> np.ndarray:
    """Return a bool `[len(ids)]`: whether each id has more characters than the stream takes."""
    return np.fromiter((len(str(value)) > STREAM_MAX_ID_LENGTH for value in ids), dtype=bool)


def _impression_rejections(log: EventLog, long_items: np.ndarray) -> dict[str, np.ndarray]:
    """Return the masks `[E]` of the impression lists, as `event_maps` writes them, that the
    stream rejects: too many entries, or an entry whose id is too long."""
    if log.impression_offsets is None or log.impressions is None:
        return {}
    offsets = np.asarray(log.impression_offsets)
    rows = np.asarray(log.impressions)
    known = rows >= 0  # [*] the entries that event_maps writes
    too_long = known & long_items[np.where(known, rows, 0)]

    def per_event(mask: np.ndarray) -> np.ndarray:  # [*] -> count per event [E]
        totals = np.concatenate([[0], np.cumsum(mask, dtype=np.int64)])
        return totals[offsets[1:]] - totals[offsets[:-1]]

    return {
        "too_many_impressions": per_event(known) > STREAM_MAX_LIST_LENGTH,
        "invalid_impressions": per_event(too_long) > 0,
    }


def warn_stream_rejections(log: EventLog, path: Path) -> None:
    """Log one warning that counts the events of `path` that the stream rejects, by reason."""
    rejected = stream_rejections(log, time.time())
    if not rejected:
        return
    total = sum(int(mask.sum()) for mask in rejected.values())
    details = ", ".join(
        f"{int(mask.sum())} {reason} ({_REJECTED[reason]}, first "
        f"{_first_rejected(log, reason, mask)})"
        for reason, mask in rejected.items()
    )
    fixes = []
    if rejected.keys() & _REJECTED_TIMES.keys():
        fixes.append("Check --time-col and --time-unit, or correct the times in the log.")
    if rejected.keys() & {"invalid_user", "invalid_item", "invalid_impressions"}:
        fixes.append(
            "Check --user-col and --item-col, or shorten the ids in the log to at most "
            f"{STREAM_MAX_ID_LENGTH} characters."
        )
    if "too_many_impressions" in rejected:
        fixes.append(
            f"Shorten the impression lists in the log to at most {STREAM_MAX_LIST_LENGTH} items."
        )
    future = (
        " Replay accepts future times with --max-future-seconds off."
        if "ts_in_future" in rejected
        else ""
    )
    logger.warning(
        "%s: wrote %s that `hiertcn-stream replay` and the worker reject: %s. Replay counts "
        "them as rejected, so its counted events and metrics can differ from those of "
        "`hiertcn evaluate`, which keeps them. %s%s",
        path,
        count_noun(total, "event"),
        details,
        " ".join(fixes),
        future,
    )


def _first_rejected(log: EventLog, reason: str, mask: np.ndarray) -> str:
    """Describe the first rejected value of `reason` for the warning: a time, an id or a list."""
    if reason in _REJECTED_TIMES:
        return str(int(np.asarray(log.timestamps)[mask].min()))
    event = int(np.flatnonzero(mask)[0])
    if reason == "invalid_user":
        user = int(np.searchsorted(log.user_offsets, event, side="right")) - 1
        return _excerpt(str(log.user_ids[user]))
    if reason == "invalid_item":
        return _excerpt(log.vocab.ids[int(log.items[event])])
    rows = log.event_impressions(event)
    known = [] if rows is None else [int(row) for row in rows if row >= 0]
    if reason == "too_many_impressions":
        return f"a list of {len(known)} items"
    longest = max((log.vocab.ids[row] for row in known), key=len)
    return _excerpt(longest)


def _excerpt(text: str) -> str:
    """Quote an id for a message, cut after 20 characters, with its length."""
    shown = text if len(text) <= 20 else f"{text[:20]}..."
    return f"{shown!r} of {len(text)} characters"
