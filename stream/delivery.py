"""Produce the worker's messages and wait until the broker has acknowledged them.

The worker produces a batch's outputs and dead letters at once (`Deliverer.produce`) and goes on
with the next batch. The committer thread then waits for their delivery reports
(`Deliverer.wait`) before it writes the batch's states and offsets, so that a commit never
covers an output the broker does not have.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from confluent_kafka import KafkaError, Message, Producer

from stream.errors import StreamError

logger = logging.getLogger(__name__)

# Maximum seconds of one poll for delivery reports. It is short, so a wait ends soon after
# its last report.
_POLL_SECONDS = 0.05


class DeliveryError(StreamError):
    """The broker did not acknowledge a batch's outputs after every retry."""


@dataclass
class OutputRecord:
    """One message to produce, kept until the broker acknowledges it."""

    topic: str
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes | None]]
    append_ts: float | None = None  # Kafka time of the input event (s), for latency
    delivered: bool = False
    error: KafkaError | None = None

    @property
    def reported(self) -> bool:
        """Whether a delivery report, success or failure, has arrived for the last attempt."""
        return self.delivered or self.error is not None


@dataclass(frozen=True)
class DeliveryConfig:
    """How long to wait for delivery reports, and how often to retry."""

    brokers: str  # named in the error message
    timeout: float = 10.0  # seconds of one wait for the reports of a batch
    attempts: int = 6  # waits in all before DeliveryError


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

    def produce(self, records: Sequence[OutputRecord]) -> None:
        """Hand every record to librdkafka; delivery reports arrive during `wait`."""
        for record in records:
            self._produce(record)

    def wait(self, records: Sequence[OutputRecord]) -> None:
        """Wait until the broker has acknowledged every record of `records`.

        A record whose delivery failed is produced again, and a record without a report yet is
        waited for, up to `attempts` waits in all. Then DeliveryError, so that the caller
        commits nothing and a restart reprocesses the batch.
        """
        # NOTE: a retried record goes out after any later record of the same user that was
        # delivered on the first try, so per-user order holds only when no delivery fails.
        for attempt in range(1, self.config.attempts + 1):
            self._poll_until_reported(records, time.monotonic() + self.config.timeout)
            failed = [r for r in records if not r.delivered and r.error is not None]
            waiting = [r for r in records if not r.reported]
            if not failed and not waiting:
                return
            errors = Counter(str(record.error) for record in failed)
            logger.warning(
                "%d messages failed (%s) and %d have no delivery report yet, attempt %d/%d",
                len(failed),
                ", ".join(f"{error} x{count}" for error, count in errors.items()) or "none",
                len(waiting),
                attempt,
                self.config.attempts,
            )
            if attempt == self.config.attempts:
                break
            # Only failed records go out again: a record still waiting may yet be delivered.
            self.on_retries(len(failed))
            for record in failed:
                record.error = None
                self._produce(record)
        undelivered = sum(not record.delivered for record in records)
        raise DeliveryError(
            f"{undelivered} messages not delivered to {self.config.brokers} after "
            f"{self.config.attempts} waits of {self.config.timeout} s: check that the broker "
            "is up and the output topics exist, then restart the worker"
        )

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

        while True:
            try:
                self.producer.produce(
                    record.topic,
                    value=record.value,
                    key=record.key,
                    headers=record.headers,
                    on_delivery=on_delivery,
                )
                return
            except BufferError:
                # The local queue is full: serve delivery reports until there is room.
                self.producer.poll(0.1)
