"""User states and partition positions: the data that the worker keeps between batches.

Shape letters: `G` GRU layers, `H` GRU hidden size, `D` item-embedding size, `n` items in the
open session.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

# Partition of users whose events come from a replayed log instead of a Kafka partition.
REPLAY_PARTITION = -1


@dataclass(eq=False)
class UserState:
    """The long-term GRU state and the open session of one user.

    Arrays are compared by value in `same_as`, because `==` on numpy arrays is element-wise.
    """

    gru_state: np.ndarray  # float32 [G, H], after the user's last closed session
    session_items: np.ndarray  # int32 [n], item rows of the open session, oldest first
    session_sum: np.ndarray  # float32 [D], sum of the embeddings of the whole open session
    session_length: int = 0  # events in the open session; 0 when no session is open
    session_start: float = 0.0  # event time of the open session's first event (s)
    last_ts: float = 0.0  # event time of the user's last event (s)
    session_count: int = 0  # sessions started; the open one is number `session_count`
    last_embedding: np.ndarray | None = None  # float32 [D], user embedding after the last event
    partition: int = REPLAY_PARTITION  # input partition of the user's events

    @classmethod
    def new(
        cls, start_state: np.ndarray, embedding_dim: int, partition: int = REPLAY_PARTITION
    ) -> UserState:
        """Create the state of a user never seen before from the learned start state `[G, H]`."""
        return cls(
            gru_state=np.array(start_state, dtype=np.float32),
            session_items=np.zeros(0, dtype=np.int32),
            session_sum=np.zeros(embedding_dim, dtype=np.float32),
            partition=partition,
        )

    def non_finite_values(self) -> list[tuple[str, tuple[int, ...], float]]:
        """Return (field, index, value) of the first NaN or infinity in each float field.

        Such a value in an array makes the user's scores NaN, and the GRU update carries it
        into every later state. The event times are checked too, because the timer index
        rejects a NaN time. The index is () for a scalar field.
        """
        found: list[tuple[str, tuple[int, ...], float]] = []
        for name in ("gru_state", "session_sum", "last_embedding"):
            values = getattr(self, name)
            if values is None:
                continue
            finite = np.isfinite(values)
            if finite.all():
                continue
            index = tuple(int(i) for i in np.argwhere(~finite)[0])
            found.append((name, index, float(values[index])))
        for name in ("session_start", "last_ts"):
            value = float(getattr(self, name))
            if not math.isfinite(value):
                found.append((name, (), value))
        return found

    def same_as(self, other: UserState) -> bool:
        """Return whether every field of `other` has the same value, arrays included."""
        scalars = ("session_length", "session_start", "last_ts", "session_count", "partition")
        if any(getattr(self, name) != getattr(other, name) for name in scalars):
            return False
        arrays = ("gru_state", "session_items", "session_sum")
        if any(not _same_array(getattr(self, n), getattr(other, n)) for n in arrays):
            return False
        if (self.last_embedding is None) != (other.last_embedding is None):
            return False
        return self.last_embedding is None or _same_array(self.last_embedding, other.last_embedding)


def _same_array(left: np.ndarray, right: np.ndarray) -> bool:
    return left.dtype == right.dtype and np.array_equal(left, right)


@dataclass(frozen=True)
class ReplayProgress:
    """Record order and recommendations file of a replay, stored with its position, so that a
    resume can check that it continues the same run."""

    order: str  # "file" or "time": the order in which the position counts records
    output: str | None = None  # absolute path of the --output file, or None without one
    output_bytes: int = 0  # length of --output after the recommendations of counted records
    # Whether timer closes wrote session-start outputs (--publish-on-session-close).
    session_close_outputs: bool = False
    # Records per batch (--batch-size). Timers run after each batch, so another size changes the
    # session-close outputs. None in positions written before this field existed.
    batch_size: int | None = None


@dataclass(frozen=True)
class PartitionPosition:
    """The next offset and the event-time watermark of one input partition after a batch."""

    next_offset: int  # the next Kafka offset to read
    watermark: float  # the largest event time seen on the partition (s)
    # Set by replay only. None for Kafka partitions and in positions that replay wrote before
    # this field existed.
    replay: ReplayProgress | None = None
