"""The queue-based mini-batch generator of HierTCN (You et al., WWW 2019).

There are B queues, one per batch row. At the start of an epoch the users are shuffled with the
seed and the epoch number. They are then dealt one by one to the queue with the fewest sessions
queued so far, and all sessions of a user go to that queue in time order. Batch t takes the t-th
session of every queue, so each row is one whole session. The rows are padded on the right only
to the longest session of that batch. A queue that has run out gives a row of length 0, and the
model keeps that row's carry. A row whose session starts a user other than the previous one of
its queue is flagged `new_user`, so the model resets its carry there.

A queue gives one session per batch, so its load is its number of sessions: with equal loads the
queues run out at about the same batch, and the epoch ends with few part-empty batches. Those
that remain hold few rows, which `events_per_full_batch` lets the training loop weight by size.
"""

from __future__ import annotations

import heapq
import logging
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from hiertcn.errors import ConfigError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BatchConfig:
    """Configuration of the mini-batch generator.

    `batch_size` is the number of queues B. `shuffle` deals users in a random order drawn
    from `seed` and the epoch number; without it users keep their order in the log.
    """

    batch_size: int = 32
    shuffle: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ConfigError(f"batch size {self.batch_size} is invalid: use 1 or more")


@dataclass(frozen=True)
class Batch:
    """One mini-batch: row b is one whole session of queue b, or an empty row.

    `impressions` is None when the log has no impressions. M is the largest number of
    impressions of one event in the batch.
    """

    items: np.ndarray  # int64 [B, L], item rows, 0-padded on the right
    lengths: np.ndarray  # int64 [B]
    new_user: np.ndarray  # bool [B], the queue moved to a new user: reset the carry
    targets: np.ndarray  # bool [B, L], the log's `targets`, False on padding
    events: np.ndarray  # int64 [B, L], event index in the log, -1 on padding
    users: np.ndarray  # int64 [B], user index in the log, -1 for an empty row
    sessions: np.ndarray  # int64 [B], session index in the log, -1 for an empty row
    impressions: np.ndarray | None = None  # int64 [B, L, M], -1 for padding and unknown items

    @property
    def num_events(self) -> int:
        """Number of real (non-padding) events P in the batch."""
        return int(self.lengths.sum())

    @property
    def valid(self) -> np.ndarray:
        """Mask of real events, bool [B, L]."""
        return self.events >= 0

    @property
    def input_bytes(self) -> int:
        """Bytes of the padded item tensor [B, L] that the model receives."""
        return int(self.items.nbytes)


def assign_users_to_queues(
    user_sessions: np.ndarray, order: np.ndarray, num_queues: int
) -> list[list[int]]:
    """Deal users in `order` to the queue with the fewest sessions so far (ties: lowest index).

    `user_sessions` is the number of sessions of each user [U]. Returns the users of each queue,
    in the order they will be served.
    """
    heap = [(0, queue) for queue in range(num_queues)]
    queues: list[list[int]] = [[] for _ in range(num_queues)]
    for user in order:
        load, queue = heapq.heappop(heap)
        queues[queue].append(int(user))
        heapq.heappush(heap, (load + int(user_sessions[user]), queue))
    return queues


class BatchGenerator:
    """Iterate the sessions of an EventLog as queue-based mini-batches, one epoch at a time."""

    def __init__(self, log, config: BatchConfig) -> None:
        self.log = log
        self.config = config
        self._user_events = np.diff(np.asarray(log.user_offsets))
        self._user_sessions = np.diff(np.asarray(log.user_session_offsets))

    def user_order(self, epoch: int) -> np.ndarray:
        """Return the order in which users are dealt to the queues in `epoch`."""
        num_users = len(self._user_events)
        if not self.config.shuffle:
            return np.arange(num_users)
        rng = np.random.default_rng([self.config.seed, epoch])
        return rng.permutation(num_users)

    def schedule(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """Return the session and user of every row of every batch, both int64 [T, B] (-1: none).

        T is the number of batches of the epoch: the largest number of sessions in one queue.
        """
        queues = assign_users_to_queues(
            self._user_sessions, self.user_order(epoch), self.config.batch_size
        )
        starts = np.asarray(self.log.user_session_offsets)
        sessions_per_queue = [int(self._user_sessions[users].sum()) for users in queues]
        num_batches = max(sessions_per_queue, default=0)
        sessions = np.full((num_batches, self.config.batch_size), -1, dtype=np.int64)
        users = np.full_like(sessions, -1)
        for queue, queue_users in enumerate(queues):
            if not queue_users:
                continue
            queue_sessions = [np.arange(starts[u], starts[u + 1]) for u in queue_users]
            queue_owner = [np.full(self._user_sessions[u], u) for u in queue_users]
            count = sessions_per_queue[queue]
            sessions[:count, queue] = np.concatenate(queue_sessions)
            users[:count, queue] = np.concatenate(queue_owner)
        return sessions, users

    @property
    def events_per_full_batch(self) -> float:
        """Return the mean events of a batch whose B rows all hold a session (at least 1)."""
        sessions = int(self._user_sessions.sum())
        if sessions == 0:
            return 1.0
        return max(1.0, self.config.batch_size * float(self._user_events.sum()) / sessions)

    def num_batches(self, epoch: int = 0) -> int:
        """Return the number of batches of `epoch`."""
        return len(self.schedule(epoch)[0])

    def epoch(self, epoch: int = 0) -> Iterator[Batch]:
        """Yield the batches of `epoch` in order."""
        sessions, users = self.schedule(epoch)
        previous_users = np.full(self.config.batch_size, -1, dtype=np.int64)
        for batch_sessions, batch_users in zip(sessions, users, strict=True):
            new_user = (batch_users >= 0) & (batch_users != previous_users)
            previous_users = np.where(batch_users >= 0, batch_users, previous_users)
            yield self._build_batch(batch_sessions, batch_users, new_user)

    def __iter__(self) -> Iterator[Batch]:
        return self.epoch(0)

    def _build_batch(
        self, batch_sessions: np.ndarray, batch_users: np.ndarray, new_user: np.ndarray
    ) -> Batch:
        session_offsets = np.asarray(self.log.session_offsets)
        size = len(batch_sessions)
        starts = np.where(batch_sessions >= 0, session_offsets[batch_sessions], 0)
        ends = np.where(batch_sessions >= 0, session_offsets[batch_sessions + 1], 0)
        lengths = (ends - starts).astype(np.int64)
        width = int(lengths.max(initial=0))

        events = np.full((size, width), -1, dtype=np.int64)
        for row in range(size):
            events[row, : lengths[row]] = np.arange(starts[row], ends[row])
        valid = events >= 0
        safe_events = np.where(valid, events, 0)
        items = np.where(valid, np.asarray(self.log.items)[safe_events], 0).astype(np.int64)
        targets = valid & np.asarray(self.log.targets)[safe_events]

        return Batch(
            items=items,
            lengths=lengths,
            new_user=new_user,
            targets=targets,
            events=events,
            users=batch_users.copy(),
            sessions=batch_sessions.copy(),
            impressions=self._gather_impressions(events),
        )

    def _gather_impressions(self, events: np.ndarray) -> np.ndarray | None:
        if getattr(self.log, "impressions", None) is None:
            return None
        offsets = np.asarray(self.log.impression_offsets)
        pool = np.asarray(self.log.impressions)
        valid = events >= 0
        counts = np.where(valid, offsets[events + 1] - offsets[np.where(valid, events, 0)], 0)
        width = int(counts.max(initial=0))
        impressions = np.full((*events.shape, width), -1, dtype=np.int64)
        for row, column in zip(*np.nonzero(counts), strict=True):
            event = events[row, column]
            impressions[row, column, : counts[row, column]] = pool[
                offsets[event] : offsets[event + 1]
            ]
        return impressions
