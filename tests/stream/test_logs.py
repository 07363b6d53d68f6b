"""The two rate limits of log lines: the filter on librdkafka's lines, and the counting log."""

from __future__ import annotations

import logging

import pytest

from stream.logs import INTERVAL_SECONDS, RateLimitedLog, RateLimitFilter, librdkafka_logger


def record() -> logging.LogRecord:
    return logging.LogRecord("kafka", logging.WARNING, __file__, 1, "broker down", None, None)


def test_filter_passes_limit_per_interval(monkeypatch) -> None:
    now = [100.0]
    monkeypatch.setattr("stream.logs.time.monotonic", lambda: now[0])
    rate_limit = RateLimitFilter(limit=2, interval=10.0)

    first = [rate_limit.filter(record()) for _ in range(4)]
    now[0] += 10.0
    later = rate_limit.filter(record())

    assert first == [True, True, False, False]
    assert later is True


def test_logger_gets_one_filter_however_often_requested() -> None:
    name = "tests.stream.librdkafka"

    librdkafka_logger(name)
    log = librdkafka_logger(name)

    filters = [item for item in log.filters if isinstance(item, RateLimitFilter)]
    assert len(filters) == 1
    assert filters[0].interval == INTERVAL_SECONDS


def test_rate_limited_log_uses_given_logger(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    log = RateLimitedLog(
        "retries", "code", 1, 10.0, lambda: now[0], logger=logging.getLogger("tests.caller")
    )

    with caplog.at_level("WARNING"):
        log.add("E1", "retry %d", 1)
        log.add("E1", "retry %d", 2)
        now[0] = 10.0
        log.flush()

    assert [(r.name, r.getMessage()) for r in caplog.records] == [
        ("tests.caller", "retry 1"),
        (
            "tests.caller",
            "logged 1 retries with code E1: further ones are counted in one line every 10 s",
        ),
        ("tests.caller", "1 more retries in the last 10 s, by code: E1 1"),
    ]


def test_rate_limited_log_counts_of_one_singular(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    log = RateLimitedLog("late events", "partition", 1, 10.0, lambda: now[0], singular="late event")

    with caplog.at_level("WARNING"):
        log.add("0", "late %d", 1)
        log.add("0", "late %d", 2)
        now[0] = 10.0
        log.flush()
        log.add("0", "late %d", 3)
        log.add("0", "late %d", 4)
        now[0] = 20.0
        log.flush()

    messages = [record.getMessage() for record in caplog.records]
    assert messages[1].startswith("logged 1 late event with partition 0:")
    assert messages[2] == "1 more late event in the last 10 s, by partition: 0 1"
    assert messages[3] == "2 more late events in the last 10 s, by partition: 0 2"
