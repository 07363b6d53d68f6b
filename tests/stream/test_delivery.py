"""Delivery waits and retries of `stream.delivery.Deliverer`, with a producer fake.

The integration tests deliver to a real broker; these cover the failure paths that a healthy
broker does not show.
"""

from __future__ import annotations

from typing import Any

import pytest
from confluent_kafka import KafkaError

from stream.delivery import Deliverer, DeliveryConfig, DeliveryError, OutputRecord


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


def test_wait_gives_up_after_the_configured_attempts() -> None:
    producer = FakeProducer(failures=100)
    deliverer, _latencies, _retries = make_deliverer(producer)
    records = [record()]
    deliverer.produce(records)

    with pytest.raises(DeliveryError, match=r"1 messages not delivered to 127\.0\.0\.1:1"):
        deliverer.wait(records)

    assert len(producer.produced) == 3


def test_wait_never_reproduces_unreported_record() -> None:
    producer = FakeProducer(silent=True)
    deliverer, _latencies, _retries = make_deliverer(producer)
    records = [record()]
    deliverer.produce(records)

    with pytest.raises(DeliveryError, match="after 3 waits"):
        deliverer.wait(records)

    # A record without a delivery report may still arrive, so it is never produced twice.
    assert len(producer.produced) == 1
