"""Session timers of a worker: close the sessions that have been idle for the session gap.

A session closes when the user's next event comes more than `session_gap` after the last one
(a gap close, inside `Pipeline.process`), or here, when the partition's event-time watermark
has passed `last_ts + session_gap`. Step 4 of a batch runs the timers of the partitions that the
batch advanced, over the batch's new states and the stored ones (`Committer.expired`). While no
events arrive, `Worker._idle` runs them for partitions that have timers due. One pass reads at
most `timer_limit` stored sessions of a partition, so a partition whose pass finds that many is
paused until a later pass finds fewer.

With `idle_partition_seconds` (S), a partition that has received no event for more than S
seconds of this host's clock, and has no unread event waiting on the broker, gets timer passes
of its own, once per `QUIET_PASS_SECONDS`. Their
watermark is the partition's watermark at its last event plus the seconds since, less S: event
time is taken to advance with the clock, and an event to arrive at most S seconds after its
time. That watermark serves only these passes. The stored position keeps the newest event time,
so the late-event check and a restart see event time alone.
"""

from __future__ import annotations

import logging
import math
import time
from typing import TYPE_CHECKING

from confluent_kafka import Consumer, KafkaException, TopicPartition

from statestore import PartitionPosition, UserState
from stream.pipeline import IdleResult, Pipeline

if TYPE_CHECKING:
    from stream.committer import Committer
    from stream.config import WorkerConfig
    from stream.metrics import WorkerMetrics

logger = logging.getLogger(__name__)

# Seconds between two timer passes over the partitions that receive no events, with
# `idle_partition_seconds`.
QUIET_PASS_SECONDS = 1.0
# Seconds between two log lines that report that a partition's timers follow the clock.
CLOCK_LOG_SECONDS = 600.0


class SessionTimers:
    """The timer closes of `stream.worker.Worker`, a base class of it.

    They read and update the worker's attributes below.
    """

    config: WorkerConfig
    consumer: Consumer
    committer: Committer
    pipeline: Pipeline
    metrics: WorkerMetrics
    session_gap: float
    # Next offset and watermark of each assigned partition, partitions whose timers need a pass
    # while no events arrive, and partitions paused because their timers have a backlog.
    _positions: dict[int, PartitionPosition]
    _timers_due: set[int]
    _paused: set[int]
    # The clock time (time.monotonic) and watermark of each assigned partition at its last
    # event, or when a quiet pass first saw it. Then the partitions whose timers follow the
    # clock (with idle_partition_seconds), and when each was last logged as such.
    _last_events: dict[int, tuple[float, float]]
    _on_clock: set[int]
    _clock_logged: dict[int, float]

    def _note_events(self, partitions: set[int], positions: dict[int, PartitionPosition]) -> None:
        """Record that the assigned ones of `partitions` received events now, with their new
        `positions`. A dead letter is no event: it leaves event time where it was."""
        now = time.monotonic()
        for partition in partitions & self._positions.keys():
            self._last_events[partition] = (now, positions[partition].watermark)
            self._on_clock.discard(partition)

    def _close_quiet_partitions(self, now: float) -> list[IdleResult]:
        """Run a timer pass on each assigned partition that has received no event for more
        than idle_partition_seconds, with the watermark that the clock gives it at `now`."""
        delay = self.config.idle_partition_seconds
        if delay is None:
            return []
        results = []
        for partition, position in sorted(self._positions.items()):
            if not math.isfinite(position.watermark):
                continue  # no event seen on this partition yet
            since, watermark = self._last_events.setdefault(partition, (now, position.watermark))
            quiet = now - since
            if quiet <= delay or self._has_unread_events(partition, position):
                continue
            clock = watermark + quiet - delay
            if partition not in self._on_clock:
                self._on_clock.add(partition)
                self._log_on_clock(partition, quiet, delay, now)
            clocked = PartitionPosition(position.next_offset, clock)
            results.append(self._close_idle({partition: clocked}, {}, track_backlog=False))
        return results

    def _log_on_clock(self, partition: int, quiet: float, delay: float, now: float) -> None:
        """Log that a partition's timers follow the clock, unless that was logged less than
        `CLOCK_LOG_SECONDS` ago. With a small --idle-partition-seconds, a busy partition goes
        quiet between most of its batches."""
        last = self._clock_logged.get(partition)
        if last is not None and now - last < CLOCK_LOG_SECONDS:
            return
        self._clock_logged[partition] = now
        logger.info(
            "%s[%d] has received no event for %.0f s: its session timers follow the "
            "clock (--idle-partition-seconds %g) until its next event",
            self.config.input_topic,
            partition,
            quiet,
            delay,
        )

    def _has_unread_events(self, partition: int, position: PartitionPosition) -> bool:
        """Return whether the partition's high watermark, as the consumer last fetched it, lies
        beyond its next offset: events wait that the worker has not read yet, so the partition
        is behind, not quiet. An unknown watermark counts as none waiting."""
        tp = TopicPartition(self.config.input_topic, partition)
        try:
            _low, high = self.consumer.get_watermark_offsets(tp, cached=True)
        except KafkaException as error:
            logger.debug(
                "reading the high watermark of %s[%d] failed, so its timers count it as quiet: %s",
                self.config.input_topic,
                partition,
                error,
            )
            return False
        return high > position.next_offset

    def _close_idle(
        self,
        positions: dict[int, PartitionPosition],
        changed: dict[str, UserState],
        track_backlog: bool = True,
    ) -> IdleResult:
        """Close the open sessions whose last event is more than session_gap behind the
        partition's watermark. `changed` contains this batch's newer states.

        Without `track_backlog`, a pass that finds `timer_limit` sessions pauses nothing: a
        quiet pass leaves the rest to its next pass.
        """
        idle: dict[str, UserState] = {}
        for user, state in changed.items():
            position = positions.get(state.partition)
            if position is not None and self._expired(state, position):
                idle[user] = state

        stored_candidates: list[str] = []
        for partition, position in positions.items():
            if not math.isfinite(position.watermark):
                continue  # no event seen on this partition yet
            before = position.watermark - self.session_gap
            users = self.committer.expired(partition, before, self.config.timer_limit)
            if track_backlog:
                self._set_timer_backlog(partition, len(users) >= self.config.timer_limit)
            stored_candidates.extend(user for user in users if user not in changed)
        if stored_candidates:
            for user, state in self.committer.read(stored_candidates).items():
                position = positions.get(state.partition)
                if position is not None and self._expired(state, position):
                    idle[user] = state
        return self.pipeline.close_idle(idle)

    def _expired(self, state: UserState, position: PartitionPosition) -> bool:
        # Strict, like the gap rule: an idle time of exactly session_gap keeps the session open.
        return state.session_length > 0 and state.last_ts < position.watermark - self.session_gap

    def _set_timer_backlog(self, partition: int, backlog: bool) -> None:
        """Pause a partition while its timers have more idle sessions than one pass closes."""
        tp = [TopicPartition(self.config.input_topic, partition)]
        if backlog:
            self._timers_due.add(partition)
            if partition not in self._paused and partition in self._positions:
                self.consumer.pause(tp)
                self._paused.add(partition)
                logger.info(
                    "paused %s[%d]: %d or more idle sessions to close",
                    self.config.input_topic,
                    partition,
                    self.config.timer_limit,
                )
        else:
            self._timers_due.discard(partition)
            if partition in self._paused:
                self.consumer.resume(tp)
                self._paused.discard(partition)
                logger.info(
                    "resumed %s[%d]: its idle sessions are closed",
                    self.config.input_topic,
                    partition,
                )
        self.metrics.paused_partitions.set(len(self._paused))
