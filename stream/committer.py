"""Commit the worker's batches from a background thread, several batches per LMDB transaction.

The worker hands each processed batch over with `submit`: its new user states, the next offset
and watermark of each partition, and its produced output records. The committer thread takes
every batch handed over so far, in order, and runs these steps:

1. wait until the broker has acknowledged every output record of those batches
2. write their states and positions in one LMDB write transaction, so the group pays one
   fsync. A later batch's state of a user replaces an earlier one
3. release their states from the pending view and report the positions for the Kafka commit

Until step 3 the states are pending: `read` and `expired` return them in place of the stored
ones, so the worker builds the next batch on them while the fsync and the delivery wait run
here. A crash loses the pending batches' commits but none of their events: a restart resumes
from the stored offset and publishes their outputs again. At most `max_pending` batches are
pending, plus the batch the worker is processing, and that bounds the repeated outputs.
`forget` drops the pending states and positions of partitions that the process has lost, because
their new owner may have committed newer ones to the same store.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from statestore import PartitionPosition, UserState
from statestore.maintenance import plural
from stream.delivery import Deliverer, OutputRecord
from stream.errors import StreamError

if TYPE_CHECKING:
    from statestore import StateStore

logger = logging.getLogger(__name__)


class CommitError(StreamError):
    """The committer thread failed; nothing after its last commit was written."""


@dataclass(frozen=True)
class CommitterConfig:
    """Settings of the committer: the topic of the stored positions and the pending limit."""

    topic: str  # input topic whose partition positions are stored
    # Batches handed over and not yet committed before `submit` waits. 0 makes every
    # `submit` wait for its own commit, as a worker without the thread would.
    max_pending: int = 4


@dataclass
class _Batch:
    seq: int
    states: dict[str, UserState]
    positions: dict[int, PartitionPosition]
    records: list[OutputRecord] = field(default_factory=list)


class Committer:
    """The pending view of user states and the thread that commits them.

    `store` is a `statestore.StateStore` (or an object with its `read`, `expired` and `commit`)
    that is safe to use from two threads. `observe_commit` gets the seconds of each LMDB commit.
    """

    def __init__(
        self,
        store: StateStore,
        deliverer: Deliverer,
        config: CommitterConfig,
        observe_commit: Callable[[float], None] = lambda seconds: None,
    ) -> None:
        self.store = store
        self.deliverer = deliverer
        self.config = config
        self.observe_commit = observe_commit
        self._cond = threading.Condition()
        self._queue: list[_Batch] = []  # handed over, not committed, oldest first
        self._pending: dict[str, tuple[int, UserState]] = {}  # user -> (seq, newest state)
        self._committed: dict[int, PartitionPosition] = {}  # for the next Kafka commit
        self._seq = 0
        self._error: BaseException | None = None
        self._closing = False
        self._writing = False  # the thread is inside its LMDB write transaction
        self._thread = threading.Thread(target=self._loop, name="hiertcn-committer", daemon=True)
        self._thread.start()

    # -- the worker's side -------------------------------------------------------------------

    def submit(
        self,
        states: dict[str, UserState],
        positions: dict[int, PartitionPosition],
        records: Iterable[OutputRecord] = (),
    ) -> None:
        """Hand over one batch; wait while `max_pending` batches are pending already.

        The states must not be changed afterwards: the thread encodes them later.
        """
        records = list(records)
        if not states and not positions and not records:
            return
        with self._cond:
            if self._closing:
                raise CommitError("submit after close: the commit thread no longer commits")
            limit = max(self.config.max_pending, 1)
            while len(self._queue) >= limit and self._error is None:
                self._cond.wait()
            self._raise_failure()
            self._seq += 1
            self._queue.append(_Batch(self._seq, states, positions, records))
            for user, state in states.items():
                self._pending[user] = (self._seq, state)
            self._cond.notify_all()
        if self.config.max_pending == 0:
            self.drain()

    def read(self, users: Iterable[str]) -> dict[str, UserState]:
        """Return the newest state of each known user: pending if there is one, else stored."""
        found: dict[str, UserState] = {}
        missing: list[str] = []
        with self._cond:
            for user in users:
                pending = self._pending.get(user)
                if pending is None:
                    missing.append(user)
                else:
                    found[user] = pending[1]
        # A user missing here has no pending state, and only this worker submits, so the store
        # contains its newest state even if a commit ends in between.
        if missing:
            found.update(self.store.read(missing))
        return found

    def expired(self, partition: int, before_ts: float, limit: int) -> list[str]:
        """Return up to `limit` users of `partition` whose open session's last event is before
        `before_ts`, pending states first, then stored ones in time order."""
        with self._cond:
            pending_users = set(self._pending)
            idle = sorted(
                (state.last_ts, user)
                for user, (_seq, state) in self._pending.items()
                if state.partition == partition
                and state.session_length > 0
                and state.last_ts < before_ts
            )
        users = [user for _ts, user in idle[:limit]]
        # The stored timer entries of pending users are out of date, so they are skipped.
        stored = self.store.expired(partition, before_ts, limit + len(pending_users))
        users.extend(user for user in stored if user not in pending_users)
        return users[:limit]

    def take_committed(self) -> dict[int, PartitionPosition]:
        """Return the positions committed to LMDB since the last call, for the Kafka commit."""
        with self._cond:
            committed, self._committed = self._committed, {}
        return committed

    def drain(self) -> None:
        """Wait until every batch handed over is committed; raise CommitError on failure."""
        with self._cond:
            while self._queue and self._error is None:
                self._cond.wait()
            self._raise_failure()

    def forget(self, partitions: Iterable[int]) -> None:
        """Drop the pending states and positions of `partitions`, which this process has lost.

        Another process may own them already and commit to the same store, so a late commit
        from here would move their stored positions and states back. Their outputs stay
        produced, and the new owner reprocesses their events from the stored position. Returns
        once no LMDB write that could still contain them is running.
        """
        lost = set(partitions)
        with self._cond:
            while self._writing:
                self._cond.wait()
            for batch in self._queue:
                batch.states = {u: s for u, s in batch.states.items() if s.partition not in lost}
                batch.positions = {p: pos for p, pos in batch.positions.items() if p not in lost}
            self._pending = {
                user: entry
                for user, entry in self._pending.items()
                if entry[1].partition not in lost
            }
            for partition in lost:
                self._committed.pop(partition, None)

    @property
    def failed(self) -> bool:
        """Whether the thread has stopped on an error."""
        return self._error is not None

    def check(self) -> None:
        """Raise CommitError if the thread has stopped on an error."""
        with self._cond:
            self._raise_failure()

    def pending_batches(self) -> int:
        """Return the number of batches handed over and not yet committed."""
        with self._cond:
            return len(self._queue)

    def close(self, timeout: float | None = None) -> None:
        """Commit what is pending, then stop the thread."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._thread.join(timeout)
        self.check()

    def _raise_failure(self) -> None:
        if self._error is not None:
            raise CommitError(
                f"the commit thread stopped: {self._error}; nothing after the last commit was "
                "stored, so a restart reprocesses those events"
            ) from self._error

    # -- the thread --------------------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closing:
                    self._cond.wait()
                if not self._queue:
                    return  # closing, and everything is committed
                group = list(self._queue)
            try:
                self._commit_group(group)
            except BaseException as error:  # the worker thread raises it as CommitError
                logger.error(
                    "commit of %s failed: %s", plural(len(group), "batch", "batches"), error
                )
                with self._cond:
                    self._error = error
                    self._writing = False
                    self._cond.notify_all()
                return

    def _commit_group(self, group: list[_Batch]) -> None:
        # (1) The broker must have every output before the positions that cover them are stored.
        # One wait for the whole group retries the failed records of every batch together and
        # keeps the group within `attempts` waits, as long as the wait for a single batch.
        self.deliverer.wait([record for batch in group for record in batch.records])

        # (2) One write transaction for the group; later batches override earlier ones. The
        # batches are merged under the lock, so that `forget` either runs before and has
        # removed its partitions, or waits until this write and step 3 have ended.
        states: dict[str, UserState] = {}
        positions: dict[int, PartitionPosition] = {}
        with self._cond:
            for batch in group:
                states.update(batch.states)
                positions.update(batch.positions)
            self._writing = True
        topic = self.config.topic
        started = time.perf_counter()
        self.store.commit(states, {(topic, p): pos for p, pos in positions.items()})
        self.observe_commit(time.perf_counter() - started)

        # (3) Release the committed states, unless a newer batch has handed over a newer one.
        last = group[-1].seq
        with self._cond:
            self._writing = False
            del self._queue[: len(group)]
            for user in states:
                pending = self._pending.get(user)
                if pending is not None and pending[0] <= last:
                    del self._pending[user]
            self._committed.update(positions)
            self._cond.notify_all()
        logger.debug(
            "committed %s, %s",
            plural(len(group), "batch", "batches"),
            plural(len(states), "state"),
        )
