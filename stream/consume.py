"""Step 1 of a worker's batch: consume messages and decode them into events and dead letters.

`_collect` returns as soon as one message is there while no batch is open, and then takes what
else arrives within `max_batch_delay_ms`, up to `max_batch_size` messages. `_decode` validates
each message (`stream.events.decode_event`) and advances its partition's next offset and
event-time watermark. It counts late events, and logs them and events without a Kafka key,
rate-limited. A consumer error that a retry cannot fix stops the worker with `ConsumerSetupError`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from confluent_kafka import Consumer, KafkaError, KafkaException, Message

from statestore import PartitionPosition
from stream.errors import StreamError
from stream.events import DeadLetter, Event, EventConfig, Position, decode_event
from stream.kafka_settings import FATAL_CONSUMER_ERRORS
from stream.logs import RateLimitedLog

if TYPE_CHECKING:
    from stream.config import WorkerConfig
    from stream.metrics import WorkerMetrics

logger = logging.getLogger(__name__)

# Seconds one consume call waits while no batch is open, so that the stop flag, the timers and
# the lag gauges are served at least this often.
IDLE_POLL_SECONDS = 0.2


class ConsumerSetupError(StreamError):
    """The consumer got an error from the broker that a retry cannot fix: a setting or an ACL."""

    exit_code = 2


@dataclass
class _Decoded:
    """Step 1 of a batch: valid events, dead letters and the positions they advance."""

    events: list[Event] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    positions: dict[int, PartitionPosition] = field(default_factory=dict)


class ConsumeStep:
    """Step 1 of a batch of `stream.worker.Worker`, a base class of it.

    It reads and updates the worker's attributes below, and `_create_consume_logs` creates the
    logs among them.
    """

    config: WorkerConfig
    consumer: Consumer
    metrics: WorkerMetrics
    event_config: EventConfig
    row_of: dict[str, int]
    session_gap: float
    label: str
    _stopping: bool
    # Messages of the batch being collected, and the next offset and watermark of each assigned
    # partition.
    _pending: list[Message]
    _positions: dict[int, PartitionPosition]
    # Rate-limited logs of events without a Kafka key, late events and consumer errors.
    keyless_log: RateLimitedLog
    late_log: RateLimitedLog
    consumer_error_log: RateLimitedLog

    def _create_consume_logs(self) -> None:
        """Create the rate-limited logs of the warnings that can repeat for every message."""
        # Events without a Kafka key are accepted, and logged by partition.
        self.keyless_log = RateLimitedLog(
            "events without a Kafka key",
            "partition",
            logger=logger,
            singular="event without a Kafka key",
        )
        # Events behind their partition's watermark minus the session gap, logged by partition.
        self.late_log = RateLimitedLog(
            "late events", "partition", per_kind=1, logger=logger, singular="late event"
        )
        self.consumer_error_log = RateLimitedLog(
            "consumer errors", "code", logger=logger, singular="consumer error"
        )

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
