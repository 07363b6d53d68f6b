"""Produce the worker's messages and wait until the broker has acknowledged them.

The worker produces a batch's outputs and dead letters at once (`Deliverer.produce`) and goes on
with the next batch. The committer thread then waits for their delivery reports
(`Deliverer.wait`) before it writes the batch's states and offsets, so that a commit never
covers an output the broker does not have. Deferred records (the changelog records of
`stream.changelog`) are produced by that wait, once the other records are delivered, so that
the broker never has a changelog position whose outputs it lacks.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from stream.errors import StreamError

logger = logging.getLogger(__name__)

# Maximum seconds of one poll for delivery reports. It is short, so a wait ends soon after
# its last report.
_POLL_SECONDS = 0.05


class DeliveryError(StreamError):
    """The broker did not acknowledge a batch's outputs after every retry, or the producer
    rejected a message."""


@dataclass
class OutputRecord:
    """One message to produce, kept until the broker acknowledges it."""

    topic: str
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes | None]]
    append_ts: float | None = None  # Kafka time of the input event (s), for latency
    # The partition to produce to; None leaves the choice to the producer's partitioner.
    partition: int | None = None
    # Produced by `Deliverer.wait` after every record of that wait without this flag is
    # delivered, never by `Deliverer.produce`.
    deferred: bool = False
    delivered: bool = False
    error: KafkaError | None = None

    @property
    def reported(self) -> bool:
        """Whether a delivery report, success or failure, has arrived for the last attempt."""
        return self.delivered or self.error is not None


def describe_targets(records: Sequence[OutputRecord]) -> str:
    """Return the topics of `records`, each with its partitions where the records name them,
    and the message counts: `interactions.changelog[0, 3] x16, recommendations x2`."""
    counts: Counter[str] = Counter()
    partitions: dict[str, set[int]] = {}
    for record in records:
        counts[record.topic] += 1
        if record.partition is not None:
            partitions.setdefault(record.topic, set()).add(record.partition)
    parts = []
    for topic, count in counts.most_common():
        numbers = sorted(partitions.get(topic, ()))
        named = f"[{', '.join(map(str, numbers))}]" if numbers else ""
        parts.append(f"{topic}{named} x{count}")
    return ", ".join(parts)


@dataclass(frozen=True)
class DeliveryConfig:
    """How long to wait for delivery reports, and how often to try a failed record.

    The worker sets librdkafka's delivery.timeout.ms to `timeout`, so each try of a record gets
    its report within `timeout` seconds. Tries of a record start at least `timeout` seconds
    apart, and `Deliverer.wait` gives up `max_wait_seconds` after it began: that is how long a
    broker outage may last before the worker stops.
    """

    brokers: str  # named in the error message
    timeout: float = 10.0  # seconds between the starts of two tries of a failed record
    attempts: int = 6  # tries of a record before DeliveryError

    @property
    def max_wait_seconds(self) -> float:
        """The maximum wait of `Deliverer.wait`, in seconds: `timeout * attempts`."""
        return self.timeout * self.attempts


class Deliverer:
    """Produce records and wait for their delivery reports, producing failed ones again.

    Thread use: the worker thread calls `produce`, the committer thread calls `wait`. Both
    only touch the records they are given, and librdkafka's API may be called from any thread
    (librdkafka's INTRODUCTION.md, "Threads and callbacks").
    """

    def __init__(
        self,
        producer: Producer,
        config: DeliveryConfig,
        on_latency: Callable[[float], None],
        on_retries: Callable[[int], None],
    ) -> None:
        self.producer = producer
        self.config = config
        self.on_latency = on_latency  # called with the end-to-end seconds of each output
        self.on_retries = on_retries  # called with the number of records produced again
        # The number of the last `wait`, which its log lines carry so that the warnings of a
        # wait and its "recovered" line can be matched.
        self._waits = 0

    def produce(self, records: Sequence[OutputRecord]) -> None:
        """Hand every record that is not deferred to librdkafka; delivery reports arrive
        during `wait`."""
        for record in records:
            if not record.deferred:
                self._produce(record)

    def wait(self, records: Sequence[OutputRecord]) -> None:
        """Wait until the broker has acknowledged every record of `records`.

        Each try lasts until every record has a delivery report, success or failure. A failed
        record is produced again, at least `timeout` seconds after the previous try began, up
        to `attempts` tries. A record without a report is never produced again, because it may
        yet be delivered. After the last try, or `max_wait_seconds` after the wait began,
        DeliveryError, so that the caller commits nothing and a restart reprocesses the batch.
        The deferred records are produced once the others are delivered, and get their own
        tries within the same `max_wait_seconds`.
        """
        self._waits += 1
        started = time.monotonic()
        deadline = started + self.config.max_wait_seconds
        self._wait_tries([r for r in records if not r.deferred], started, deadline)
        deferred = [record for record in records if record.deferred]
        if deferred:
            for record in deferred:
                self._produce(record)
            self._wait_tries(deferred, started, deadline)

    def _wait_tries(self, records: Sequence[OutputRecord], started: float, deadline: float) -> None:
        """Run the tries of `wait` for `records` from now until `deadline`."""
        produced_again: set[int] = set()  # id() of each record produced more than once
        # NOTE: a retried record goes out after any later record of the same user that was
        # delivered on the first try, so per-user order holds only when no delivery fails.
        tries_started = time.monotonic()
        for attempt in range(1, self.config.attempts + 1):
            # Waiting for the reports themselves, not for a fixed time, keeps a try that ends
            # with librdkafka's _MSG_TIMED_OUT report from counting as two tries.
            self._poll_until_reported(records, deadline)
            failed = [r for r in records if not r.delivered and r.error is not None]
            waiting = [r for r in records if not r.reported]
            if not failed and not waiting:
                if attempt > 1:
                    elapsed = time.monotonic() - started
                    self._log_recovery(records, len(produced_again), attempt, elapsed)
                return
            self._log_try(failed, waiting, attempt, time.monotonic() - started)
            if attempt == self.config.attempts or waiting:
                break  # a record without a report means that the deadline has passed
            self._poll_until(min(tries_started + attempt * self.config.timeout, deadline))
            # Only failed records go out again: a record still waiting may yet be delivered.
            self.on_retries(len(failed))
            produced_again.update(id(record) for record in failed)
            for record in failed:
                record.error = None
                self._produce(record)
        raise DeliveryError(self._failure_message(records, attempt, time.monotonic() - started))

    def _log_try(
        self,
        failed: Sequence[OutputRecord],
        waiting: Sequence[OutputRecord],
        attempt: int,
        elapsed: float,
    ) -> None:
        errors = Counter(str(record.error) for record in failed)
        logger.warning(
            "delivery wait %d: %d messages failed (%s) and %d have no delivery report yet, "
            "%.1f s into the wait of at most %g s, attempt %d/%d. Undelivered: %s",
            self._waits,
            len(failed),
            ", ".join(f"{error} x{count}" for error, count in errors.items()) or "none",
            len(waiting),
            elapsed,
            self.config.max_wait_seconds,
            attempt,
            self.config.attempts,
            describe_targets([*failed, *waiting]),
        )

    def _log_recovery(
        self, records: Sequence[OutputRecord], produced_again: int, attempt: int, elapsed: float
    ) -> None:
        """Log that a wait whose first try failed has delivered everything.

        One line per such wait, after its warnings of the failed tries, so it repeats at most
        as often as they do. `produced_again` counts the records produced more than once.
        """
        logger.info(
            "delivery wait %d recovered: all %d messages delivered (%d of them produced again) "
            "by attempt %d/%d, %.1f s after the wait began: %s",
            self._waits,
            len(records),
            produced_again,
            attempt,
            self.config.attempts,
            elapsed,
            describe_targets(records),
        )

    def _failure_message(
        self, records: Sequence[OutputRecord], attempt: int, elapsed: float
    ) -> str:
        undelivered = [record for record in records if not record.delivered]
        return (
            f"{len(undelivered)} messages not delivered to {self.config.brokers} within "
            f"{elapsed:.1f} s ({attempt} of {self.config.attempts} tries, at most "
            f"{self.config.max_wait_seconds:g} s): {describe_targets(undelivered)}. Check that "
            "the broker is up and that these topics exist with these partitions, then restart "
            "the pool"
        )

    def _poll_until(self, until: float) -> None:
        """Serve delivery reports until the monotonic time `until`."""
        while (left := until - time.monotonic()) > 0:
            self.producer.poll(min(left, _POLL_SECONDS))

    def _poll_until_reported(self, records: Sequence[OutputRecord], deadline: float) -> None:
        # poll() serves the reports of every record, also of later batches, and returns as
        # soon as it has served one, so this loop ends right after the last report we need.
        pending = [record for record in records if not record.reported]
        while pending:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self.producer.poll(min(left, _POLL_SECONDS))
            pending = [record for record in pending if not record.reported]

    def _produce(self, record: OutputRecord) -> None:
        def on_delivery(error: KafkaError | None, message: Message) -> None:
            record.error = error
            record.delivered = error is None
            if error is None and record.append_ts is not None:
                self.on_latency(max(time.time() - record.append_ts, 0.0))

        # confluent-kafka takes no partition of None, so the argument is passed only when set.
        target = {} if record.partition is None else {"partition": record.partition}
        while True:
            try:
                self.producer.produce(
                    record.topic,
                    value=record.value,
                    key=record.key,
                    headers=record.headers,
                    on_delivery=on_delivery,
                    **target,
                )
                return
            except BufferError:
                # The local queue is full: serve delivery reports until there is room.
                self.producer.poll(0.1)
            except KafkaException as error:
                # librdkafka rejects a message at once for a partition or topic that its
                # metadata lacks, for example after the topic was deleted.
                raise DeliveryError(self._rejection_message(record, error)) from error

    @staticmethod
    def _rejection_message(record: OutputRecord, error: KafkaException) -> str:
        kafka_error = error.args[0]
        too_large = KafkaError.MSG_SIZE_TOO_LARGE
        if isinstance(kafka_error, KafkaError) and kafka_error.code() == too_large:
            return _size_rejection_message(record, kafka_error)
        if record.partition is None:
            target, check = record.topic, f"topic {record.topic} exists"
        else:
            target = f"{record.topic}[{record.partition}]"
            check = f"topic {record.topic} exists with partition {record.partition}"
        return (
            f"producing a message to {target} failed: {error.args[0]}. Check that {check}, "
            "then restart the pool"
        )


def _size_rejection_message(record: OutputRecord, error: KafkaError) -> str:
    """Return the message for a record that librdkafka rejects as larger than message.max.bytes."""
    key_bytes = len(record.key or b"")
    value_bytes = len(record.value or b"")
    header_bytes = sum(len(name.encode()) + len(value or b"") for name, value in record.headers)
    return (
        f"producing a message to {record.topic} failed: {error.str()}: its key of {key_bytes} "
        f"bytes, value of {value_bytes} bytes and headers of {header_bytes} bytes exceed the "
        "producer's message.max.bytes (1000000 unless -X message.max.bytes sets it). For "
        "outputs, lower --k or shorten the bundle's item ids. Otherwise raise -X "
        "message.max.bytes together with the topic's max.message.bytes on the broker, then "
        "restart the pool"
    )
