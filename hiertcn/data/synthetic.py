"""A synthetic event log with stable long-term tastes and drifting in-session interest.

The items fall into clusters of contiguous ids, with Zipf-like popularity inside each cluster.
Each user prefers a few clusters with fixed weights (the long-term taste). A session starts in a
cluster drawn from those weights. Each next event stays in the current cluster with
`stay_probability`, else moves to another cluster (the in-session drift). The move goes to a random
cluster with `explore_probability`, else to one drawn from the user's weights. Events inside a
session are at most `session_gap` seconds apart, and sessions are more than `session_gap` apart,
so sessionizing at that gap finds exactly the generated sessions.
"""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hiertcn.data.counts import count_noun
from hiertcn.data.sessions import DEFAULT_SESSION_GAP
from hiertcn.errors import DataError

logger = logging.getLogger(__name__)


# Most users of one log. Every event is held in memory until the rows are sorted by time, so
# this many users with the default shape give about 48 million events, several GiB of memory and
# a CSV of about 1 GB.
MAX_USERS = 1_000_000
# Bytes of one CSV row, an estimate from a 20,000-user log of the default shape (21 MB for
# 956,199 events).
ESTIMATED_ROW_BYTES = 22


@dataclass(frozen=True)
class SyntheticConfig:
    """Shape of the generated log; times are in seconds."""

    num_clusters: int = 20
    clusters_per_user: int = 3
    mean_sessions_per_user: float = 8.0
    mean_session_length: float = 6.0
    stay_probability: float = 0.75
    explore_probability: float = 0.05
    mean_event_gap: float = 60.0
    mean_session_gap: float = 43_200.0
    session_gap: int = DEFAULT_SESSION_GAP
    start_time: int = 1_700_000_000

    def __post_init__(self) -> None:
        if self.num_clusters < 1 or self.clusters_per_user < 1:
            raise DataError(
                f"num_clusters {self.num_clusters} and clusters_per_user "
                f"{self.clusters_per_user} must both be at least 1"
            )
        if self.mean_sessions_per_user < 1 or self.mean_session_length < 1:
            raise DataError(
                f"mean_sessions_per_user {self.mean_sessions_per_user} and mean_session_length "
                f"{self.mean_session_length} must both be at least 1"
            )
        for name in ("stay_probability", "explore_probability"):
            value = getattr(self, name)
            if not 0 <= value <= 1:
                raise DataError(f"{name} {value} must lie in [0, 1]")


class _Catalog:
    """Items split into contiguous clusters, with Zipf-like popularity inside each cluster."""

    def __init__(self, num_items: int, num_clusters: int):
        cluster_of = np.arange(num_items) * num_clusters // num_items
        self.members = [np.flatnonzero(cluster_of == c) for c in range(num_clusters)]
        self.weights = []
        for members in self.members:
            weights = 1.0 / np.arange(1, len(members) + 1)
            self.weights.append(weights / weights.sum())

    def draw(self, rng: np.random.Generator, cluster: int) -> int:
        return int(rng.choice(self.members[cluster], p=self.weights[cluster]))


def _user_events(
    rng: np.random.Generator, catalog: _Catalog, config: SyntheticConfig, start: int
) -> list[tuple[int, int]]:
    """Generate one user's (item, timestamp) events, in time order."""
    num_clusters = len(catalog.members)
    taste = rng.choice(
        num_clusters, size=min(config.clusters_per_user, num_clusters), replace=False
    )
    taste_weights = rng.dirichlet(np.ones(len(taste)))
    num_sessions = 1 + int(rng.poisson(config.mean_sessions_per_user - 1))
    events: list[tuple[int, int]] = []
    now = start + int(rng.integers(0, config.session_gap * 48))
    for _ in range(num_sessions):
        cluster = int(rng.choice(taste, p=taste_weights))
        length = int(rng.geometric(1.0 / config.mean_session_length))
        for position in range(length):
            if position:
                now += min(1 + int(rng.exponential(config.mean_event_gap)), config.session_gap)
                if rng.random() >= config.stay_probability:
                    if rng.random() < config.explore_probability:
                        cluster = int(rng.integers(num_clusters))
                    else:
                        cluster = int(rng.choice(taste, p=taste_weights))
            events.append((catalog.draw(rng, cluster), now))
        now += config.session_gap + 1 + int(rng.exponential(config.mean_session_gap))
    return events


def generate_synthetic_log(
    num_users: int,
    num_items: int,
    seed: int,
    path: str | Path,
    config: SyntheticConfig | None = None,
) -> Path:
    """Write a CSV log `user,item,timestamp` (seconds) to `path`, rows in time order; return path.

    The same arguments always give the same file.
    """
    config = config or SyntheticConfig()
    if num_users < 1 or num_items < config.num_clusters:
        raise DataError(
            f"a synthetic log needs at least 1 user and {config.num_clusters} items (one per "
            f"cluster), got {count_noun(num_users, 'user')} and {count_noun(num_items, 'item')}"
        )
    events = round(num_users * config.mean_sessions_per_user * config.mean_session_length)
    logger.info(
        "generating about %s of %s (a CSV of about %.0f MB), which are written once all are "
        "generated",
        count_noun(events, "event"),
        count_noun(num_users, "user"),
        events * ESTIMATED_ROW_BYTES / 1e6,
    )
    rng = np.random.default_rng(seed)
    catalog = _Catalog(num_items, config.num_clusters)
    rows: list[tuple[int, int, int]] = []
    for user in range(num_users):
        for item, timestamp in _user_events(rng, catalog, config, config.start_time):
            rows.append((timestamp, user, item))
    rows.sort(key=lambda row: row[0])

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(("user", "item", "timestamp"))
        writer.writerows((user, item, timestamp) for timestamp, user, item in rows)
    logger.info(
        "wrote %s of %s to %s",
        count_noun(len(rows), "synthetic event"),
        count_noun(num_users, "user"),
        path,
    )
    return path
