"""Delivery waits and retries of `stream.delivery.Deliverer`, with a producer fake.

The integration tests deliver to a real broker; these cover the failure paths that a healthy
broker does not show.
"""

from __future__ import annotations

import logging
import socket
import time
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException, Producer

from stream.delivery import (
    Deliverer,
    DeliveryConfig,
    DeliveryError,
    OutputRecord,
    describe_targets,
)


class FakeProducer:
    """Records produced messages; the first `failures` deliveries fail, and a `silent` producer
    never reports. Reports are served by `poll`, as librdkafka does."""

    def __init__(self, failures: int = 0, silent: bool = False) -> None:
        self.failures = failures
        self.silent = silent
        self.produced: list[bytes | None] = []
        self._reports: list[tuple[Any, KafkaError | None]] = []

    def produce(self, topic: str, value: Any, key: Any, headers: Any, on_delivery: Any) -> None:
        self.produced.append(value)
        if self.silent:
            return
        error = None
        if self.failures > 0:
            self.failures -= 1
            error = KafkaError(KafkaError._MSG_TIMED_OUT)
        self._reports.append((on_delivery, error))

    def poll(self, timeout: float) -> int:
        reports, self._reports = self._reports, []
        for callback, error in reports:
            callback(error, None)
        return len(reports)


def make_deliverer(producer: FakeProducer) -> tuple[Deliverer, list[float], list[int]]:
    latencies: list[float] = []
    retries: list[int] = []
    config = DeliveryConfig("127.0.0.1:1", timeout=0.05, attempts=3)
    return Deliverer(producer, config, latencies.append, retries.append), latencies, retries


def record(value: bytes = b"v", append_ts: float | None = None) -> OutputRecord:
    return OutputRecord(topic="out", key=b"u1", value=value, headers=[], append_ts=append_ts)


def test_wait_returns_when_every_record_is_acknowledged() -> None:
    producer = FakeProducer()
    deliverer, latencies, retries = make_deliverer(producer)
    records = [record(b"a", append_ts=1.0), record(b"b")]

    deliverer.produce(records)
    deliverer.wait(records)

    assert all(r.delivered for r in records)
    assert len(latencies) == 1  # only the record with an input time has a latency
    assert retries == []


def test_wait_produces_a_failed_record_again() -> None:
    producer = FakeProducer(failures=1)
    deliverer, _latencies, retries = make_deliverer(producer)
    records = [record(b"a"), record(b"b")]

    deliverer.produce(records)
    deliverer.wait(records)

    assert all(r.delivered for r in records)
    assert producer.produced == [b"a", b"b", b"a"]
    assert retries == [1]


def test_recovery_after_failed_try_logged(caplog: pytest.LogCaptureFixture) -> None:
    producer = FakeProducer(failures=2)
    deliverer, _latencies, _retries = make_deliverer(producer)
    records = [record(b"a"), record(b"b")]
    deliverer.produce(records)

    with caplog.at_level(logging.INFO, logger="stream.delivery"):
        deliverer.wait(records)

    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    recoveries = [r for r in caplog.records if r.levelno == logging.INFO]
    assert len(warnings) == 1
    assert warnings[0].getMessage().startswith("delivery wait 1: 2 messages failed (")
    (recovery,) = recoveries
    message = recovery.getMessage()
    assert message.startswith(
        "delivery wait 1 recovered: all 2 messages delivered (2 of them produced again) by "
    )
    assert "attempt 2/3" in message
    assert message.endswith(": out x2")


def test_wait_numbers_match_warnings_and_recovery(caplog: pytest.LogCaptureFixture) -> None:
    producer = FakeProducer(failures=1)
    deliverer, _latencies, _retries = make_deliverer(producer)
    first, second = [record(b"a")], [record(b"b"), record(b"c")]

    with caplog.at_level(logging.INFO, logger="stream.delivery"):
        deliverer.produce(first)
        deliverer.wait(first)
        producer.failures = 1
        deliverer.produce(second)
        deliverer.wait(second)

    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 4
    assert messages[0].startswith("delivery wait 1: 1 messages failed (")
    assert messages[1].startswith("delivery wait 1 recovered: all 1 messages delivered (1 of them")
    assert messages[2].startswith("delivery wait 2: 1 messages failed (")
    assert messages[3].startswith("delivery wait 2 recovered: all 2 messages delivered (1 of them")


def test_first_try_success_logs_nothing(caplog: pytest.LogCaptureFixture) -> None:
    deliverer, _latencies, _retries = make_deliverer(FakeProducer())
    records = [record()]
    deliverer.produce(records)

    with caplog.at_level(logging.DEBUG, logger="stream.delivery"):
        deliverer.wait(records)

    assert caplog.records == []


def test_wait_gives_up_after_the_configured_attempts() -> None:
    producer = FakeProducer(failures=100)
    deliverer, _latencies, _retries = make_deliverer(producer)
    records = [record()]
    deliverer.produce(records)

    started = time.monotonic()
    with pytest.raises(DeliveryError, match=r"1 messages not delivered to 127\.0\.0\.1:1") as error:
        deliverer.wait(records)

    assert len(producer.produced) == 3
    # Tries start `timeout` apart, so errors reported at once do not use up the tries early.
    assert time.monotonic() - started >= 2 * 0.05
    # The pool restarts no single worker, so the fix is a restart of the pool.
    assert str(error.value).endswith("then restart the pool")


def test_wait_never_reproduces_unreported_record() -> None:
    producer = FakeProducer(silent=True)
    deliverer, _latencies, _retries = make_deliverer(producer)
    records = [record()]
    deliverer.produce(records)

    with pytest.raises(DeliveryError, match=r"within 0\.[12] s \(1 of 3 tries, at most 0\.15 s\)"):
        deliverer.wait(records)

    # A record without a delivery report may still arrive, so it is never produced twice.
    assert len(producer.produced) == 1


def test_targets_name_topics_and_partitions() -> None:
    records = [
        OutputRecord("interactions.changelog", b"k", b"v", [], partition=3),
        OutputRecord("recommendations", b"k", b"v", []),
        OutputRecord("interactions.changelog", b"k", b"v", [], partition=0),
        OutputRecord("interactions.changelog", b"k", b"v", [], partition=3),
    ]

    assert describe_targets(records) == "interactions.changelog[0, 3] x3, recommendations x1"


class PartitionFailingProducer:
    """Reports every message to partition 2 as failed with _UNKNOWN_PARTITION, the rest as
    delivered."""

    def __init__(self) -> None:
        self._reports: list[tuple[Any, KafkaError | None]] = []

    def produce(
        self, topic: str, value: Any, key: Any, headers: Any, on_delivery: Any, **target: Any
    ) -> None:
        failed = target.get("partition") == 2
        error = KafkaError(KafkaError._UNKNOWN_PARTITION) if failed else None
        self._reports.append((on_delivery, error))

    def poll(self, timeout: float) -> int:
        reports, self._reports = self._reports, []
        for callback, error in reports:
            callback(error, None)
        return len(reports)


def test_failure_names_undelivered_topics(caplog: pytest.LogCaptureFixture) -> None:
    config = DeliveryConfig("127.0.0.1:1", timeout=0.01, attempts=2)
    deliverer = Deliverer(PartitionFailingProducer(), config, lambda s: None, lambda n: None)
    records = [
        OutputRecord("recommendations", b"u1", b"v", []),
        OutputRecord("interactions.changelog", b"uu1", b"s", [], partition=2, deferred=True),
    ]
    deliverer.produce(records)

    with caplog.at_level("WARNING", logger="stream.delivery"), pytest.raises(DeliveryError) as e:
        deliverer.wait(records)

    assert "messages not delivered to 127.0.0.1:1 within" in str(e.value)
    assert "s): interactions.changelog[2] x1. Check that the broker is up" in str(e.value)
    tries = [r.getMessage() for r in caplog.records]
    assert len(tries) == 2
    assert all(line.endswith("Undelivered: interactions.changelog[2] x1") for line in tries)


class RejectingProducer:
    """Raises what librdkafka raises for a partition that its metadata lacks."""

    def produce(self, topic: str, **kwargs: Any) -> None:
        raise KafkaException(KafkaError(KafkaError._UNKNOWN_PARTITION))


def test_rejected_message_names_its_partition() -> None:
    config = DeliveryConfig("127.0.0.1:1", timeout=0.01, attempts=2)
    deliverer = Deliverer(RejectingProducer(), config, lambda s: None, lambda n: None)
    records = [OutputRecord("interactions.changelog", b"uu1", b"s", [], partition=4)]

    with pytest.raises(DeliveryError) as raised:
        deliverer.produce(records)

    message = str(raised.value)
    assert message.startswith("producing a message to interactions.changelog[4] failed: ")
    assert "_UNKNOWN_PARTITION" in message
    assert "topic interactions.changelog exists with partition 4, then restart" in message


def test_message_above_size_limit_named() -> None:
    # librdkafka rejects the message in produce(), before it connects to the broker.
    producer = Producer(
        {"bootstrap.servers": "127.0.0.1:1", "message.max.bytes": 1000, "log_level": 0}
    )
    config = DeliveryConfig("127.0.0.1:1", timeout=0.01, attempts=2)
    deliverer = Deliverer(producer, config, lambda s: None, lambda n: None)
    headers = [("hiertcn.worker", b"123")]
    records = [OutputRecord("recommendations", b"user", b"v" * 2000, headers)]

    with pytest.raises(DeliveryError) as raised:
        deliverer.produce(records)

    message = str(raised.value)
    assert message.startswith("producing a message to recommendations failed: ")
    assert "key of 4 bytes, value of 2000 bytes and headers of 17 bytes" in message
    assert "exceed the producer's message.max.bytes" in message
    assert "lower --k" in message
    assert "exists" not in message


class LateTimeoutProducer:
    """Reports every delivery as _MSG_TIMED_OUT `delay` seconds after its produce, as
    librdkafka does when the broker is down: its report comes just after delivery.timeout.ms."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.produced = 0
        self._reports: list[tuple[float, Any]] = []

    def produce(self, topic: str, value: Any, key: Any, headers: Any, on_delivery: Any) -> None:
        self.produced += 1
        self._reports.append((time.monotonic() + self.delay, on_delivery))

    def poll(self, timeout: float) -> int:
        time.sleep(min(timeout, 0.005))
        now = time.monotonic()
        due = [callback for at, callback in self._reports if at <= now]
        self._reports = [(at, callback) for at, callback in self._reports if at > now]
        for callback in due:
            callback(KafkaError(KafkaError._MSG_TIMED_OUT), None)
        return len(due)


def test_timeout_report_counts_as_one_try() -> None:
    # Each report comes 5 ms after the timeout of its try. A wait that counted the pickup of
    # such a report as a try of its own gave up after about half of timeout * attempts.
    producer = LateTimeoutProducer(delay=0.105)
    retries: list[int] = []
    config = DeliveryConfig("127.0.0.1:1", timeout=0.1, attempts=4)
    deliverer = Deliverer(producer, config, lambda seconds: None, retries.append)
    records = [record()]
    deliverer.produce(records)

    started = time.monotonic()
    with pytest.raises(DeliveryError) as raised:
        deliverer.wait(records)
    elapsed = time.monotonic() - started

    assert elapsed >= 0.4
    assert elapsed < 0.6
    assert producer.produced == 4
    assert retries == [1, 1, 1]
    assert "within 0.4 s (4 of 4 tries, at most 0.4 s)" in str(raised.value)


def closed_port() -> int:
    """Return a port of 127.0.0.1 that no socket listens on (free when this returns)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_unreachable_broker_is_tolerated_for_max_wait() -> None:
    # A real librdkafka producer whose broker port is closed, as the worker sets it up:
    # delivery.timeout.ms equals the delivery timeout, so each try ends with _MSG_TIMED_OUT.
    brokers = f"127.0.0.1:{closed_port()}"
    config = DeliveryConfig(brokers, timeout=1.0, attempts=3)
    producer = Producer(
        {
            "bootstrap.servers": brokers,
            "enable.idempotence": True,
            "acks": "all",
            "delivery.timeout.ms": int(config.timeout * 1000),
            "linger.ms": 1,
            "error_cb": lambda error: None,
            "log_level": 0,
        }
    )
    retries: list[int] = []
    deliverer = Deliverer(producer, config, lambda seconds: None, retries.append)
    records = [record(b"a"), record(b"b")]
    deliverer.produce(records)

    started = time.monotonic()
    with pytest.raises(DeliveryError) as raised:
        deliverer.wait(records)
    elapsed = time.monotonic() - started

    # librdkafka scans for timed-out messages about once a second, so reports come up to
    # about 1 s late and the last try may end at the deadline without a report.
    assert elapsed >= 0.9 * config.timeout * config.attempts
    assert elapsed < config.timeout * config.attempts + 1.5
    assert len(retries) >= 1
    assert f"2 messages not delivered to {brokers} within {elapsed:.0f}." in str(raised.value)
