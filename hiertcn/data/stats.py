"""Log statistics: users, items, events, sessions, events per session and sessions per user.

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
    return LogStats(
        users=log.num_users,
        items=len(np.unique(np.asarray(log.items))),
        events=log.num_events,
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


def format_stats_table(rows: Mapping[str, LogStats]) -> str:
    """Render one Markdown table row per named log (for example "all", "train", "test")."""
    header = (
        "| log | users | items | events | sessions | events/session (mean ± std) "
        "| sessions/user (mean ± std) |"
    )
    lines = [header, "|---|---:|---:|---:|---:|---:|---:|"]
    for name, stats in rows.items():
        lines.append(
            f"| {name} | {stats.users:,} | {stats.items:,} | {stats.events:,} "
            f"| {stats.sessions:,} "
            f"| {stats.events_per_session_mean:.2f} ± {stats.events_per_session_std:.2f} "
            f"| {stats.sessions_per_user_mean:.2f} ± {stats.sessions_per_user_std:.2f} |"
        )
    return "\n".join(lines)
