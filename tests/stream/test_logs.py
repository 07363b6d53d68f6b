"""The rate limit on librdkafka's log lines."""

from __future__ import annotations

import logging

from stream.logs import INTERVAL_SECONDS, RateLimitFilter, librdkafka_logger


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
