"""Worker parts that need no broker: Kafka settings and dead letters.

The integration tests in tests/integration/test_worker_*.py run the whole worker on a broker.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from stream.config import WorkerConfig
from stream.events import DeadLetter
from stream.metrics import create_metrics
from stream.worker import (
    DEAD_LETTERS_LOGGED_PER_REASON,
    DeadLetterLog,
    Worker,
    consumer_settings,
    producer_settings,
)


class FakeProducer:
    """Accepts produce calls and reports every delivery as done on flush or poll."""

    def __init__(self) -> None:
        self.produced: list[tuple[str, bytes | None]] = []

    def produce(self, topic: str, value: Any, key: Any, headers: Any, on_delivery: Any) -> None:
        self.produced.append((topic, value))
        on_delivery(None, None)

    def flush(self, timeout: float) -> int:
        return 0

    def poll(self, timeout: float) -> int:
        return 0


def make_worker(producer: FakeProducer, **settings: Any) -> Worker:
    config = WorkerConfig(
        brokers="127.0.0.1:1",
        bundle=Path("bundle"),
        **settings,
    )
    pipeline = SimpleNamespace(config=SimpleNamespace(session_gap=600.0, top_k=10))
    metrics = create_metrics(CollectorRegistry())
    return Worker(config, pipeline, None, metrics, None, producer, {})  # type: ignore[arg-type]


def test_consumer_settings_disable_auto_commit() -> None:
    config = WorkerConfig(
        brokers="b:9092", bundle=Path("x"), kafka_settings={"security.protocol": "SSL"}
    )

    settings = consumer_settings(config)

    assert settings["enable.auto.commit"] is False
    assert settings["enable.auto.offset.store"] is False
    assert settings["auto.offset.reset"] == "earliest"
    assert settings["partition.assignment.strategy"] == "cooperative-sticky"
    assert settings["security.protocol"] == "SSL"
    assert producer_settings(config)["security.protocol"] == "SSL"
    assert producer_settings(config)["enable.idempotence"] is True


def test_dead_letter_headers_name_reason_and_source() -> None:
    worker = make_worker(FakeProducer())
    letter = DeadLetter(b"u1", b"\xc1", "invalid_msgpack", "not msgpack", "in[2]@7")

    (dead,) = worker._dead_letter_records([letter])

    headers = dict(dead.headers)
    assert dead.topic == "interactions.dlq"
    assert headers["hiertcn.reason"] == b"invalid_msgpack"
    assert headers["hiertcn.error"] == b"not msgpack"
    assert headers["hiertcn.source"] == b"in[2]@7"
    assert dead.value == b"\xc1"
    assert "hiertcn.truncated" not in headers


def test_dead_letter_too_large_is_truncated() -> None:
    worker = make_worker(FakeProducer(), kafka_settings={"message.max.bytes": "100000"})
    value = b"x" * 200_000
    letter = DeadLetter(b"u1", value, "message_too_large", "too large", "in[0]@1")

    (dead,) = worker._dead_letter_records([letter])

    headers = dict(dead.headers)
    assert headers["hiertcn.truncated"] == b"200002"
    assert len(dead.key) + len(dead.value) <= 100_000
    assert value.startswith(dead.value)


def test_live_cutoffs_stop_at_k() -> None:
    from stream.worker import live_cutoffs

    assert live_cutoffs(20) == [1, 5, 10, 20]
    assert live_cutoffs(7) == [1, 5, 7]
    assert live_cutoffs(50) == [1, 5, 10, 20, 50]


def _junk(offset: int, reason: str = "invalid_msgpack") -> DeadLetter:
    return DeadLetter(b"u1", b"\xc1", reason, "not msgpack", f"in[0]@{offset}")


def _dead_letter_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "stream.worker"]


def test_dead_letter_flood_logs_first_few(caplog: pytest.LogCaptureFixture) -> None:
    worker = make_worker(FakeProducer())
    letters = [_junk(offset) for offset in range(20_000)]

    with caplog.at_level("WARNING", logger="stream.worker"):
        records = worker._dead_letter_records(letters)

    assert len(records) == 20_000
    counted = worker.metrics.dead_letters.labels("invalid_msgpack")._value.get()
    assert counted == 20_000
    lines = _dead_letter_lines(caplog)
    assert len(lines) == DEAD_LETTERS_LOGGED_PER_REASON + 1
    assert "further ones are counted" in lines[-1]


def test_dead_letter_summary_counts_by_reason(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    log = DeadLetterLog(per_reason=1, interval=10.0, clock=lambda: now[0])
    with caplog.at_level("WARNING", logger="stream.worker"):
        for offset in range(30):
            log.add(_junk(offset))
        for offset in range(3):
            log.add(_junk(offset, "missing_user"))
        log.flush()
        assert not any("more dead letters" in line for line in _dead_letter_lines(caplog))
        now[0] = 12.0
        log.flush()
        log.flush()

    summaries = [line for line in _dead_letter_lines(caplog) if "more dead letters" in line]
    assert summaries == [
        "31 more dead letters in the last 12 s, by reason: invalid_msgpack 29, missing_user 2"
    ]


def test_dead_letter_keeps_original_headers_first() -> None:
    worker = make_worker(FakeProducer())
    original = (("trace-id", b"abc"), ("empty", None))
    letter = DeadLetter(b"u1", b"\xc1", "invalid_msgpack", "not msgpack", "in[2]@7", original)

    (dead,) = worker._dead_letter_records([letter])

    assert dead.headers[:2] == list(original)
    assert dict(dead.headers)["hiertcn.reason"] == b"invalid_msgpack"


def test_dead_letter_replaces_oversized_original_headers() -> None:
    worker = make_worker(FakeProducer())
    original = (("big", b"x" * 10_000),)
    letter = DeadLetter(b"u1", b"\xc1", "invalid_msgpack", "not msgpack", "in[2]@7", original)

    (dead,) = worker._dead_letter_records([letter])

    headers = dict(dead.headers)
    assert "big" not in headers
    assert headers["hiertcn.headers_dropped"] == b"10003"
