"""A load producer: publishes an event-log file to a Kafka topic, for demos and load tests.

Each event map becomes a msgpack value keyed by its user id (UTF-8), in file order, so that one
user's events land in one partition in order. Records that the file reader could not parse are
skipped and counted. The event maps are not validated here: invalid events reach the topic and
the worker's dead-letter path, which makes this tool usable for those tests too.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from stream.errors import ConfigError, StreamError
from stream.records import Record, encode_fields

logger = logging.getLogger(__name__)

# Seconds between two progress lines on stderr.
_PROGRESS_SECONDS = 5.0
# Limits of --connect-timeout and --flush-timeout in seconds. librdkafka takes timeouts as a
# signed 32-bit count of milliseconds (at most about 24.8 days), reads a negative one as "wait
# forever", and reads message.timeout.ms 0, which --flush-timeout sets, as "no limit". It also
# requires message.timeout.ms above linger.ms (5 ms here, or an -X value), so the lower limit
# is well above both.
MIN_TIMEOUT_SECONDS = 0.1
MAX_TIMEOUT_SECONDS = 1_000_000.0


class ProduceError(StreamError):
    """The broker is unreachable, or messages were not delivered.

    Exit status 1, the same as `hiertcn-stream run` for an unreachable broker.
    """

    exit_code = 1


@dataclass(frozen=True)
class ProduceConfig:
    """Target topic, broker and pace of publishing.

    rate: events per second, or None for as fast as the producer accepts them.
    limit: the maximum number of events to publish, or None for the whole file.
    overrides: librdkafka settings that replace the defaults of `producer_settings`.
    connect_timeout: seconds to wait for the broker's metadata before giving up.
    flush_timeout: seconds to wait at the end for the outstanding deliveries.
    """

    brokers: str
    topic: str
    rate: float | None = None
    limit: int | None = None
    overrides: Mapping[str, str] = field(default_factory=dict)
    connect_timeout: float = 10.0
    flush_timeout: float = 60.0

    def __post_init__(self) -> None:
        if not self.brokers:
            raise ConfigError("no brokers given: pass --brokers HOST:PORT")
        if not self.topic:
            raise ConfigError("no topic given: pass --topic NAME")
        if self.rate is not None and not self.rate > 0:
            raise ConfigError(f"invalid rate {self.rate} events/s: use a positive number")
        if self.limit is not None and self.limit < 0:
            raise ConfigError(f"invalid limit {self.limit}: use 0 or more events")
        _check_timeout("--connect-timeout", self.connect_timeout)
        _check_timeout("--flush-timeout", self.flush_timeout)

    def producer_settings(self) -> dict[str, Any]:
        """Return the librdkafka settings of the producer."""
        settings: dict[str, Any] = {
            "bootstrap.servers": self.brokers,
            # Idempotence keeps each partition's order and avoids duplicates on retries.
            "enable.idempotence": True,
            "acks": "all",
            # Small batches: a load test should see per-event latency, not long lingering.
            "linger.ms": 5,
            # Bounded so that a broker lost mid-run fails the deliveries instead of hanging.
            "message.timeout.ms": int(self.flush_timeout * 1000),
        }
        settings.update(self.overrides)
        # librdkafka's own log lines go through Python logging, served by poll(), not stderr.
        settings["logger"] = logging.getLogger(f"{__name__}.librdkafka")
        return settings


def _check_timeout(flag: str, seconds: float) -> None:
    """Raise `ConfigError` unless `seconds` is a finite timeout that librdkafka can take."""
    if not (math.isfinite(seconds) and MIN_TIMEOUT_SECONDS <= seconds <= MAX_TIMEOUT_SECONDS):
        raise ConfigError(
            f"invalid {flag} {seconds}: use a number of seconds from {MIN_TIMEOUT_SECONDS:g} "
            f"to {MAX_TIMEOUT_SECONDS:.0f}"
        )


@dataclass
class ProduceReport:
    """Counts of one run."""

    produced: int = 0
    delivered: int = 0
    failed: int = 0
    skipped: int = 0  # records the file reader could not parse
    seconds: float = 0.0
    errors: dict[str, int] = field(default_factory=dict)  # delivery error name -> count
    client_errors: dict[str, int] = field(default_factory=dict)  # client error name -> count


def user_key(fields: Mapping[str, Any]) -> bytes | None:
    """Return the Kafka key of an event map: its user id as UTF-8, or None when unusable."""
    user = fields.get("user")
    if isinstance(user, bool) or not isinstance(user, (str, int)):
        return None
    return str(user).encode("utf-8")


def check_broker(producer: Producer, config: ProduceConfig) -> None:
    """Raise `ProduceError` unless the broker returns metadata within the connect timeout."""
    try:
        producer.list_topics(timeout=config.connect_timeout)
    except KafkaException as error:
        raise ProduceError(
            f"broker {config.brokers} did not respond within {config.connect_timeout:g} s "
            f"({error.args[0].str() if error.args else error}): check --brokers and that the "
            "broker runs"
        ) from None


class EventProducer:
    """Publishes event maps with delivery reports, at an optional fixed rate."""

    def __init__(self, config: ProduceConfig, producer: Producer | None = None) -> None:
        self.config = config
        self.report = ProduceReport()
        settings = {**config.producer_settings(), "error_cb": self._on_error}
        self.producer = producer or Producer(settings)

    def _on_error(self, error: KafkaError) -> None:
        # Connection failures repeat every few milliseconds while the broker is down.
        errors = self.report.client_errors
        errors[error.name()] = errors.get(error.name(), 0) + 1
        if errors[error.name()] <= 3:
            logger.warning("Kafka client error: %s", error)

    def _on_delivery(self, error: KafkaError | None, message: Message) -> None:
        if error is None:
            self.report.delivered += 1
            return
        self.report.failed += 1
        self.report.errors[error.name()] = self.report.errors.get(error.name(), 0) + 1
        if self.report.failed <= 10:
            logger.error(
                "delivery to %s[%s] failed: %s", message.topic(), message.partition(), error
            )

    def _send(self, key: bytes | None, value: bytes) -> None:
        while True:
            try:
                self.producer.produce(
                    self.config.topic, value=value, key=key, on_delivery=self._on_delivery
                )
                return
            except BufferError:
                # The local queue is full: serve delivery reports until there is room.
                self.producer.poll(0.1)

    def run(self, records: Iterable[Record]) -> ProduceReport:
        """Publish the records, flush, and return the counts."""
        check_broker(self.producer, self.config)
        started = time.perf_counter()
        last_progress = started
        for record in records:
            if self.config.limit is not None and self.report.produced >= self.config.limit:
                break
            if record.fields is None:
                self.report.skipped += 1
                logger.debug("%s skipped: %s", record.location, record.error)
                continue
            if self.config.rate is not None:
                # Wait for this event's slot in the schedule; poll serves delivery reports.
                due = started + self.report.produced / self.config.rate
                while (delay := due - time.perf_counter()) > 0:
                    self.producer.poll(min(delay, 0.1))
            self._send(user_key(record.fields), encode_fields(record.fields))
            self.report.produced += 1
            self.producer.poll(0)
            now = time.perf_counter()
            if now - last_progress >= _PROGRESS_SECONDS:
                last_progress = now
                logger.info(
                    "produced %d events, %d delivered", self.report.produced, self.report.delivered
                )
        remaining = self.producer.flush(self.config.flush_timeout)
        self.report.seconds = time.perf_counter() - started
        if remaining:
            raise ProduceError(
                f"{remaining} of {self.report.produced} messages were not delivered within "
                f"{self.config.flush_timeout:g} s: check the broker and the topic "
                f"{self.config.topic}"
            )
        return self.report
