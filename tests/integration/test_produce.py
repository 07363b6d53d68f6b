"""`hiertcn-stream produce` against the real broker: every event arrives, keyed by user, in
per-user order."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import msgpack
import pytest
from confluent_kafka import Consumer

from ops.kafka.admin import create_topics
from stream.cli import main


def consume_all(bootstrap: str, topic: str, count: int, timeout_s: float = 30.0) -> list:
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"{topic}-reader",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([topic])
    messages = []
    try:
        for _ in range(int(timeout_s / 0.5)):
            message = consumer.poll(0.5)
            if message is None:
                if len(messages) >= count:
                    break
                continue
            assert message.error() is None, message.error()
            messages.append(message)
    finally:
        consumer.close()
    return messages


def test_produce_publishes_event_log(
    kafka_bootstrap: str,
    unique_topic: Callable[[str], str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    topic = unique_topic("interactions")
    create_topics(kafka_bootstrap, [topic], partitions=3)
    events = [{"user": f"u{n % 5}", "item": n, "ts": 1_700_000_000.0 + n} for n in range(40)]
    path = tmp_path / "events.jsonl"
    path.write_text("".join(json.dumps(event) + "\n" for event in events))

    code = main(["produce", "--events", str(path), "--brokers", kafka_bootstrap, "--topic", topic])

    assert code == 0
    assert "produced 40, delivered 40, failed 0" in capsys.readouterr().out
    messages = consume_all(kafka_bootstrap, topic, len(events))
    assert len(messages) == len(events)
    by_user: dict[str, list[int]] = {}
    partitions: dict[str, set[int]] = {}
    for message in messages:
        value = msgpack.unpackb(message.value())
        assert message.key() == value["user"].encode()
        by_user.setdefault(value["user"], []).append(value["item"])
        partitions.setdefault(value["user"], set()).add(message.partition())
    for user, items in by_user.items():
        assert items == [event["item"] for event in events if event["user"] == user]
        assert len(partitions[user]) == 1


def test_produce_limit_and_rate(
    kafka_bootstrap: str, unique_topic: Callable[[str], str], tmp_path: Path, capsys
) -> None:
    topic = unique_topic("interactions")
    create_topics(kafka_bootstrap, [topic], partitions=1)
    path = tmp_path / "events.jsonl"
    path.write_text(
        "".join(json.dumps({"user": "u", "item": n, "ts": n}) + "\n" for n in range(50))
    )

    code = main(
        [
            "produce",
            "--events",
            str(path),
            "--brokers",
            kafka_bootstrap,
            "--topic",
            topic,
            "--limit",
            "10",
            "--rate",
            "200",
        ]
    )

    assert code == 0
    assert "produced 10, delivered 10" in capsys.readouterr().out
    assert len(consume_all(kafka_bootstrap, topic, 10, timeout_s=10.0)) == 10
