"""Log statistics: users, items, events, scored events, sessions, their spreads, and impressions.

Means and standard deviations are over sessions (events per session) and over users (sessions
per user); the standard deviation is the population one (ddof=0).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass

import numpy as np

from hiertcn.data.log import EventLog

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LogStats:
    """Size and shape of one event log."""

    users: int
    items: int
    events: int
    # Target events that evaluation ranks: every target except each user's first event, which
    # has no history. The other events of a part are context.
    scored_events: int
    sessions: int
    events_per_session_mean: float
    events_per_session_std: float
    sessions_per_user_mean: float
    sessions_per_user_std: float

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def compute_stats(log: EventLog) -> LogStats:
    """Count users, items seen in events, events and sessions, with the per-session/user spreads."""
    events_per_session = np.diff(np.asarray(log.session_offsets))
    sessions_per_user = np.diff(np.asarray(log.user_session_offsets))
    targets = np.asarray(log.targets, dtype=bool)
    first_events = np.asarray(log.user_offsets)[:-1]
    scored_events = int(np.count_nonzero(targets)) - int(np.count_nonzero(targets[first_events]))
    return LogStats(
        users=log.num_users,
        items=len(np.unique(np.asarray(log.items))),
        events=log.num_events,
        scored_events=scored_events,
        sessions=log.num_sessions,
        events_per_session_mean=_mean(events_per_session),
        events_per_session_std=_std(events_per_session),
        sessions_per_user_mean=_mean(sessions_per_user),
        sessions_per_user_std=_std(sessions_per_user),
    )


def _mean(values: np.ndarray) -> float:
    return float(values.mean()) if len(values) else 0.0


def _std(values: np.ndarray) -> float:
    return float(values.std()) if len(values) else 0.0


@dataclass(frozen=True)
class ImpressionStats:
    """The impression lists of one event log.

    An entry is one item id in one list, so an id shown at two events counts twice. An entry
    outside the vocabulary is an item that no event of the filtered log has.
    """

    events: int
    events_with_impressions: int
    list_length_mean: float  # over the events with a non-empty list
    list_length_max: int
    entries: int
    entries_outside_vocabulary: int
    # Events whose list has an item of the vocabulary other than the event's own item: the
    # events that `--sampler impressions` draws negatives for from their list.
    events_with_other_impressions: int

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def compute_impression_stats(log: EventLog) -> ImpressionStats | None:
    """Count the impression lists of `log` and their entries; None when it has no lists."""
    if log.impression_offsets is None or log.impressions is None:
        return None
    lengths = np.diff(np.asarray(log.impression_offsets))
    rows = np.asarray(log.impressions)
    owners = np.repeat(np.arange(log.num_events), lengths)  # the event of each entry
    other = (rows >= 0) & (rows != np.asarray(log.items)[owners])
    list_lengths = lengths[lengths > 0]
    return ImpressionStats(
        events=log.num_events,
        events_with_impressions=len(list_lengths),
        list_length_mean=_mean(list_lengths),
        list_length_max=int(list_lengths.max(initial=0)),
        entries=len(rows),
        entries_outside_vocabulary=int(np.count_nonzero(rows < 0)),
        events_with_other_impressions=len(np.unique(owners[other])),
    )


def format_impression_line(name: str, stats: ImpressionStats) -> str:
    """Describe the impression lists of the log `name` in one line."""
    if stats.events_with_impressions == 0:
        return f"impressions of {name}: none of the {stats.events:,} events carries a list"
    return (
        f"impressions of {name}: {stats.events_with_impressions:,} of {stats.events:,} events "
        f"carry a list (mean length {stats.list_length_mean:.1f}, max {stats.list_length_max}), "
        f"and {stats.entries_outside_vocabulary:,} of the {stats.entries:,} entries are items "
        "outside the vocabulary"
    )


# Printed under the table of a warm-start split, whose events column counts context too.
WARM_SPLIT_NOTE = (
    "warm split: the valid and test events include each user's earlier events as history; "
    "only their scored events, those after the train period (valid) or after the valid period "
    "(test), are ranked"
)


def format_stats_table(rows: Mapping[str, LogStats]) -> str:
    """Render one Markdown table row per named log (for example "all", "train", "test")."""
    header = (
        "| log | users | items | events | scored events | sessions "
        "| events/session (mean ± std) | sessions/user (mean ± std) |"
    )
    lines = [header, "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, stats in rows.items():
        lines.append(
            f"| {name} | {stats.users:,} | {stats.items:,} | {stats.events:,} "
            f"| {stats.scored_events:,} | {stats.sessions:,} "
            f"| {stats.events_per_session_mean:.2f} ± {stats.events_per_session_std:.2f} "
            f"| {stats.sessions_per_user_mean:.2f} ± {stats.sessions_per_user_std:.2f} |"
        )
    return "\n".join(lines)
