"""Offline ranking metrics: Recall@K, MRR and MRP over next-event predictions.

Rules, the same for every model:

- Pool: the whole catalog, or the event's impressions when the log has them. Impressions outside
  the vocabulary (row -1) cannot be scored and are dropped, duplicates count once, and the target
  item joins the pool when the impressions lack it.
- Ties are ranked pessimistically: the rank of the target is the number of pool items whose score
  is greater than or equal to the target's score (the target included). A constant scorer
  therefore ranks every target last (rank = pool size) and gets MRR = 1 / pool size, never 1.0.
- A user's very first event is not scored, because the model has seen nothing of the user yet.
  Every later event whose `targets` flag is set counts, including the first event of later
  sessions.
- Recall@K = share of scored events with rank <= K. MRR = mean of 1 / rank. MRP = mean of
  rank / pool size (lower is better; 1.0 means always last).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch

logger = logging.getLogger(__name__)

RECALL_CUTOFFS = (1, 5, 10, 20)


def pessimistic_ranks(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Return the pessimistic rank (1 = best) of each target in its row of scores.

    `scores` is float [P, C] and `targets` int64 [P] contains column indices into it. The rank is
    the number of columns whose score is >= the target's score, so ties count against the
    target. Returns int64 [P].
    """
    target_scores = scores.gather(1, targets.unsqueeze(1))  # [P, 1]
    return (scores >= target_scores).sum(dim=1)


def pool_rank(scores: torch.Tensor, pool: np.ndarray, target: int) -> tuple[int, int]:
    """Return (rank, pool size) of `target` among the impression rows `pool`.

    `scores` is float [N] over the catalog. Rows -1 are dropped, duplicates count once and the
    target joins the pool when it is missing.
    """
    rows = np.unique(pool[pool >= 0])
    if target not in rows:
        rows = np.append(rows, target)
    pool_scores = scores[torch.as_tensor(rows, device=scores.device)]
    rank = int((pool_scores >= scores[target]).sum())
    return rank, len(rows)


@dataclass(frozen=True)
class EventRanks:
    """The rank of every scored event, with its context, all arrays [P].

    `past_events` is the number of the user's events before this one, `session_position` the
    0-based position in its session, and `session_gap` the seconds between the previous
    session's last event and this session's first event (-1 in the user's first session).
    """

    events: np.ndarray  # int64, event index in the evaluated log
    users: np.ndarray  # int64, user index in the evaluated log
    ranks: np.ndarray  # int64, pessimistic rank, 1 = best
    pool_sizes: np.ndarray  # int64
    past_events: np.ndarray  # int64
    session_position: np.ndarray  # int64
    session_gap: np.ndarray  # int64, seconds

    @classmethod
    def concatenate(cls, parts: list[EventRanks]) -> EventRanks:
        """Join the ranks of several batches into one record."""
        if not parts:
            empty = np.zeros(0, dtype=np.int64)
            return cls(empty, empty, empty, empty, empty, empty, empty)
        return cls(
            **{
                name: np.concatenate([getattr(part, name) for part in parts])
                for name in cls.__dataclass_fields__
            }
        )

    def to_dict(self) -> dict[str, list[int]]:
        """Return every array as a JSON-ready list."""
        return {name: getattr(self, name).tolist() for name in self.__dataclass_fields__}


def summarize_ranks(
    ranks: np.ndarray, pool_sizes: np.ndarray, cutoffs: tuple[int, ...] = RECALL_CUTOFFS
) -> dict[str, float]:
    """Return Recall@K for each cutoff, MRR, MRP and the number of scored events.

    With no scored events every metric is NaN and `events` is 0.
    """
    ranks = np.asarray(ranks, dtype=np.float64)
    pool_sizes = np.asarray(pool_sizes, dtype=np.float64)
    summary: dict[str, float] = {}
    empty = len(ranks) == 0
    for cutoff in cutoffs:
        summary[f"recall@{cutoff}"] = float("nan") if empty else float(np.mean(ranks <= cutoff))
    summary["mrr"] = float("nan") if empty else float(np.mean(1.0 / ranks))
    summary["mrp"] = float("nan") if empty else float(np.mean(ranks / pool_sizes))
    summary["events"] = len(ranks)
    return summary


def event_context(log, events: np.ndarray, sessions: np.ndarray, users: np.ndarray) -> tuple:
    """Return (past_events, session_position, session_gap) of each event, int64 arrays [P].

    `events`, `sessions` and `users` are indices into `log` of the same length.
    """
    user_offsets = np.asarray(log.user_offsets)
    session_offsets = np.asarray(log.session_offsets)
    first_sessions = np.asarray(log.user_session_offsets)[users]
    timestamps = np.asarray(log.timestamps)

    past_events = events - user_offsets[users]
    session_position = events - session_offsets[sessions]
    session_start = session_offsets[sessions]
    has_previous = sessions > first_sessions
    previous_end = np.where(has_previous, session_start - 1, session_start)
    gap = np.where(has_previous, timestamps[session_start] - timestamps[previous_end], -1)
    return (
        past_events.astype(np.int64),
        session_position.astype(np.int64),
        gap.astype(np.int64),
    )
