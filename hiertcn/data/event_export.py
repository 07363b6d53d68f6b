"""Write one part of a split log as a JSON Lines event file that `hiertcn-stream replay` reads.

Each line is an event map of the stream's input format: `user`, `item` (the external id), `ts`
(seconds) and `event_id` (`PART-N`, N counting the part's events in the order written). An
event with an impression list also gets `impressions`, without the ids outside the vocabulary,
which no bundle of this log can rank. An event that is not a target (the history of a warm
split's valid and test parts) gets `type` `context`, which `hiertcn-stream replay
--context-type context` leaves out of its metrics, as `hiertcn evaluate` does. Lines are sorted
by time, then by user and by position in the user's history, so replay's default file order
equals its time order.

Every event is written, also one whose time the stream rejects (before 1970, after the year
5138, or more than 5 minutes ahead of the clock), and a warning counts them by the stream's
reason code. Replay then reports the same events as rejected, so the difference from `hiertcn
evaluate`, which keeps them, shows on both sides, and the event ids stay those of the whole part.
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
# Bounds of `ts` in seconds that `stream.events.decode_event` checks (MAX_TS_SECONDS and
# DEFAULT_MAX_FUTURE_SECONDS there), repeated because hiertcn does not import stream. A test
# checks that both sides reject the same events.
STREAM_MAX_TS_SECONDS = 1e11
STREAM_MAX_FUTURE_SECONDS = 300.0
# Meaning of each reason code of a rejected time, for the warning.
_REJECTED_TIMES = {
    "invalid_ts": "before 1970",
    "ts_in_milliseconds": "after the year 5138",
    "ts_in_future": f"over {STREAM_MAX_FUTURE_SECONDS:.0f} s after the current time",
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

    Logs a warning when the stream rejects the time of some events, see `stream_time_rejections`.
    """
    count = 0
    with path.open("w", encoding="utf-8") as out:
        for fields in event_maps(log, part):
            out.write(json.dumps(fields, ensure_ascii=False) + "\n")
            count += 1
    warn_stream_time_rejections(log.timestamps, path)
    return count


def stream_time_rejections(timestamps: np.ndarray, now: float) -> dict[str, np.ndarray]:
    """Return the events whose time the stream rejects, as a bool mask `[E]` per reason code.

    `timestamps` are int64 seconds `[E]`, and `now` is the wall-clock time in seconds. Reasons
    without an event are left out. The checks follow `stream.events.decode_event` in its order,
    so an event gets the reason that replay reports for it.

    NOTE: only the time is checked. The stream also rejects ids longer than 256 characters and
    impression lists of more than 1000 items, which `hiertcn` reads.
    """
    negative = timestamps < 0
    milliseconds = timestamps > STREAM_MAX_TS_SECONDS
    future = ~milliseconds & (timestamps > now + STREAM_MAX_FUTURE_SECONDS)
    masks = {"invalid_ts": negative, "ts_in_milliseconds": milliseconds, "ts_in_future": future}
    return {reason: mask for reason, mask in masks.items() if mask.any()}


def warn_stream_time_rejections(timestamps: np.ndarray, path: Path) -> None:
    """Log one warning that counts the events of `path` whose time the stream rejects."""
    rejected = stream_time_rejections(timestamps, time.time())
    if not rejected:
        return
    total = sum(int(mask.sum()) for mask in rejected.values())
    details = ", ".join(
        f"{int(mask.sum())} {reason} ({_REJECTED_TIMES[reason]}, first "
        f"{int(timestamps[mask].min())})"
        for reason, mask in rejected.items()
    )
    future = (
        " Replay accepts future times with --max-future-seconds off."
        if "ts_in_future" in rejected
        else ""
    )
    logger.warning(
        "%s: wrote %s whose time `hiertcn-stream replay` and the worker reject: %s. Replay "
        "counts them as rejected, so its counted events and metrics can differ from those of "
        "`hiertcn evaluate`, which keeps them. Check --time-col and --time-unit, or correct "
        "the times in the log.%s",
        path,
        count_noun(total, "event"),
        details,
        future,
    )
