"""One Kafka consumer process of the pool: consume, update user states, publish recommendations.

Each batch runs these steps, and their order is the correctness argument:

1. consume up to `max_batch_size` messages, or what arrives within `max_batch_delay_ms` of the
   first one. Decode and validate each, and route bad ones to the dead-letter topic
2. read the states of the batch's users: pending ones from the committer, the rest in one LMDB
   read transaction
3. close sessions: the pipeline closes a session when the user's next event comes after the
   gap, and the timers close idle sessions once the partition's event-time watermark has passed
   `last_ts + session_gap`
4. score every event in one batched model call (`Pipeline.process`)
5. produce the outputs and dead letters. With `publish_on_session_close`, every timer close
   also gives a session-start output, after the batch's event outputs. With a changelog topic,
   the batch's new states and partition positions follow them (`stream.changelog`)
6. hand the new states and each partition's next offset and watermark to the committer thread
   (`stream.committer`), which waits until the broker has acknowledged the batch's messages,
   writes states and offsets in one LMDB transaction, and reports the offsets, which this
   thread then commits to Kafka so that lag shows in the usual tools

Outputs are delivered before the LMDB commit that covers them, so a process killed in between
reprocesses those batches from the stored offset after a restart: outputs may repeat (at most
the pending batches and the one in progress), but none is lost. Every assignment seeks to the
offset stored in LMDB with the states it produced, so the Kafka commit makes lag visible. With a
changelog topic it also shows an assignment that another host has processed a partition since,
which the worker then restores from the changelog first (`stream.changelog`).

Timer passes that run while no events arrive (`Worker._idle`) hand their closed states and
session-close outputs to the same producer and committer, so those outputs are delivered
before the states that produced them are committed, too.

Before a batch or a timer pass runs the model, the worker compares the stat stamps of its
bundle's files with those taken at load, at most once a second (`BundleWatch`), and stops with
exit code 2 when a file has changed, because its ONNX sessions and its memory-mapped item table
could then come from different bundles.

Back-pressure: at most `max_pending_batches` batches wait for their commit, so the producer
queue contains a bounded number of batches. A partition whose timers find more idle sessions than
one pass closes is paused until they are closed, and resumed then.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

import lmdb
import msgpack
from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)

from statestore import PartitionPosition, UserState
from statestore.errors import StateStoreError
from stream.bundle_watch import BundleWatch, load_watched_bundle
from stream.changelog import Changelog, ChangelogReader
from stream.committer import Committer, CommitterConfig
from stream.config import DEFAULT_MAX_POLL_INTERVAL_MS, WorkerConfig
from stream.delivery import Deliverer, DeliveryConfig, OutputRecord
from stream.errors import StreamError
from stream.events import (
    DeadLetter,
    Event,
    EventConfig,
    Position,
    decode_event,
)
from stream.health import WorkerHeartbeat
from stream.interval import Interval
from stream.kafka_settings import client_settings
from stream.logs import librdkafka_logger
from stream.metrics import WorkerMetrics
from stream.pipeline import BatchResult, IdleResult, Pipeline, Recommendation

if TYPE_CHECKING:
    from prometheus_client import Counter as PrometheusCounter

    from export.bundle import ModelBundle
    from statestore import StateStore

logger = logging.getLogger(__name__)

# Seconds one consume call waits while no batch is open, so that the stop flag, the timers and
# the lag gauges are served at least this often.
IDLE_POLL_SECONDS = 0.2


WORKER_HEADER = "hiertcn.worker"

# librdkafka's default producer message.max.bytes; -X message.max.bytes=N overrides it.
DEFAULT_MESSAGE_MAX_BYTES = 1_000_000
# Bytes of each produced message kept free for the headers and the protocol's record overhead.
MESSAGE_OVERHEAD_BYTES = 16_384
# Bytes of a rejected message's own headers that its dead letter keeps. A larger set is left out,
# and the header `hiertcn.headers_dropped` gives its size.
MAX_ORIGINAL_HEADER_BYTES = 8_192


# Seconds the assignment waits for the group's committed offsets and a partition's earliest
# offset, when the state store has no position for a partition.
OFFSET_QUERY_TIMEOUT_SECONDS = 10.0

# Dead letters logged one by one per rejection reason, and the seconds between the summary lines
# that count the rest. The metric counts every dead letter.
DEAD_LETTERS_LOGGED_PER_REASON = 5
DEAD_LETTER_SUMMARY_SECONDS = 10.0
# Seconds that a worker whose commit thread failed waits for its consumer to close.
FAILED_CLOSE_SECONDS = 5.0
# Seconds without any assigned partition after which the worker logs that it waits.
UNASSIGNED_NOTICE_SECONDS = 10.0
# Seconds between two readings of the state store's user count and map sizes for the gauges.
STORE_GAUGE_SECONDS = 5.0
# Seconds between two metadata requests for the input topic's partition count when the
# consumer's own metadata refresh is off, and the longest wait of the main loop for one.
PARTITION_COUNT_SECONDS = 60.0
PARTITION_COUNT_TIMEOUT_SECONDS = 2.0
# librdkafka's topic.metadata.refresh.interval.ms of the worker's consumer, unless -X sets it.
# The consumer finds partitions added to the input topic only at this refresh, so librdkafka's
# default of 300000 ms (CONFIGURATION.md of librdkafka 2.16) leaves them unread for up to 5
# minutes. Each refresh is one small Metadata request per consumer for the subscribed topic
# (topic.metadata.refresh.sparse, on by default), and metadata.max.age.ms follows at 3 times it.
DEFAULT_METADATA_REFRESH_MS = 60_000


class CommittedOffsetsError(StreamError):
    """The state store has no position for partitions that the consumer group has processed."""

    exit_code = 2


class ConsumerSetupError(StreamError):
    """The consumer got an error from the broker that a retry cannot fix: a setting or an ACL."""

    exit_code = 2


# librdkafka's error codes for a broker that cannot be reached.
OUTAGE_ERROR_CODES = (KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN)

# Consumer errors that the group coordinator repeats on every retry, with the fix for each.
FATAL_CONSUMER_ERRORS = {
    KafkaError.INVALID_SESSION_TIMEOUT: "set -X session.timeout.ms within the broker's "
    "group.min.session.timeout.ms and group.max.session.timeout.ms",
    KafkaError.GROUP_AUTHORIZATION_FAILED: "grant the client's principal Read on the consumer "
    "group (--group-id), or use a group it may read",
    KafkaError.TOPIC_AUTHORIZATION_FAILED: "grant the client's principal Read on --input-topic "
    "and Write on the output and dead-letter topics",
    KafkaError.INCONSISTENT_GROUP_PROTOCOL: "give every member of --group-id the same assignment "
    "strategy, or use another --group-id",
    KafkaError.INVALID_GROUP_ID: "pass a valid --group-id",
    KafkaError.UNSUPPORTED_ASSIGNOR: "use a --group-id whose members all use cooperative-sticky",
}


def close_consumer(consumer: Consumer, static_member: bool) -> None:
    """Close `consumer`, and make a dynamic member without partitions leave its group first.

    librdkafka 2.16 with cooperative-sticky sends no LeaveGroup when a member without partitions
    closes, so the group keeps it until session.timeout.ms and the next start waits that long.
    unsubscribe() sends the LeaveGroup. A static member keeps its membership on purpose.
    """
    if not static_member and not consumer.assignment():
        consumer.unsubscribe()
    consumer.close()


def event_config(config: WorkerConfig) -> EventConfig:
    """Return the event validation settings of `config`."""
    return EventConfig(ts_unit=config.ts_unit, max_future_seconds=config.max_future_seconds)


def rebuild_state_allowed(config: WorkerConfig) -> bool:
    """Return whether an empty store may read partitions from their earliest offset where the
    consumer group has committed offsets (`--rebuild-state`)."""
    return config.rebuild_state


def consumer_settings(config: WorkerConfig, index: int = 0) -> dict[str, Any]:
    """Return the librdkafka consumer settings of worker `index`, each with the reason it is set."""
    settings: dict[str, Any] = {
        "bootstrap.servers": config.brokers,
        "group.id": config.group_id,
        # Offsets are committed only after the batch's outputs are delivered and its states
        # are in LMDB, never on a timer.
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        # A partition without a stored position starts at the oldest event, because the user
        # states must be built from every event.
        "auto.offset.reset": "earliest",
        # Only events of committed producer transactions are served, never aborted ones.
        "isolation.level": "read_committed",
        # A batch takes milliseconds to seconds, and WorkerConfig keeps its delivery retries
        # within half of this, so the group does not evict a busy worker.
        "max.poll.interval.ms": DEFAULT_MAX_POLL_INTERVAL_MS,
        # cooperative-sticky moves only the partitions that change owner, so a process that
        # joins or leaves the pool does not stop the others. on_revoke finishes and commits
        # each revoked partition before it moves.
        "partition.assignment.strategy": "cooperative-sticky",
        # Partition EOF events are not needed: an empty consume is the idle signal.
        "enable.partition.eof": False,
        # Partitions added to the input topic get assigned within about this interval.
        "topic.metadata.refresh.interval.ms": DEFAULT_METADATA_REFRESH_MS,
    }
    settings.update(client_settings(config.kafka_settings, "consumer"))
    # Static membership: the broker fences every member but one that joins with the same
    # group.instance.id, so each process of a pool gets the id with its index appended.
    instance = settings.get("group.instance.id")
    if instance and config.processes > 1:
        settings["group.instance.id"] = f"{instance}-{index}"
    return settings


def partition_count_seconds(settings: Mapping[str, Any]) -> float:
    """Return the seconds between two readings of the input topic's partition count.

    That is the consumer's topic.metadata.refresh.interval.ms, at least 1 s, because the
    consumer finds new partitions only at that refresh. A refresh that is off (-1) or a value
    that is not a number gives PARTITION_COUNT_SECONDS.
    """
    try:
        refresh_ms = float(str(settings.get("topic.metadata.refresh.interval.ms")).strip())
    except ValueError:
        return PARTITION_COUNT_SECONDS
    if refresh_ms < 0:
        return PARTITION_COUNT_SECONDS
    return max(refresh_ms / 1000, 1.0)


def producer_settings(config: WorkerConfig) -> dict[str, Any]:
    """Return the librdkafka producer settings, each with the reason it is set."""
    settings: dict[str, Any] = {
        "bootstrap.servers": config.brokers,
        # Retries inside librdkafka neither duplicate nor reorder the outputs of one user.
        "enable.idempotence": True,
        "acks": "all",
        # A failed delivery is reported within one wait of the worker, which then retries it.
        "delivery.timeout.ms": int(config.delivery_timeout * 1000),
        # A batch's outputs go out together; waiting 1 ms more adds little latency.
        "linger.ms": 1,
    }
    settings.update(client_settings(config.kafka_settings, "producer"))
    return settings


class RateLimitedLog:
    """Log the first warnings of each kind one by one, then count the rest in summary lines.

    noun: what is counted, in the plural ("dead letters"); kind_name: the name of the kinds in
    log lines ("reason"). A summary line with the counts by kind follows at most once per
    `interval` seconds, when `flush` is called.
    """

    def __init__(
        self,
        noun: str,
        kind_name: str,
        per_kind: int = DEAD_LETTERS_LOGGED_PER_REASON,
        interval: float = DEAD_LETTER_SUMMARY_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.noun = noun
        self.kind_name = kind_name
        self.per_kind = per_kind
        self.interval = interval
        self.clock = clock
        self.logged: Counter[str] = Counter()
        self.unlogged: Counter[str] = Counter()  # since the last summary line
        self.last_summary = clock()

    def add(self, kind: str, message: str, *args: object) -> None:
        """Log `message % args` while `kind` has had fewer than `per_kind` lines, else count it."""
        if self.logged[kind] >= self.per_kind:
            self.unlogged[kind] += 1
            return
        self.logged[kind] += 1
        logger.warning(message, *args)
        if self.logged[kind] == self.per_kind:
            logger.warning(
                "logged %d %s with %s %s: further ones are counted in one line every %.0f s",
                self.per_kind,
                self.noun,
                self.kind_name,
                kind,
                self.interval,
            )

    def flush(self) -> None:
        """Log the counts of the unlogged warnings when the interval has passed."""
        now = self.clock()
        if not self.unlogged or now - self.last_summary < self.interval:
            return
        by_kind = ", ".join(f"{kind} {count}" for kind, count in sorted(self.unlogged.items()))
        logger.warning(
            "%d more %s in the last %.0f s, by %s: %s",
            sum(self.unlogged.values()),
            self.noun,
            now - self.last_summary,
            self.kind_name,
            by_kind,
        )
        self.unlogged.clear()
        self.last_summary = now


class DeadLetterLog(RateLimitedLog):
    """Log the first dead letters of each reason, then one summary line per interval."""

    def __init__(
        self,
        per_reason: int = DEAD_LETTERS_LOGGED_PER_REASON,
        interval: float = DEAD_LETTER_SUMMARY_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__("dead letters", "reason", per_reason, interval, clock)

    def add_letter(self, letter: DeadLetter) -> None:
        """Log `letter` while its reason has had fewer than `per_kind` lines, else count it."""
        self.add(
            letter.reason,
            "dead letter %s: %s (%s)",
            letter.position,
            letter.reason,
            letter.message,
        )


def original_headers(
    headers: Sequence[tuple[str, bytes | None]],
) -> list[tuple[str, bytes | None]]:
    """Return the headers of a rejected message for its dead letter, in their order.

    A set larger than MAX_ORIGINAL_HEADER_BYTES is replaced by the one header
    `hiertcn.headers_dropped` with its size, so that the dead letter can still be produced.
    """
    size = sum(len(name.encode()) + len(value or b"") for name, value in headers)
    if size > MAX_ORIGINAL_HEADER_BYTES:
        return [("hiertcn.headers_dropped", str(size).encode())]
    return list(headers)


def position_text(topic: str, partition: int, offset: int) -> str:
    """Format a Kafka position as `topic[partition]@offset`."""
    return f"{topic}[{partition}]@{offset}"


@dataclass
class _Decoded:
    """Step 1 of a batch: valid events, dead letters and the positions they advance."""

    events: list[Event] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    positions: dict[int, PartitionPosition] = field(default_factory=dict)


class Worker:
    """The consume-process-produce loop of one pool process.

    The collaborators are passed in so that tests can build them; `run_worker` builds the real
    ones inside the pool process.
    """

    def __init__(
        self,
        config: WorkerConfig,
        pipeline: Pipeline,
        store: Any,
        metrics: WorkerMetrics,
        consumer: Consumer,
        producer: Producer,
        row_of: dict[str, int],
        label: str | None = None,
        heartbeat: WorkerHeartbeat | None = None,
        index: int = 0,
        bundle_watch: BundleWatch | None = None,
    ) -> None:
        # The pool's index of this process, which a static group.instance.id gets appended.
        self.index = index
        # The name of this process in log lines, as the pool writes it: "worker 0 (pid 123)".
        self.label = label or f"worker (pid {os.getpid()})"
        self.config = config
        self.pipeline = pipeline
        self.store = store
        self.metrics = metrics
        self.consumer = consumer
        self.producer = producer
        self.row_of = row_of
        # The pool's /healthz and /readyz read this worker's main-loop turns and group join.
        self.heartbeat = heartbeat if heartbeat is not None else WorkerHeartbeat()
        self.event_config = event_config(config)
        self.session_gap = pipeline.config.session_gap
        self.top_k = pipeline.config.top_k
        self.pid = str(os.getpid()).encode()
        # A dead letter carries the raw input, which can be larger than the producer accepts.
        max_bytes = int(config.kafka_settings.get("message.max.bytes", DEFAULT_MESSAGE_MAX_BYTES))
        self.max_dead_letter_bytes = max(max_bytes - MESSAGE_OVERHEAD_BYTES, 1024)
        self.dead_letter_log = DeadLetterLog()
        # Events without a Kafka key are accepted, and logged by partition.
        self.keyless_log = RateLimitedLog("events without a Kafka key", "partition")
        # Events behind their partition's watermark minus the session gap, logged by partition.
        self.late_log = RateLimitedLog("late events", "partition", per_kind=1)
        self.consumer_error_log = RateLimitedLog("consumer errors", "code")
        self.store_gauge_log = RateLimitedLog("failed state store size readings", "error")
        # The error callback of the Kafka clients, whose summary lines `_idle` flushes.
        self.client_errors: KafkaErrorLog | None = None
        # Stops the worker when a file of its bundle changes. None in tests without a bundle.
        self.bundle_watch = bundle_watch
        self._store_gauges = Interval(STORE_GAUGE_SECONDS)
        self._partition_gauge = Interval(partition_count_seconds(consumer_settings(config, index)))
        self.state_dir = Path(config.state_dir).resolve()
        self._stopping = False
        # Messages consumed for the batch that is being collected; on_revoke finishes them.
        self._pending: list[Message] = []
        # When the worker last had no partition, and whether it has logged that since.
        self._unassigned_since = time.monotonic()
        self._unassigned_noticed = False
        # Next offset and watermark of every assigned partition.
        self._positions: dict[int, PartitionPosition] = {}
        # Partitions whose timers need a pass while no events arrive, and those paused because
        # their timers have a backlog of idle sessions.
        self._timers_due: set[int] = set()
        self._paused: set[int] = set()
        # The topic that receives every state and position this worker writes, if any.
        self.changelog = Changelog(config) if config.changelog_topic else None
        self.deliverer = Deliverer(
            producer,
            DeliveryConfig(config.brokers, config.delivery_timeout, config.delivery_attempts),
            on_latency=metrics.end_to_end_latency.observe,
            on_retries=metrics.delivery_retries.inc,
        )
        self.committer = Committer(
            store,
            self.deliverer,
            CommitterConfig(config.input_topic, config.max_pending_batches),
            observe_commit=metrics.state_write_seconds.observe,
        )
        # Outputs by trigger, created at 0 so that rates exist before the first output.
        self._event_outputs = metrics.outputs_produced.labels("event")
        self._session_close_outputs = (
            metrics.outputs_produced.labels("session_close")
            if config.publish_on_session_close
            else None
        )

    # -- lifecycle ---------------------------------------------------------------------------

    def request_stop(self, signum: int | None = None, frame: FrameType | None = None) -> None:
        """Finish the batch in flight, then stop (the SIGTERM and SIGINT handler)."""
        if not self._stopping:
            cause = f"received {signal.Signals(signum).name}" if signum else "stop requested"
            logger.info("%s %s: finishing the batch in flight, then stopping", self.label, cause)
        self._stopping = True

    def run(self) -> None:
        """Consume and process batches until `request_stop`; then commit and leave the group."""
        topic = self.config.input_topic
        self.consumer.subscribe(
            [topic], on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_lost
        )
        logger.info(
            "%s started on %s, group %s, state dir %s",
            self.label,
            topic,
            self.config.group_id,
            self.state_dir,
        )
        self.metrics.workers_running.set(1)
        try:
            while not self._stopping:
                self.heartbeat.beat()
                self.committer.check()
                messages = self._collect()
                # Before the batch or the timers run the model, so that no output computed
                # after a change of the bundle was noticed is published.
                if self.bundle_watch is not None:
                    self.bundle_watch.check()
                if messages:
                    self._process(messages)
                else:
                    self._idle()
                self._refresh_gauges()
                self._commit_offsets(wait=False)
        finally:
            self._shutdown()

    def _shutdown(self) -> None:
        # close() revokes the assignment, and on_revoke finishes what was collected and commits.
        instance = self.consumer_instance_id()
        if instance:
            logger.info(
                "%s stopping: keeping the static membership of %s (the broker removes it after "
                "session.timeout.ms)",
                self.label,
                instance,
            )
        else:
            logger.info("%s stopping: leaving the group", self.label)
        self.heartbeat.set_ready(False)
        self.metrics.workers_running.set(0)
        # A failed commit thread leaves nothing to commit. It fails mostly on an unreachable
        # broker, and then the consumer's close can wait until the broker returns.
        failed = self.committer.failed
        try:
            if failed:
                self._close_consumer_within(FAILED_CLOSE_SECONDS)
            else:
                close_consumer(self.consumer, static_member=bool(instance))
        finally:
            try:
                # Commits what is pending; a failure of the thread is raised here, if the run
                # loop has not raised it already.
                self.committer.close()
            finally:
                self._flush_producer(0.0 if failed else self.config.delivery_timeout)

    def _close_consumer_within(self, seconds: float) -> None:
        """Close the consumer in a thread and stop waiting for it after `seconds`.

        librdkafka's close has no timeout. It waits for the group coordinator, for instance
        for offset commits in flight, which while the broker is down can last until the broker
        returns.
        """
        closer = threading.Thread(
            target=self.consumer.close, name="hiertcn-consumer-close", daemon=True
        )
        closer.start()
        closer.join(seconds)
        if closer.is_alive():
            logger.warning(
                "%s: the Kafka consumer did not close within %.0f s, so the worker exits without "
                "leaving the group; the group moves its partitions after session.timeout.ms",
                self.label,
                seconds,
            )

    def consumer_instance_id(self) -> str | None:
        """Return the group.instance.id this worker joins with, or None without static membership.

        A static member does not leave the group when its consumer closes.
        """
        return consumer_settings(self.config, self.index).get("group.instance.id") or None

    def _flush_producer(self, timeout: float) -> None:
        # A batch whose outputs are undelivered here was not committed, so a restart
        # reprocesses it and publishes them again.
        remaining = self.producer.flush(timeout)
        if remaining:
            logger.error("%d messages still undelivered at shutdown", remaining)
        logger.info("%s stopped", self.label)

    # -- rebalance callbacks -----------------------------------------------------------------

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
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
        if self.changelog is not None:
            stored = self._restore_from_changelog(self.changelog, assigned, stored, committed)
        unstored = [partition for partition in assigned if partition not in stored]
        if unstored and store_was_empty and not rebuild_state_allowed(self.config):
            # Raised before anything is assigned; confluent-kafka re-raises it from poll().
            self._check_not_committed(consumer, unstored)
        self._seek_to_stored(partitions, stored)
        self._warn_behind_committed(
            {p: stored[p] for p in assigned if p in stored and p in committed}, committed
        )
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
    ) -> dict[int, PartitionPosition]:
        """Restore each partition that has no stored position, or one behind the group's
        committed offset, from the changelog. Returns the stored positions after the restores."""
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
            return stored
        reader = changelog.reader()
        try:
            # NOTE: the restore runs inside the rebalance callback, where the consumer does not
            # poll. A restore longer than max.poll.interval.ms (300 s unless -X sets it) makes
            # the group evict this member, which then restores again at its next assignment.
            for partition, reason in due.items():
                self._restore_partition(reader, partition, reason, stored.get(partition))
        finally:
            reader.close()
        return self.store.positions(self.config.input_topic)

    def _restore_partition(
        self,
        reader: ChangelogReader,
        partition: int,
        reason: str,
        stored: PartitionPosition | None,
    ) -> None:
        topic = self.config.input_topic
        changelog = reader.topic
        logger.info("restoring %s[%d] from changelog %s: %s", topic, partition, changelog, reason)
        result = reader.restore(self.store, partition, on_progress=self.heartbeat.beat)
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
            return
        logger.info(
            "restored %s from changelog %s: %d records, %d users in %.1f s",
            position_text(topic, partition, result.position.next_offset),
            changelog,
            result.records,
            result.users,
            result.seconds,
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
                "a second time. Pass the --state-dir that processed them, or restore its "
                "export with `hiertcn-stream state --state-dir DIR import FILE`. To rebuild "
                "the states and publish again on purpose, pass --rebuild-state (or use a new "
                "--group-id)"
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
        self._forget(revoked, "revoked")

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        lost = {tp.partition for tp in partitions}
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
        self._forget(lost, "lost")

    def _forget(self, partitions: set[int], reason: str) -> None:
        stored = self._stored_offsets()
        for partition in sorted(partitions):
            position = self._positions.pop(partition, None)
            processed = position.next_offset if position else None
            self._log_forgotten(reason, partition, stored.get(partition), processed)
            # livemax across the pool: the new owner reports the real lag.
            self.metrics.consumer_lag.labels(str(partition)).set(0)
        self._timers_due -= partitions
        self._paused -= partitions
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
        if stored is None:
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
            logger.info(
                "%s[%d]: offsets up to %d were processed but their commit did not reach the "
                "state store, so the next owner processes them again",
                topic,
                partition,
                processed,
            )

    # -- step 1: consume and decode ----------------------------------------------------------

    def _collect(self) -> list[Message]:
        """Consume up to max_batch_size messages, waiting max_batch_delay after the first."""
        self._pending = []

        # poll() returns as soon as one message is there, whereas consume() would wait for a
        # full batch until its timeout.
        first = self.consumer.poll(IDLE_POLL_SECONDS)
        if first is None:
            return []
        self._accept([first])

        deadline = time.monotonic() + self.config.max_batch_delay
        while len(self._pending) < self.config.max_batch_size and not self._stopping:
            # A timeout of 0 still takes the messages that are already fetched.
            timeout = max(deadline - time.monotonic(), 0.0)
            room = self.config.max_batch_size - len(self._pending)
            self._accept(self.consumer.consume(num_messages=room, timeout=timeout))
            if timeout == 0.0:
                break
        messages, self._pending = self._pending, []
        return messages

    def _accept(self, messages: Sequence[Message]) -> None:
        for message in messages:
            if message.error() is None:
                self._pending.append(message)
            else:
                self._on_consume_error(message.error())

    def _on_consume_error(self, error: KafkaError) -> None:
        fix = FATAL_CONSUMER_ERRORS.get(error.code())
        if fix is not None:
            raise ConsumerSetupError(
                f"{self.label}: the consumer failed with {error.name()} ({error.str()}): {fix}"
            )
        if error.fatal():
            raise KafkaException(error)
        self.consumer_error_log.add(
            error.name(), "consumer error (librdkafka retries it): %s", error.str()
        )
        self.consumer_error_log.flush()

    def _decode(self, messages: Sequence[Message]) -> _Decoded:
        decoded = _Decoded()
        # One clock reading per batch for the ts_in_future check.
        now = time.time()
        for message in messages:
            partition = message.partition()
            offset = message.offset()
            self.metrics.events_consumed.labels(str(partition)).inc()
            _kind, timestamp_ms = message.timestamp()
            append_ts = timestamp_ms / 1000.0 if timestamp_ms > 0 else None
            position = Position(message.topic(), partition, offset)
            result = decode_event(
                message.key(),
                message.value(),
                position,
                self.row_of,
                self.event_config,
                append_ts,
                now,
            )
            previous = decoded.positions.get(partition) or self._positions.get(
                partition, PartitionPosition(0, float("-inf"))
            )
            watermark = previous.watermark
            if isinstance(result, DeadLetter):
                decoded.dead_letters.append(replace(result, headers=tuple(message.headers() or ())))
            else:
                decoded.events.append(result)
                if result.ts < watermark - self.session_gap:
                    self._count_late(result, position, watermark)
                watermark = max(watermark, result.ts)
                if message.key() is None:
                    self._log_keyless(result, position)
            decoded.positions[partition] = PartitionPosition(
                max(previous.next_offset, offset + 1), watermark
            )
        self.keyless_log.flush()
        self.late_log.flush()
        return decoded

    def _count_late(self, event: Event, position: Position, watermark: float) -> None:
        """Count and log an event older than its partition's watermark minus the session gap."""
        self.metrics.late_events.inc()
        self.late_log.add(
            str(position.partition),
            "late event at %s (user %r): its time %.3f is %.0f s behind the partition's "
            "watermark %.3f, more than the session gap of %.0f s. The timers may have closed "
            "its user's session already, and outputs depend on where batches start, so outputs "
            "repeated after a restart can differ from the first ones. Produce each partition "
            "in event-time order (hiertcn-stream produce --order time)",
            position,
            event.user,
            event.ts,
            watermark - event.ts,
            watermark,
            self.session_gap,
        )

    def _log_keyless(self, event: Event, position: Position) -> None:
        self.keyless_log.add(
            str(position.partition),
            "event without a Kafka key at %s (user %r) accepted: the producer's partitioner "
            "may put this user's events on several partitions, so they can be processed out "
            "of order and their states updated by two workers at once; key events by user id",
            position,
            event.user,
        )

    # -- one batch: steps 1 to 6 -------------------------------------------------------------

    def _process(self, messages: Sequence[Message]) -> None:
        started = time.perf_counter()

        # (1) Decode and validate; bad messages become dead letters.
        decoded = self._decode(messages)
        events = decoded.events

        # (2) Read the states of the batch's users in one read transaction.
        read_started = time.perf_counter()
        states = self.committer.read(sorted({event.user for event in events}))
        self.metrics.state_read_seconds.observe(time.perf_counter() - read_started)

        # (3)-(4) Close sessions on a gap, score every event, update the states.
        result = self.pipeline.process(events, states)
        changed = dict(result.states)

        # (3) Timers: close idle sessions behind each partition's new watermark.
        idle = self._close_idle(decoded.positions, changed)
        changed.update(idle.states)

        # (5) Produce the event outputs, the session-close outputs and the dead letters. A
        # user's session-close output follows the outputs of that user's events in this batch.
        # The changelog records come last. The committer's delivery wait produces them once the
        # others are delivered, and waits for them before the LMDB commit.
        records = [
            *self._output_records(events, result),
            *self._session_close_records(idle.outputs),
            *self._dead_letter_records(decoded.dead_letters),
            *self._changelog_records(changed, decoded.positions),
        ]
        self.deliverer.produce(records)

        # (6) Hand states, offsets and records to the committer, which commits them once the
        # broker has the records. The next batch reads these states from the committer.
        self.committer.submit(changed, decoded.positions, records)
        for partition, position in decoded.positions.items():
            if partition in self._positions:
                self._positions[partition] = position

        self._observe(messages, result, idle, time.perf_counter() - started)

    def _idle(self) -> None:
        """Run the timer passes that are due, then refresh the lag gauges."""
        for partition in sorted(self._timers_due & set(self._positions)):
            idle = self._close_idle({partition: self._positions[partition]}, {})
            self.metrics.states_reset.inc(idle.reset)
            if not idle.states:
                continue
            # Delivered before the commit of the closed states, as in a batch.
            records = [
                *self._session_close_records(idle.outputs),
                *self._changelog_records(idle.states, {}),
            ]
            self.deliverer.produce(records)
            self.committer.submit(idle.states, {}, records)
            self.metrics.sessions_closed.labels("timer").inc(len(idle.states) - idle.reset)
            self._count_session_close_outputs(len(idle.outputs))
        self.dead_letter_log.flush()
        self.keyless_log.flush()
        self.late_log.flush()
        if self.client_errors is not None:
            self.client_errors.flush()
        self._update_lag(self._positions)
        self._notice_unassigned()

    def _notice_unassigned(self) -> None:
        """Say once per wait when the worker has had no partition for a while."""
        if self._positions:
            self._unassigned_since = time.monotonic()
            self._unassigned_noticed = False
            return
        waited = time.monotonic() - self._unassigned_since
        if self._unassigned_noticed or waited < UNASSIGNED_NOTICE_SECONDS:
            return
        self._unassigned_noticed = True
        logger.info(
            "%s has had no partition of %s for %.0f s: the group is still rebalancing (after a "
            "member was killed, the broker waits for its session timeout, -X "
            "session.timeout.ms), or the pool has more workers than partitions",
            self.label,
            self.config.input_topic,
            waited,
        )

    # -- step 3: timers ----------------------------------------------------------------------

    def _close_idle(
        self, positions: dict[int, PartitionPosition], changed: dict[str, UserState]
    ) -> IdleResult:
        """Close the open sessions whose last event is more than session_gap behind the
        partition's watermark. `changed` contains this batch's newer states."""
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
                    "paused partition %d: more than %d idle sessions to close",
                    partition,
                    self.config.timer_limit,
                )
        else:
            self._timers_due.discard(partition)
            if partition in self._paused:
                self.consumer.resume(tp)
                self._paused.discard(partition)
                logger.info("resumed partition %d: its idle sessions are closed", partition)
        self.metrics.paused_partitions.set(len(self._paused))

    # -- step 5: the records to produce ------------------------------------------------------

    def _output_records(self, events: Sequence[Event], result: BatchResult) -> list[OutputRecord]:
        return [
            self._recommendation_record(output, event.append_ts)
            for event, output in zip(events, result.outputs, strict=True)
        ]

    def _session_close_records(self, outputs: Sequence[Recommendation]) -> list[OutputRecord]:
        # No input message has a Kafka time for these, so the end-to-end latency skips them.
        return [self._recommendation_record(output, None) for output in outputs]

    def _recommendation_record(
        self, output: Recommendation, append_ts: float | None
    ) -> OutputRecord:
        return OutputRecord(
            topic=self.config.output_topic,
            key=output.user.encode("utf-8"),
            value=msgpack.packb(output.to_dict(), use_bin_type=True),
            headers=[(WORKER_HEADER, self.pid)],
            append_ts=append_ts,
        )

    def _changelog_records(
        self, states: Mapping[str, UserState], positions: Mapping[int, PartitionPosition]
    ) -> list[OutputRecord]:
        return [] if self.changelog is None else self.changelog.records(states, positions)

    def _dead_letter_records(self, dead_letters: Iterable[DeadLetter]) -> list[OutputRecord]:
        records = []
        for letter in dead_letters:
            self.dead_letter_log.add_letter(letter)
            self.metrics.dead_letters.labels(letter.reason).inc()
            headers = [
                *original_headers(letter.headers),
                ("hiertcn.error", letter.message.encode("utf-8", "replace")),
                ("hiertcn.reason", letter.reason.encode()),
                ("hiertcn.source", letter.position.encode()),
                (WORKER_HEADER, self.pid),
            ]
            key, value = letter.key, letter.value
            size = len(key or b"") + len(value or b"")
            if size > self.max_dead_letter_bytes:
                # Cut the raw message so that it can be produced; the header keeps its size.
                headers.append(("hiertcn.truncated", str(size).encode()))
                key = key[: self.max_dead_letter_bytes // 2] if key else key
                value = value[: self.max_dead_letter_bytes - len(key or b"")] if value else value
            records.append(OutputRecord(self.config.dead_letter_topic, key, value, headers))
        self.dead_letter_log.flush()
        return records

    # -- step 6: Kafka offsets ---------------------------------------------------------------

    def _commit_offsets(self, wait: bool) -> None:
        """Commit to Kafka the offsets that the committer has stored in LMDB since the last call.

        Only a revocation waits for the commit. Otherwise it does not, because LMDB stores the
        position that counts and the Kafka offsets only show lag.
        """
        topic = self.config.input_topic
        committed = self.committer.take_committed()
        offsets = [
            TopicPartition(topic, partition, position.next_offset)
            for partition, position in sorted(committed.items())
            if partition in self._positions  # a lost or revoked partition has a new owner
        ]
        if not offsets:
            return
        try:
            self.consumer.commit(offsets=offsets, asynchronous=not wait)
        except KafkaException as error:
            logger.warning("Kafka offset commit failed (LMDB has the position): %s", error)

    # -- metrics -----------------------------------------------------------------------------

    def _observe(
        self, messages: Sequence[Message], result: BatchResult, idle: IdleResult, seconds: float
    ) -> None:
        metrics = self.metrics
        metrics.batch_size.observe(len(messages))
        metrics.batch_seconds.observe(seconds)
        self._event_outputs.inc(len(result.outputs))
        self._count_session_close_outputs(len(idle.outputs))
        metrics.states_reset.inc(result.reset + idle.reset)
        for trigger, count in result.closed.items():
            metrics.sessions_closed.labels(trigger).inc(count)
        # idle.states also contains the states that were reset, which closed no session.
        if len(idle.states) > idle.reset:
            metrics.sessions_closed.labels("timer").inc(len(idle.states) - idle.reset)
        ranks = [live[0] for live in result.live if live is not None]
        metrics.live_predictions.inc(len(ranks))
        for cutoff in live_cutoffs(self.top_k):
            metrics.live_hits.labels(str(cutoff)).inc(sum(rank <= cutoff for rank in ranks))
        metrics.live_reciprocal_rank_sum.inc(sum(1.0 / rank for rank in ranks))
        self._update_lag({m.partition(): self._positions.get(m.partition()) for m in messages})
        if logger.isEnabledFor(logging.DEBUG):
            created = [m.timestamp()[1] for m in messages if m.timestamp()[1] > 0]
            waited = time.time() * 1000 - min(created) if created else float("nan")
            logger.debug(
                "batch of %d messages: %d outputs in %.1f ms; the oldest message was created "
                "%.0f ms before the batch ended",
                len(messages),
                len(result.outputs),
                seconds * 1000,
                waited,
            )

    def _count_session_close_outputs(self, count: int) -> None:
        if count and self._session_close_outputs is not None:
            self._session_close_outputs.inc(count)

    def _update_lag(self, positions: dict[int, PartitionPosition | None]) -> None:
        topic = self.config.input_topic
        for partition, position in positions.items():
            if position is None:
                continue
            tp = TopicPartition(topic, partition)
            try:
                _low, high = self.consumer.get_watermark_offsets(tp, cached=True)
            except KafkaException:
                continue
            if high >= 0:
                lag = max(high - position.next_offset, 0)
                self.metrics.consumer_lag.labels(str(partition)).set(lag)

    def _refresh_gauges(self) -> None:
        """Read the state store's size and the input topic's partition count when they are due."""
        if self._store_gauges.due():
            self._read_store_size()
        if self._partition_gauge.due():
            self._read_partition_count()

    def _read_store_size(self) -> None:
        try:
            users = self.store.user_count()
            info = self.store.environment_info()
        except (StateStoreError, lmdb.Error) as error:
            # A gauge must not stop the worker, and the next reading may succeed.
            self.store_gauge_log.add(
                type(error).__name__,
                "reading the state store's size for the metrics failed: %s",
                error,
            )
            self.store_gauge_log.flush()
            return
        self.metrics.state_users.set(users)
        self.metrics.state_map_size.set(info["map_size"])
        self.metrics.state_map_used.set(info["used_bytes"])

    def _read_partition_count(self) -> None:
        topic = self.config.input_topic
        try:
            metadata = self.consumer.list_topics(topic, timeout=PARTITION_COUNT_TIMEOUT_SECONDS)
        except KafkaException as error:
            logger.debug("reading the partition count of %s failed: %s", topic, error)
            return
        described = metadata.topics.get(topic)
        if described is None or described.error is not None:
            logger.debug("no partition count of %s in the metadata: %s", topic, described)
            return
        self.metrics.input_partitions.set(len(described.partitions))


def live_cutoffs(top_k: int) -> list[int]:
    """Return the K values of the live recall counters: 1, 5, 10 and 20 up to K, and K itself."""
    return sorted({cutoff for cutoff in (1, 5, 10, 20) if cutoff <= top_k} | {top_k})


def install_signal_handlers(worker: Worker) -> None:
    """Make SIGTERM and SIGINT finish the batch in flight and stop the worker."""
    signal.signal(signal.SIGTERM, worker.request_stop)
    signal.signal(signal.SIGINT, worker.request_stop)


class TimedBundle:
    """A model bundle whose two graph calls are timed into `hiertcn_inference_seconds`."""

    def __init__(self, bundle: Any, metrics: WorkerMetrics) -> None:
        self._bundle = bundle
        self._step_seconds = metrics.inference_seconds.labels("session_step")
        self._close_seconds = metrics.inference_seconds.labels("session_close")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._bundle, name)

    def session_step(self, prefix: Any, lengths: Any, state: Any) -> Any:
        with self._step_seconds.time():
            return self._bundle.session_step(prefix, lengths, state)

    def session_close(self, state: Any, session_mean: Any) -> Any:
        with self._close_seconds.time():
            return self._bundle.session_close(state, session_mean)


class KafkaErrorLog:
    """The error callback (`error_cb`) of a worker's consumer and producer.

    It counts every error in `hiertcn_kafka_errors_total{code}` and logs the first ones of each
    librdkafka error code, then a summary line per interval: while the broker is down,
    librdkafka reports a failed connection many times a second. librdkafka calls it from the
    thread that polls the client, which is the worker thread or the commit thread.
    """

    def __init__(self, errors: PrometheusCounter, log: RateLimitedLog | None = None) -> None:
        self.errors = errors
        self.log = log or RateLimitedLog("Kafka client errors", "code")
        self._lock = threading.Lock()
        # The codes of an unreachable broker start at 0, so that a rate over the first errors
        # of an outage counts all of them.
        for code in OUTAGE_ERROR_CODES:
            errors.labels(KafkaError(code).name())

    def __call__(self, error: KafkaError) -> None:
        code = error.name()
        self.errors.labels(code).inc()
        if error.fatal():
            # librdkafka cannot recover from a fatal error, and the client's next call raises it.
            logger.error("fatal Kafka client error: %s", error)
            return
        with self._lock:
            self.log.add(
                code, "Kafka client error %s (librdkafka retries it): %s", code, error.str()
            )
            self.log.flush()

    def flush(self) -> None:
        """Log the summary of the errors not logged yet, when its interval has passed."""
        with self._lock:
            self.log.flush()


def _open_clients(
    config: WorkerConfig, index: int, on_error: KafkaErrorLog
) -> tuple[Consumer, Producer]:
    # librdkafka's own lines go to a rate-limited logger instead of this process's stderr.
    client_log = librdkafka_logger(f"{__name__}.librdkafka")
    consumer = Consumer(
        {**consumer_settings(config, index), "error_cb": on_error, "logger": client_log}
    )
    producer = Producer({**producer_settings(config), "error_cb": on_error, "logger": client_log})
    return consumer, producer


def open_state_store(config: WorkerConfig, bundle: ModelBundle) -> StateStore:
    """Open the state store of `config`, creating it when missing, checked against `bundle`.

    The open raises when the recorded state shapes or bundle version do not fit the bundle.
    """
    from statestore import StateStore, StoreConfig

    return StateStore(
        StoreConfig(
            path=config.state_dir,
            map_size=config.state_map_size,
            sync=config.state_sync,
            bundle_version=bundle.version,
            state_shape=bundle.state_shape,
            embedding_dim=bundle.embedding_dim,
            catalog=bundle.catalog,
            catalog_items=bundle.num_items,
        )
    )


def run_worker(
    config: WorkerConfig,
    index: int,
    threads: int | None = None,
    heartbeat: WorkerHeartbeat | None = None,
) -> int:
    """Run one pool process until SIGTERM or SIGINT; return its exit code.

    The bundle, the LMDB environment and the Kafka clients are opened here, after the process
    has started, because none of them may be shared across processes.
    """
    from stream.metrics import create_metrics
    from stream.pipeline import PipelineConfig

    logger.info("worker %d (pid %d) starting", index, os.getpid())
    bundle, watch = load_watched_bundle(config, threads)
    # The pool serves the aggregate of every process, so these metrics join no registry here.
    metrics = create_metrics(None)
    metrics.bundle_info.labels(bundle.version).set(1)
    pipeline = Pipeline(
        TimedBundle(bundle, metrics),
        PipelineConfig(
            session_gap=config.session_gap,
            top_k=config.k,
            session_close_outputs=config.publish_on_session_close,
        ),
    )
    store = open_state_store(config, bundle)
    client_errors = KafkaErrorLog(metrics.kafka_errors)
    consumer, producer = _open_clients(config, index, client_errors)
    label = f"worker {index} (pid {os.getpid()})"
    worker = Worker(
        config,
        pipeline,
        store,
        metrics,
        consumer,
        producer,
        bundle.row_of,
        label,
        heartbeat,
        index,
        bundle_watch=watch,
    )
    worker.client_errors = client_errors
    install_signal_handlers(worker)
    try:
        worker.run()
    finally:
        store.close()
    return 0
