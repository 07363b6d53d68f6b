"""Write one part of a split log as a JSON Lines event file that `hiertcn-stream replay` reads.

Each line is an event map of the stream's input format: `user`, `item` (the external id), `ts`
(seconds) and `event_id` (`PART-N`, N counting the part's events in the order written). An
event with an impression list also gets `impressions`, without the ids outside the vocabulary,
which no bundle of this log can rank. An event that is not a target (the history of a warm
split's valid and test parts) gets `type` `context`, which `hiertcn-stream replay
--context-type context` leaves out of its metrics, as `hiertcn evaluate` does. Lines are sorted
by time, then by user and by position in the user's history, so replay's default file order
equals its time order.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from hiertcn.data.log import EventLog

# The `type` of a non-target event; stream.replay.CONTEXT_TYPE is the same string.
CONTEXT_TYPE = "context"


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
    """Write the events of `log` to `path` as JSON Lines; return the number written."""
    count = 0
    with path.open("w", encoding="utf-8") as out:
        for fields in event_maps(log, part):
            out.write(json.dumps(fields, ensure_ascii=False) + "\n")
            count += 1
    return count
