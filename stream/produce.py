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

from hiertcn.command_line import format_flag_number, format_number
from hiertcn.signals import StopRequest, stop_requests
from stream.config import MAX_SESSION_GAP, MIN_SESSION_GAP, check_topic_name, format_setting
from stream.errors import ConfigError, StreamError
from stream.kafka_settings import check_flag_settings, describe_invalid_setting, setting_source
from stream.records import Record, encode_fields

logger = logging.getLogger(__name__)

# Seconds between two progress lines on stderr.
_PROGRESS_SECONDS = 5.0
# Limits of --connect-timeout and --flush-timeout in seconds. librdkafka takes timeouts as a
# signed 32-bit count of milliseconds (at most about 24.8 days), reads a negative one as "wait
# forever", and reads message.timeout.ms 0, which --flush-timeout sets, as "no limit". It also
# requires message.timeout.ms above linger.ms, so the lower limit is well above this command's
# 5 ms, and `check_linger_below_message_timeout` checks a linger.ms given with -X.
MIN_TIMEOUT_SECONDS = 0.1
MAX_TIMEOUT_SECONDS = 1_000_000.0
# The names of librdkafka's linger.ms and message.timeout.ms, aliases included. librdkafka
# applies the settings in order, so the last of these names sets the value. A "topic." prefix
# sets a topic property for every topic.
LINGER_NAMES = ("linger.ms", "queue.buffering.max.ms")
MESSAGE_TIMEOUT_NAMES = (
    "message.timeout.ms",
    "delivery.timeout.ms",
    "topic.message.timeout.ms",
    "topic.delivery.timeout.ms",
)
# Seconds of the session gap of the order check, the default of an exported bundle.
DEFAULT_SESSION_GAP = 1800.0
# Limits of --session-gap, in the unit of the events' ts: the limits of `run`'s --session-gap in
# seconds, with the maximum counted in milliseconds, because the events' ts may be in either.
# NOTE: produce cannot tell the unit, so with ts in seconds it accepts gaps up to 1000 x 365 days.
MIN_PRODUCE_SESSION_GAP = MIN_SESSION_GAP
MAX_PRODUCE_SESSION_GAP = MAX_SESSION_GAP * 1000.0
# Minimum --rate in events per second: one event per MAX_TIMEOUT_SECONDS, the longest wait of
# this command. A lower rate waits longer between two events than any timeout here, and a
# subnormal rate such as 1e-320 puts the second event at infinity, so the run never ends.
MIN_RATE = 1.0 / MAX_TIMEOUT_SECONDS
# librdkafka settings that a flag of `produce` sets, with that flag. --flush-timeout sets
# message.timeout.ms too, but -X message.timeout.ms may replace it unless both are given
# (`stream.commands.produce`), because only -X can set 0, no limit.
FLAG_KAFKA_SETTINGS = {"bootstrap.servers": "--brokers"}


# Maximum seconds of one `list_topics` call while `check_broker` waits for the broker, which is
# how late a signal is handled during that wait.
BROKER_WAIT_SLICE_SECONDS = 0.5

# Maximum seconds an interrupted run waits for its queued messages before it exits.
INTERRUPT_FLUSH_SECONDS = 10.0
# Seconds of one wait for deliveries at the end of a run, between two checks for a stop request.
FLUSH_STEP_SECONDS = 0.2


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
    session_gap: the worker's session gap, in the unit of the events' `ts`. The report counts
        the events that the worker receives this much behind their partition's watermark.
    flag_texts: the texts of the float flags as the user typed them, by flag, which the error
        messages quote (see `hiertcn.command_line.StoreFloat`).
    """

    brokers: str
    topic: str
    rate: float | None = None
    limit: int | None = None
    overrides: Mapping[str, str] = field(default_factory=dict)
    connect_timeout: float = 10.0
    flush_timeout: float = 60.0
    session_gap: float = DEFAULT_SESSION_GAP
    flag_texts: Mapping[str, str] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not self.brokers:
            raise ConfigError("no brokers given: pass --brokers HOST:PORT")
        if not self.topic:
            raise ConfigError("no topic given: pass --topic NAME")
        check_topic_name(self.topic, "--topic")
        if self.rate is not None and not (math.isfinite(self.rate) and self.rate >= MIN_RATE):
            raise ConfigError(
                f"--rate {self._typed('--rate', self.rate)} is invalid: use at least "
                f"{format_number(MIN_RATE)} events per second (one event per "
                f"{MAX_TIMEOUT_SECONDS:.0f} s), or leave --rate out to publish as fast as possible"
            )
        if self.limit is not None and self.limit < 0:
            raise ConfigError(f"--limit {self.limit} is invalid: use an integer >= 0")
        self._check_timeout("--connect-timeout", self.connect_timeout)
        self._check_timeout("--flush-timeout", self.flush_timeout)
        gap = self.session_gap
        if not (math.isfinite(gap) and MIN_PRODUCE_SESSION_GAP <= gap <= MAX_PRODUCE_SESSION_GAP):
            raise ConfigError(
                f"--session-gap {self._typed('--session-gap', gap)} is invalid: use a value from "
                f"{MIN_PRODUCE_SESSION_GAP:g} to {MAX_PRODUCE_SESSION_GAP:.0f} in the unit of "
                "the events' ts (the maximum is 365 days in milliseconds)"
            )
        check_flag_settings(self.overrides, FLAG_KAFKA_SETTINGS, {})
        check_linger_below_message_timeout(self.producer_settings(), self.overrides)

    def _typed(self, flag: str, value: float) -> str:
        """Return the number of `flag` as the user typed it, for a message."""
        return format_flag_number(value, flag, self.flag_texts)

    def _check_timeout(self, flag: str, seconds: float) -> None:
        """Raise `ConfigError` unless `seconds` is a finite timeout that librdkafka can take."""
        if not (math.isfinite(seconds) and MIN_TIMEOUT_SECONDS <= seconds <= MAX_TIMEOUT_SECONDS):
            raise ConfigError(
                f"{flag} {self._typed(flag, seconds)} is invalid: use a number of seconds from "
                f"{MIN_TIMEOUT_SECONDS:g} to {MAX_TIMEOUT_SECONDS:.0f}"
            )

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


def check_linger_below_message_timeout(
    settings: Mapping[str, Any],
    overrides: Mapping[str, str],
    timeout_flag: str | None = "--flush-timeout",
    env_names: Mapping[str, str] | None = None,
) -> None:
    """Raise `ConfigError` unless message.timeout.ms is 0 (no limit) or above linger.ms.

    librdkafka rejects any other producer when linger.ms was set, and both producers of this
    package always set it. The Producer constructor would then raise. The rule is in
    `rd_kafka_conf_finalize` (src/rdkafka_conf.c), checked with librdkafka 2.16.

    `overrides` are the -X settings, and `timeout_flag` is the flag or environment variable that
    sets the default message timeout (None: neither does, so the fix names the -X setting).
    `env_names` maps the keys of `overrides` that environment variables set to those variables.
    A value that is not a number is left for librdkafka to reject.
    """
    env_names = env_names or {}
    linger_name, linger = last_setting(settings, LINGER_NAMES)
    timeout_name, timeout = last_setting(settings, MESSAGE_TIMEOUT_NAMES)
    try:
        linger_ms = float(str(linger).strip())
        timeout_ms = float(str(timeout).strip())
    except ValueError:
        return
    if timeout_ms == 0 or timeout_ms > linger_ms:
        return
    linger_option = setting_source(linger_name, env_names)
    timeout_option = setting_source(timeout_name, env_names)
    if linger_name in overrides:
        linger_source = f"{linger_option}={linger}"
    else:
        linger_source = f"{linger_name}={linger} (the default of this command)"
    if timeout_name in overrides:
        timeout_source = f"{timeout_option}={timeout}"
        fix = f"lower {linger_option} or raise {timeout_option} above {linger_ms:g} ms"
    elif timeout_flag is not None:
        timeout_setting = format_setting(timeout_flag, f"{timeout_ms / 1000:g}")
        timeout_source = f"{timeout_ms:g} ms from {timeout_setting}"
        fix = f"lower {linger_option} or raise {timeout_flag} above {linger_ms / 1000:g} s"
    else:
        timeout_source = f"{timeout_name}={timeout}, the default of this command"
        fix = (
            f"lower {linger_option} below {timeout_ms:g} ms, or raise -X {timeout_name} above "
            f"{linger_ms:g} ms"
        )
    raise ConfigError(
        f"{linger_source} is not below the message timeout ({timeout_source}), and librdkafka "
        f"requires message.timeout.ms above linger.ms (or 0 for no limit): {fix}"
    )


def last_setting(settings: Mapping[str, Any], names: tuple[str, ...]) -> tuple[str, Any]:
    """Return the name and value of the last of `names` in `settings`, in insertion order."""
    found = [(name, value) for name, value in settings.items() if name in names]
    return found[-1]


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
    # Delivered events older than the newest earlier event time of their partition minus the
    # session gap, so the worker's timers may close their users' sessions before them.
    late: int = 0
    # Where the last produced record is in the file, e.g. "line 7" (None before the first).
    last_location: str | None = None
    # Messages still queued, not delivered, when an interrupted run stopped waiting.
    queued: int = 0


def user_key(fields: Mapping[str, Any]) -> bytes | None:
    """Return the Kafka key of an event map: its user id as UTF-8, or None when unusable."""
    user = fields.get("user")
    if isinstance(user, bool) or not isinstance(user, (str, int)):
        return None
    return str(user).encode("utf-8")


def event_time(fields: Mapping[str, Any]) -> float | None:
    """Return the `ts` of an event map as a float, or None when it is not a finite number."""
    ts = fields.get("ts")
    if isinstance(ts, bool) or not isinstance(ts, (int, float)) or not math.isfinite(ts):
        return None
    return float(ts)


def check_broker(producer: Producer, config: ProduceConfig) -> None:
    """Raise `ProduceError` unless the broker returns metadata within the connect timeout.

    `list_topics` blocks in librdkafka, where Python runs no signal handler, so the wait is cut
    into slices of at most `BROKER_WAIT_SLICE_SECONDS`: SIGINT and SIGTERM stop it after the
    current slice.
    """
    logger.info(
        "waiting up to %g s for broker %s (--connect-timeout)",
        config.connect_timeout,
        config.brokers,
    )
    deadline = time.monotonic() + config.connect_timeout
    while True:
        slice_end = min(time.monotonic() + BROKER_WAIT_SLICE_SECONDS, deadline)
        try:
            producer.list_topics(timeout=max(0.0, slice_end - time.monotonic()))
            return
        except KafkaException as error:
            if time.monotonic() >= deadline:
                raise ProduceError(
                    f"broker {config.brokers} did not respond within "
                    f"{config.connect_timeout:g} s "
                    f"({error.args[0].str() if error.args else error}): check --brokers and "
                    "that the broker runs"
                ) from None
        # A request that failed before its slice ended waits out the slice, so that the loop
        # does not send metadata requests back to back.
        time.sleep(max(0.0, slice_end - time.monotonic()))


def create_producer(settings: dict[str, Any], overrides: Iterable[str] = ()) -> Producer:
    """Create the librdkafka producer; an invalid -X setting raises `ConfigError`.

    `overrides` are the keys given with -X, which the error names as the user typed them.
    """
    try:
        return Producer(settings)
    except KafkaException as error:
        kafka_error = error.args[0] if error.args else None
        if not isinstance(kafka_error, KafkaError) or kafka_error.code() != KafkaError._INVALID_ARG:
            raise
        raise ConfigError(describe_invalid_setting(kafka_error.str(), overrides)) from error


class EventProducer:
    """Publishes event maps with delivery reports, at an optional fixed rate."""

    def __init__(self, config: ProduceConfig, producer: Producer | None = None) -> None:
        self.config = config
        self.report = ProduceReport()
        settings = {**config.producer_settings(), "error_cb": self._on_error}
        if producer is None:
            producer = create_producer(settings, config.overrides)
        self.producer = producer
        # The newest event time delivered to each partition. The idempotent producer delivers
        # the messages of one partition in produce order, so this is what the worker reads.
        self._watermarks: dict[int, float] = {}
        # The stop signal of the run in progress, checked between records.
        self._stop = StopRequest()

    def _on_error(self, error: KafkaError) -> None:
        # Connection failures repeat every few milliseconds while the broker is down.
        errors = self.report.client_errors
        errors[error.name()] = errors.get(error.name(), 0) + 1
        if errors[error.name()] <= 3:
            logger.warning("Kafka client error: %s", error)

    def _on_delivery(self, error: KafkaError | None, message: Message, ts: float | None) -> None:
        if error is None:
            self.report.delivered += 1
            if ts is not None:
                self._check_order(message.partition(), ts)
            return
        self.report.failed += 1
        self.report.errors[error.name()] = self.report.errors.get(error.name(), 0) + 1
        if self.report.failed <= 10:
            logger.error(
                "delivery to %s[%s] failed: %s", message.topic(), message.partition(), error
            )

    def _check_order(self, partition: int, ts: float) -> None:
        watermark = self._watermarks.get(partition, -math.inf)
        if ts < watermark - self.config.session_gap:
            self.report.late += 1
        self._watermarks[partition] = max(watermark, ts)

    def _send(self, key: bytes | None, value: bytes, ts: float | None) -> bool:
        """Produce one message; return False when a stop request came while the local queue
        was full, and the message was not produced."""

        def on_delivery(error: KafkaError | None, message: Message) -> None:
            self._on_delivery(error, message, ts)

        while True:
            try:
                self.producer.produce(
                    self.config.topic, value=value, key=key, on_delivery=on_delivery
                )
                return True
            except BufferError:
                # The local queue is full: serve delivery reports until there is room.
                if self._stop.signum is not None:
                    return False
                self.producer.poll(0.1)

    def run(self, records: Iterable[Record]) -> ProduceReport:
        """Publish the records, flush, and return the counts.

        A SIGTERM or SIGINT while it publishes stops it after the record in hand, and its
        delivery reports are counted whole (`stop_requests`). It then waits at most
        `INTERRUPT_FLUSH_SECONDS` for the queued messages, counts those still queued in
        `report.queued`, and raises `Terminated` or KeyboardInterrupt, as
        `sigterm_as_interrupt` would, so `report` contains the counts of the stopped run.
        """
        check_broker(self.producer, self.config)
        started = time.perf_counter()
        try:
            with stop_requests() as self._stop:
                self._publish(records, started)
                remaining = self._flush_unless_stopped(self.config.flush_timeout)
            self._stop.raise_interrupt()
        except KeyboardInterrupt:
            wait = min(self.config.flush_timeout, INTERRUPT_FLUSH_SECONDS)
            logger.info("interrupted: waiting up to %g s for %d queued messages", wait, len(self))
            self.report.queued = self.producer.flush(wait)
            self.report.seconds = time.perf_counter() - started
            raise
        self.report.seconds = time.perf_counter() - started
        if remaining:
            raise ProduceError(
                f"{remaining} of {self.report.produced} messages were not delivered within "
                f"{self.config.flush_timeout:g} s: check the broker and the topic "
                f"{self.config.topic}"
            )
        return self.report

    def _flush_unless_stopped(self, timeout: float) -> int:
        """Wait up to `timeout` seconds for the queued messages, in steps of
        `FLUSH_STEP_SECONDS`, and stop waiting at a stop request; return those still queued."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            remaining = self.producer.flush(max(0.0, min(left, FLUSH_STEP_SECONDS)))
            if not remaining or left <= FLUSH_STEP_SECONDS or self._stop.signum is not None:
                return remaining

    def __len__(self) -> int:
        """Return the messages queued in the producer, not yet delivered or failed."""
        return len(self.producer)

    def _publish(self, records: Iterable[Record], started: float) -> None:
        """Produce each readable record, at the configured rate, up to the limit."""
        last_progress = started
        for record in records:
            if self._stop.signum is not None:
                return
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
                    if self._stop.signum is not None:
                        return
                    self.producer.poll(min(delay, 0.1))
            fields = record.fields
            if not self._send(user_key(fields), encode_fields(fields), event_time(fields)):
                return
            self.report.produced += 1
            self.report.last_location = record.location
            self.producer.poll(0)
            now = time.perf_counter()
            if now - last_progress >= _PROGRESS_SECONDS:
                last_progress = now
                logger.info(
                    "produced %d events, %d delivered", self.report.produced, self.report.delivered
                )
