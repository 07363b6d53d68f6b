"""The consumer group's rebalance callbacks of a worker: assignment, revocation and loss.

An assignment seeks each partition to the position stored in LMDB with the states it produced.
Before that it commits every pending batch, and with a changelog topic it first restores each
partition that has no stored position, or one behind the group's committed offset, from the
changelog (`stream.changelog`). A stop request ends the restores, and the partitions left
unrestored are not assigned, so that none of them starts at the earliest offset. A store without
any position, for partitions where the group has committed offsets beyond the earliest retained
one, stops the worker (`CommittedOffsetsError`) unless `--rebuild-state` is set. A worker that
is stopping already assigns nothing and queries nothing: its consumer's close revokes the
assignment at once.

A revocation finishes the batch being collected and commits everything pending, in LMDB and in
Kafka, before the partitions move. A lost partition has its pending batches dropped, because its
new owner may have stored newer states already.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import lmdb
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, Message, TopicPartition

from statestore import PartitionPosition
from statestore.errors import StateStoreError
from stream.changelog import Changelog
from stream.changelog_restore import ChangelogReader, RestoreStoppedError
from stream.errors import StreamError

if TYPE_CHECKING:
    from statestore import StateStore
    from stream.committer import Committer
    from stream.config import WorkerConfig
    from stream.events import EventConfig
    from stream.health import WorkerHeartbeat
    from stream.metrics import WorkerMetrics

logger = logging.getLogger(__name__)

# Seconds the assignment waits for the group's committed offsets and a partition's earliest
# offset, when the state store has no position for a partition.
OFFSET_QUERY_TIMEOUT_SECONDS = 10.0


class CommittedOffsetsError(StreamError):
    """The state store has no position for partitions that the consumer group has processed."""

    exit_code = 2


def position_text(topic: str, partition: int, offset: int) -> str:
    """Format a Kafka position as `topic[partition]@offset`."""
    return f"{topic}[{partition}]@{offset}"


@dataclass(frozen=True)
class RestoreOutcome:
    """The stored positions after the changelog restores of one assignment, and what they did."""

    stored: dict[int, PartitionPosition]
    # Each partition whose restore finished, with the position that the changelog contained.
    restored: dict[int, PartitionPosition | None] = field(default_factory=dict)
    # Partitions that a stop request left unrestored, in the order of the restores.
    left: list[int] = field(default_factory=list)


class RebalanceCallbacks:
    """The `on_assign`, `on_revoke` and `on_lost` callbacks of `stream.worker.Worker`.

    A base class of `Worker`, whose attributes below the callbacks read and update. A revocation
    also calls `Worker._process` and `Worker._commit_offsets`.
    """

    config: WorkerConfig
    store: StateStore
    committer: Committer
    changelog: Changelog | None
    metrics: WorkerMetrics
    heartbeat: WorkerHeartbeat
    event_config: EventConfig
    state_dir: Path
    # Messages of the batch being collected, next offset and watermark of each assigned
    # partition, partitions whose timers are due, and partitions paused for a timer backlog.
    _pending: list[Message]
    _positions: dict[int, PartitionPosition]
    _timers_due: set[int]
    _paused: set[int]
    # When each partition last received events, and those whose timers follow the clock.
    _last_events: dict[int, tuple[float, float]]
    _on_clock: set[int]
    # Set by `Worker.request_stop`. A stop request ends the changelog restores.
    _stopping: bool
    # Partitions of the group's assignment that this worker never assigned, because a stop
    # request came before their assignment or ended their changelog restore.
    _never_assigned: set[int]

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        if self._stopping:
            self._decline_on_stop(consumer, partitions)
            return
        # Positions come from LMDB, so earlier batches of these partitions must be committed.
        # A failed commit thread raises here, before anything is read from a stale position.
        self.committer.drain()
        stored = self.store.positions(self.config.input_topic)
        # A store without any position for the topic is new or the wrong one. A store with
        # positions for other partitions is that of a host in a group of several hosts.
        store_was_empty = not stored
        assigned = [tp.partition for tp in partitions]
        # With a changelog, a partition restored below may be behind the committed offset too.
        queried = assigned if self.changelog is not None else [p for p in assigned if p in stored]
        committed = self._committed_offsets(consumer, queried)

        restored: dict[int, PartitionPosition | None] = {}
        if self.changelog is not None:
            outcome = self._restore_from_changelog(self.changelog, assigned, stored, committed)
            stored, restored = outcome.stored, outcome.restored
            if outcome.left:
                # Never assigned, so none of them starts at a position that no restore wrote.
                self._leave_unrestored(outcome.left)
                partitions = [tp for tp in partitions if tp.partition not in outcome.left]
                assigned = [tp.partition for tp in partitions]

        unstored = [partition for partition in assigned if partition not in stored]
        if unstored and store_was_empty and not self.config.rebuild_state:
            # Raised before anything is assigned; confluent-kafka re-raises it from poll().
            self._check_not_committed(consumer, unstored)

        self._seek_to_stored(partitions, stored)
        self._warn_behind_committed(
            {
                p: stored[p]
                for p in assigned
                if p in stored and p in committed and p not in restored
            },
            committed,
        )
        self._warn_restored_behind(consumer, restored, stored, committed)
        # Called also with an empty list: confluent-kafka assigns every partition of the
        # callback itself unless the callback assigns.
        consumer.incremental_assign(partitions)
        self.metrics.partitions_assigned.set(len(self._positions))
        # The first assignment, empty or not, means the worker has joined the group: a group
        # with more workers than partitions gives some of them none.
        self.heartbeat.set_ready(True)

    def _seek_to_stored(
        self, partitions: list[TopicPartition], stored: dict[int, PartitionPosition]
    ) -> None:
        """Set each partition's offset to its stored position, or to the earliest offset."""
        now = time.time()
        for tp in partitions:
            position = stored.get(tp.partition)
            if position is None:
                # States live in this host's LMDB. Without a position here or in the
                # changelog, a partition that moves from another host is read from the
                # earliest offset: its users' states are rebuilt from the retained log, and
                # those outputs are published again.
                tp.offset = OFFSET_BEGINNING
                self._positions[tp.partition] = PartitionPosition(0, float("-inf"))
                logger.info(
                    "assigned %s[%d]: no stored position in %s, starting at the earliest offset",
                    tp.topic,
                    tp.partition,
                    self.state_dir,
                )
            else:
                tp.offset = position.next_offset
                self._positions[tp.partition] = position
                logger.info(
                    "assigned %s (watermark %.3f)",
                    position_text(tp.topic, tp.partition, position.next_offset),
                    position.watermark,
                )
                self._warn_future_watermark(tp.partition, position, now)
            # A partition that arrives with a stored watermark may have idle sessions to close.
            self._timers_due.add(tp.partition)
            # The lag gauge gets its series now: its reading needs the high watermark of a
            # fetch, which an empty partition may not deliver before its first message.
            self.metrics.consumer_lag.labels(str(tp.partition)).set(0)

    def _committed_offsets(self, consumer: Consumer, partitions: list[int]) -> dict[int, int]:
        """Return the group's committed offset of each of `partitions` that has one.

        A failed query returns no offsets, and logs a warning when a changelog restore depends
        on them.
        """
        if not partitions:
            return {}
        topic = self.config.input_topic
        try:
            committed = consumer.committed(
                [TopicPartition(topic, partition) for partition in partitions],
                timeout=OFFSET_QUERY_TIMEOUT_SECONDS,
            )
        except KafkaException as error:
            log = logger.debug if self.changelog is None else logger.warning
            log(
                "reading the committed offsets of group %s failed, so the stored positions of "
                "%s partitions %s are taken as current: %s",
                self.config.group_id,
                topic,
                partitions,
                error,
            )
            return {}
        return {tp.partition: tp.offset for tp in committed if tp.error is None and tp.offset >= 0}

    def _restore_from_changelog(
        self,
        changelog: Changelog,
        partitions: list[int],
        stored: dict[int, PartitionPosition],
        committed: dict[int, int],
    ) -> RestoreOutcome:
        """Restore each partition that has no stored position, or one behind the group's
        committed offset, from the changelog, until a stop request ends the restores."""
        due = {}
        for partition in partitions:
            position = stored.get(partition)
            if position is None:
                due[partition] = f"no stored position in {self.state_dir}"
            elif committed.get(partition, -1) > position.next_offset:
                due[partition] = (
                    f"the stored position {position.next_offset} is behind the committed offset "
                    f"{committed[partition]} of group {self.config.group_id}"
                )
        if not due:
            return RestoreOutcome(stored)
        restored: dict[int, PartitionPosition | None] = {}
        left: list[int] = []
        reader = changelog.reader()
        try:
            # NOTE: the restore runs inside the rebalance callback, where the consumer does not
            # poll. A restore longer than max.poll.interval.ms (300 s unless -X sets it) makes
            # the group evict this member, which then restores again at its next assignment.
            for partition, reason in due.items():
                if self._stopping:
                    left.append(partition)
                    continue
                try:
                    restored[partition] = self._restore_partition(
                        reader, partition, reason, stored.get(partition)
                    )
                except RestoreStoppedError as stopped:
                    self._log_stopped_restore(reader.topic, stopped)
                    left.append(partition)
        finally:
            reader.close()
        return RestoreOutcome(self.store.positions(self.config.input_topic), restored, left)

    def _restore_partition(
        self,
        reader: ChangelogReader,
        partition: int,
        reason: str,
        stored: PartitionPosition | None,
    ) -> PartitionPosition | None:
        """Restore `partition`; return the position that the changelog contained, or None."""
        topic = self.config.input_topic
        changelog = reader.topic
        logger.info("restoring %s[%d] from changelog %s: %s", topic, partition, changelog, reason)
        result = reader.restore(
            self.store,
            partition,
            on_progress=self.heartbeat.beat,
            stop_requested=lambda: self._stopping,
        )
        self.metrics.changelog_records_restored.inc(result.records)
        self.metrics.changelog_restore_seconds.observe(result.seconds)
        if result.position is None:
            start = "the earliest offset" if stored is None else f"offset {stored.next_offset}"
            log = logger.warning if result.records else logger.info
            log(
                "changelog %s has no position of %s[%d] (%d records of %d users read), so the "
                "partition starts at %s, as without a changelog",
                changelog,
                topic,
                partition,
                result.records,
                result.users,
                start,
            )
            return None
        logger.info(
            "restored %s from changelog %s: %d records, %d users in %.1f s",
            position_text(topic, partition, result.position.next_offset),
            changelog,
            result.records,
            result.users,
            result.seconds,
        )
        return result.position

    def _log_stopped_restore(self, changelog: str, stopped: RestoreStoppedError) -> None:
        logger.info(
            "stop requested: the restore of %s[%d] from changelog %s stopped at offset %d of %d "
            "after %d records. No position was written, so the partition restores again at its "
            "next assignment",
            self.config.input_topic,
            stopped.partition,
            changelog,
            stopped.next_offset,
            stopped.high,
            stopped.records,
        )

    def _decline_on_stop(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Assign none of `partitions`, which the group gave to a worker that is stopping.

        The consumer's close revokes them at once. The join can complete inside close(), where
        the offset queries of an assignment can time out. A failed query would stop the worker
        with exit code 2.
        """
        declined = [tp.partition for tp in partitions]
        self._never_assigned.update(declined)
        if declined:
            logger.info(
                "stop requested before the assignment of %s: not assigned, so the group moves "
                "them to another member",
                ", ".join(f"{self.config.input_topic}[{partition}]" for partition in declined),
            )
        # Called also with an empty list: confluent-kafka assigns every partition of the
        # callback itself unless the callback assigns.
        consumer.incremental_assign([])

    def _leave_unrestored(self, partitions: list[int]) -> None:
        """Log the partitions that a stop request left unrestored, which stay unassigned."""
        self._never_assigned.update(partitions)
        topic = self.config.input_topic
        changelog = self.changelog.topic if self.changelog is not None else ""
        logger.info(
            "stop requested during the changelog restores: %s left unrestored and not "
            "assigned. Their next owner restores them from changelog %s",
            ", ".join(f"{topic}[{partition}]" for partition in partitions),
            changelog,
        )

    def _warn_behind_committed(
        self, positions: dict[int, PartitionPosition], committed: dict[int, int]
    ) -> None:
        """Warn for each partition whose stored position lies behind the group's committed
        offset, so that its events in between are processed and published again."""
        topic = self.config.input_topic
        for partition, position in sorted(positions.items()):
            offset = committed[partition]
            if offset <= position.next_offset:
                continue
            logger.warning(
                "stored position %s in %s is %d events behind the committed offset %d of group "
                "%s: they are processed again and their outputs published again (an older copy "
                "of the state directory, or a crash between the two commits)",
                position_text(topic, partition, position.next_offset),
                self.state_dir,
                offset - position.next_offset,
                offset,
                self.config.group_id,
            )

    def _warn_restored_behind(
        self,
        consumer: Consumer,
        restored: dict[int, PartitionPosition | None],
        stored: dict[int, PartitionPosition],
        committed: dict[int, int],
    ) -> None:
        """Warn for each restored partition that starts behind the group's committed offset.

        After a restore, that means that a member of the group processed those events without
        writing them to this changelog, or that the changelog lost records. Processing them
        again from the restored position is correct: their outputs repeat, and states stay
        consistent.
        """
        topic = self.config.input_topic
        changelog = self.changelog.topic if self.changelog is not None else ""
        for partition, from_changelog in sorted(restored.items()):
            offset = committed.get(partition)
            if offset is None:
                continue
            position = stored.get(partition)
            if from_changelog is not None:
                start, source = from_changelog.next_offset, "the position restored from changelog"
            elif position is not None:
                start, source = position.next_offset, "the stored position, with no position in"
            else:
                start = self._earliest_offset_or_none(consumer, partition)
                source = "the earliest offset, with no position stored here or in"
                if start is None:
                    continue
            if offset <= start:
                continue
            logger.warning(
                "%s[%d] starts at offset %d, %s %s, but group %s has committed offset %d: its "
                "%d events in between are processed again and their outputs published again. "
                "Either a member of the group processed them without writing to this changelog "
                "(it ran without --changelog-topic, or with another topic), or the changelog "
                "lost records (the topic was deleted or recreated). Run every member of the "
                "group with --changelog-topic %s. After a lost changelog, stop every host and "
                "seed the topic from each host's state directory with `hiertcn-stream changelog "
                'seed` (docs/runbook.md, "Recover a lost changelog topic")',
                topic,
                partition,
                start,
                source,
                changelog,
                self.config.group_id,
                offset,
                offset - start,
                changelog,
            )

    def _earliest_offset_or_none(self, consumer: Consumer, partition: int) -> int | None:
        """Return the earliest retained offset of `partition`, or None when the query fails."""
        try:
            return self._earliest_offset(consumer, partition)
        except KafkaException as error:
            # Only a warning depends on it.
            logger.debug(
                "reading the earliest offset of %s[%d] failed: %s",
                self.config.input_topic,
                partition,
                error,
            )
            return None

    def _check_not_committed(self, consumer: Consumer, partitions: list[int]) -> None:
        """Raise CommittedOffsetsError when the group has committed offsets for `partitions`,
        which have no position in the state store, beyond their earliest retained offset.

        Reading such a partition from its earliest offset would process again the events that
        the group has processed, and publish their outputs a second time.
        """
        topic = self.config.input_topic
        group = self.config.group_id
        try:
            committed = consumer.committed(
                [TopicPartition(topic, partition) for partition in partitions],
                timeout=OFFSET_QUERY_TIMEOUT_SECONDS,
            )
            processed = []
            for tp in committed:
                if tp.error is not None or tp.offset < 0:
                    continue  # the group has no committed offset for this partition
                low = self._earliest_offset(consumer, tp.partition)
                if tp.offset > low:
                    processed.append(position_text(topic, tp.partition, tp.offset))
        except KafkaException as error:
            raise CommittedOffsetsError(
                f"reading the committed offsets of group {group} for {topic} partitions "
                f"{partitions}, which state dir {self.state_dir} has no position for, failed: "
                f"{error}; start again, or pass --rebuild-state to read them from the earliest "
                "offset without this check"
            ) from error
        if processed:
            raise CommittedOffsetsError(
                f"state dir {self.state_dir} has no position for {', '.join(processed)}, "
                f"where consumer group {group} has committed offsets: reading from the "
                "earliest offset would process those events again and publish their outputs "
                f"a second time. {self._changelog_fix()}Pass the --state-dir that processed "
                "them, or restore its export with `hiertcn-stream state --state-dir DIR import "
                "FILE`. To rebuild the states and publish again on purpose, pass "
                "--rebuild-state (or use a new --group-id)"
            )

    def _changelog_fix(self) -> str:
        """Return the sentences of the `CommittedOffsetsError` message on the changelog."""
        if self.changelog is None:
            return (
                "When the group's other hosts run with --changelog-topic, pass the "
                "--changelog-topic that they use, and this host restores the partitions from "
                "it. "
            )
        return (
            f"Changelog topic {self.changelog.topic} contains no position of them either: "
            "seed it from the state directory that processed them, with `hiertcn-stream "
            "changelog seed`. "
        )

    def _earliest_offset(self, consumer: Consumer, partition: int) -> int:
        """Return the earliest offset that the broker still retains of `partition`."""
        tp = TopicPartition(self.config.input_topic, partition)
        offsets = consumer.get_watermark_offsets(
            tp, timeout=OFFSET_QUERY_TIMEOUT_SECONDS, cached=False
        )
        # When the broker returns no offsets, 0 makes any committed offset count as processed.
        return 0 if offsets is None else int(offsets[0])

    def _warn_future_watermark(
        self, partition: int, position: PartitionPosition, now: float
    ) -> None:
        """Warn when a stored watermark is ahead of the wall clock by more than the tolerance
        of `ts_in_future`, which an event accepted before that check existed can cause."""
        tolerance = self.event_config.max_future_seconds
        if tolerance is None or position.watermark - now <= tolerance:
            return
        logger.warning(
            "stored watermark of %s[%d] is %.0f s ahead of the current time: the timers close "
            "every open session of this partition after each batch until real time reaches "
            "it. To reset it, rebuild the states in a new --state-dir with --rebuild-state",
            self.config.input_topic,
            partition,
            position.watermark - now,
        )

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        revoked = {tp.partition for tp in partitions}
        never_assigned = revoked & self._never_assigned
        # Finish the batch in flight first, so its outputs and offsets go out with its states.
        if self._pending:
            messages, self._pending = self._pending, []
            logger.info("finishing %d collected messages before the revocation", len(messages))
            self._process(messages)
        # Then commit everything pending, and the offsets to Kafka with a wait, so that the group
        # has the final offsets before the partitions move.
        if not self.committer.failed:
            self.committer.drain()
            self._commit_offsets(wait=True)
        self._unassign_assigned(consumer, partitions, never_assigned)
        self._forget(revoked, "revoked", never_assigned)

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        lost = {tp.partition for tp in partitions}
        never_assigned = lost & self._never_assigned
        # Another member may own these partitions already, so nothing of them is committed.
        dropped = [m for m in self._pending if m.partition() in lost]
        self._pending = [m for m in self._pending if m.partition() not in lost]
        logger.warning(
            "lost partitions %s without a clean revocation; dropped %d collected messages, "
            "which the new owner reprocesses",
            sorted(lost),
            len(dropped),
        )
        # Their processed batches that wait for a commit must not reach LMDB either.
        self.committer.forget(lost)
        self._unassign_assigned(consumer, partitions, never_assigned)
        self._forget(lost, "lost", never_assigned)

    def _unassign_assigned(
        self, consumer: Consumer, partitions: list[TopicPartition], never_assigned: set[int]
    ) -> None:
        """Unassign the revoked or lost partitions that this worker assigned, when the others
        were never assigned.

        Unless the callback unassigns, confluent-kafka unassigns every partition of the callback
        itself, and librdkafka rejects a partition outside the assignment.
        """
        if not never_assigned:
            return
        consumer.incremental_unassign(
            [tp for tp in partitions if tp.partition not in never_assigned]
        )

    def _forget(
        self, partitions: set[int], reason: str, never_assigned: AbstractSet[int] = frozenset()
    ) -> None:
        stored = self._stored_offsets()
        for partition in sorted(partitions):
            position = self._positions.pop(partition, None)
            processed = position.next_offset if position else None
            if partition in never_assigned:
                self._log_never_assigned_forgotten(reason, partition)
            else:
                self._log_forgotten(reason, partition, stored.get(partition), processed)
            # livemax across the pool: the new owner reports the real lag.
            self.metrics.consumer_lag.labels(str(partition)).set(0)
        self._timers_due -= partitions
        self._paused -= partitions
        self._on_clock -= partitions
        for partition in partitions:
            self._last_events.pop(partition, None)
        self._never_assigned -= partitions
        self.metrics.partitions_assigned.set(len(self._positions))
        self.metrics.paused_partitions.set(len(self._paused))

    def _stored_offsets(self) -> dict[int, int]:
        """Return the next offset of each partition that the state store has, for log lines."""
        try:
            stored = self.store.positions(self.config.input_topic)
        except (StateStoreError, lmdb.Error) as error:
            # A log line must not stop the rebalance.
            logger.warning("reading the stored positions for the log failed: %s", error)
            return {}
        return {partition: position.next_offset for partition, position in stored.items()}

    def _log_forgotten(
        self, reason: str, partition: int, stored: int | None, processed: int | None
    ) -> None:
        """Log a revoked or lost partition at its stored position, where its next owner starts."""
        topic = self.config.input_topic
        if stored is None and self.changelog is not None:
            logger.info(
                "%s %s[%d]: no stored position in %s, so its next owner restores it from "
                "changelog %s",
                reason,
                topic,
                partition,
                self.state_dir,
                self.changelog.topic,
            )
        elif stored is None:
            logger.info(
                "%s %s[%d]: no stored position, so its next owner starts at the earliest offset",
                reason,
                topic,
                partition,
            )
        else:
            logger.info("%s %s (stored position)", reason, position_text(topic, partition, stored))
        # A partition without a stored position starts at 0 here, so 0 means nothing processed.
        if processed is not None and processed > (0 if stored is None else stored):
            # `processed` is the next offset to process, so the last one processed is one less.
            span = (
                f"offsets before {processed}"
                if stored is None
                else f"offsets {stored} to {processed - 1}"
            )
            logger.info(
                "%s[%d]: %s were processed but their commit did not reach the state store, so "
                "the next owner processes them again",
                topic,
                partition,
                span,
            )

    def _log_never_assigned_forgotten(self, reason: str, partition: int) -> None:
        topic = self.config.input_topic
        if self.changelog is None:
            logger.info("%s %s[%d]: never assigned here", reason, topic, partition)
            return
        logger.info(
            "%s %s[%d]: left unrestored here, so its next owner restores it from changelog %s",
            reason,
            topic,
            partition,
            self.changelog.topic,
        )
