"""`run --create-topics` against an input topic that exists with fewer partitions."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import pytest

from ops.kafka.admin import create_topics
from stream.commands.run import check_topics
from stream.config import WorkerConfig


def _config(bootstrap: str, input_topic: str, **fields: object) -> WorkerConfig:
    return WorkerConfig(
        brokers=bootstrap,
        bundle=Path("bundle"),
        input_topic=input_topic,
        output_topic=f"{input_topic}.out",
        dead_letter_topic=f"{input_topic}.dlq",
        create_topics=True,
        **fields,
    )


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        record.getMessage()
        for record in caplog.records
        if record.name == "stream.commands.run" and record.levelno == logging.WARNING
    ]


def test_existing_smaller_input_topic_warns_once(
    kafka_bootstrap: str, unique_topic: Callable[[str], str], caplog: pytest.LogCaptureFixture
) -> None:
    topic = unique_topic("small-input")
    create_topics(kafka_bootstrap, [topic], partitions=1)

    with caplog.at_level(logging.WARNING, logger="stream.commands.run"):
        check_topics(_config(kafka_bootstrap, topic, partitions=4, processes=2))

    warnings = _warnings(caplog)
    assert len(warnings) == 1
    expected = f"input topic {topic} already exists with 1 partition(s), fewer than --partitions 4"
    assert expected in warnings[0]
    assert "1 of the 2 workers (--processes 2) will get no partition and stay idle" in warnings[0]
    assert f"--alter --topic {topic} --partitions 4" in warnings[0]


def test_existing_input_topic_with_enough_partitions_is_quiet(
    kafka_bootstrap: str, unique_topic: Callable[[str], str], caplog: pytest.LogCaptureFixture
) -> None:
    topic = unique_topic("full-input")
    create_topics(kafka_bootstrap, [topic], partitions=4)

    with caplog.at_level(logging.WARNING, logger="stream.commands.run"):
        check_topics(_config(kafka_bootstrap, topic, partitions=4, processes=2))

    assert _warnings(caplog) == []
