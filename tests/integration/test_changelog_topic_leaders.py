"""Start checks right after the changelog topic's creation, on a real broker.

`--create-topics` returns only once the new topic's partitions have leaders, so a host that
starts right after it, or in the same second, finds the topic complete. A check that reads the
topic without partitions waits for their leaders instead of rejecting the topic.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from confluent_kafka.admin import AdminClient

import stream.commands.changelog as changelog_command
from stream.changelog_topic import ChangelogStart, check_changelog_topic
from stream.commands.run import check_topics
from stream.config import WorkerConfig
from stream.kafka_admin import BrokerUnavailableError, wait_for_leaders
from tests.integration.fixtures_stream import Topics, make_topics

PARTITIONS = 3
# Pairs of hosts that start at once, each pair with a changelog topic of its own.
RACES = 5


def _config(bootstrap: str, topics: Topics, changelog: str, create: bool) -> WorkerConfig:
    return WorkerConfig(
        brokers=bootstrap,
        bundle=Path("bundle"),
        input_topic=topics.input,
        output_topic=topics.output,
        dead_letter_topic=topics.dead_letter,
        changelog_topic=changelog,
        create_topics=create,
        partitions=PARTITIONS,
    )


def _all_topics(bootstrap: str) -> Any:
    # Metadata of every topic, because a request that names a missing topic makes a broker
    # with auto.create.topics.enable create it with one partition.
    return AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=10)


def test_created_changelog_has_leaders_at_return(
    kafka_bootstrap: str, unique_topic: Callable[[str], str]
) -> None:
    topics = make_topics(kafka_bootstrap, unique_topic, PARTITIONS)
    changelog = unique_topic("changelog")

    start = check_topics(_config(kafka_bootstrap, topics, changelog, create=True))

    assert start == ChangelogStart(created=True, empty=True)
    described = _all_topics(kafka_bootstrap).topics[changelog]
    assert described.error is None
    assert sorted(described.partitions) == list(range(PARTITIONS))
    assert all(partition.leader >= 0 for partition in described.partitions.values())
    # A second host right after it passes every check, the partition count included.
    check = _config(kafka_bootstrap, topics, changelog, create=False)
    assert check_topics(check) == ChangelogStart(created=False, empty=True)


def _start_both(config: WorkerConfig) -> list[ChangelogStart | Exception]:
    """Run the start checks of two hosts at once and return what each returned or raised."""
    barrier = threading.Barrier(2)
    results: list[ChangelogStart | Exception] = []

    def start() -> None:
        barrier.wait()
        try:
            result = check_topics(config)
        except Exception as error:  # reported by the assert below
            results.append(error)
            return
        assert result is not None
        results.append(result)

    threads = [threading.Thread(target=start) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return results


def test_two_hosts_create_changelog_at_once(
    kafka_bootstrap: str, unique_topic: Callable[[str], str]
) -> None:
    topics = make_topics(kafka_bootstrap, unique_topic, PARTITIONS)

    for race in range(RACES):
        changelog = unique_topic(f"changelog{race}")
        results = _start_both(_config(kafka_bootstrap, topics, changelog, create=True))

        errors = [result for result in results if isinstance(result, Exception)]
        assert errors == [], race
        # The host that lost the race checked the topic that the other one created.
        assert sorted(results, key=repr) == [
            ChangelogStart(created=False, empty=True),
            ChangelogStart(created=True, empty=True),
        ], race


def test_changelog_listed_without_partitions_awaited(
    kafka_bootstrap: str, unique_topic: Callable[[str], str], caplog: pytest.LogCaptureFixture
) -> None:
    topics = make_topics(kafka_bootstrap, unique_topic, PARTITIONS)
    changelog = unique_topic("changelog")
    check_topics(_config(kafka_bootstrap, topics, changelog, create=True))
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    current = _all_topics(kafka_bootstrap).topics
    # Both topics as a metadata read that raced their creation can list them.
    stale = SimpleNamespace(
        topics={
            topics.input: SimpleNamespace(partitions={}, error=None),
            changelog: SimpleNamespace(partitions={}, error=None),
        }
    )
    assert len(current[changelog].partitions) == PARTITIONS

    with caplog.at_level(logging.INFO, logger="stream.kafka_admin"):
        created = check_changelog_topic(
            admin, _config(kafka_bootstrap, topics, changelog, create=False), stale
        )

    assert created is False
    waits = [
        r.getMessage() for r in caplog.records if "listed without partitions" in r.getMessage()
    ]
    assert len(waits) == 2
    assert waits[0].startswith(f"topic {topics.input} is listed without partitions or with an ")
    assert waits[1].startswith(f"topic {changelog} is listed without partitions or with an ")


def test_seed_counts_partitions_of_input_listed_without_them(
    kafka_bootstrap: str, unique_topic: Callable[[str], str], monkeypatch: pytest.MonkeyPatch
) -> None:
    topics = make_topics(kafka_bootstrap, unique_topic, PARTITIONS)
    changelog = unique_topic("changelog")
    # The input topic as a metadata read that raced its creation can list it.
    stale = SimpleNamespace(topics={topics.input: SimpleNamespace(partitions={}, error=None)})
    monkeypatch.setattr(changelog_command, "wait_for_metadata", lambda admin, brokers: stale)

    count = changelog_command.check_seed_topics(
        _config(kafka_bootstrap, topics, changelog, create=True), dry_run=True
    )

    assert count == PARTITIONS


def test_leader_wait_times_out_with_topic_named(
    kafka_bootstrap: str, unique_topic: Callable[[str], str]
) -> None:
    missing = unique_topic("never-created")
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    config = WorkerConfig(brokers=kafka_bootstrap, bundle=Path("bundle"))

    with pytest.raises(BrokerUnavailableError) as raised:
        wait_for_leaders(admin, config, {missing: PARTITIONS}, timeout=1.0)

    message = str(raised.value)
    assert raised.value.exit_code == 1
    assert f"topics on {kafka_bootstrap} still lack partition leaders after 1 s: " in message
    assert f"{missing} is not listed" in message
    assert "Check the broker logs and that every broker runs, then start again" in message
    assert missing not in _all_topics(kafka_bootstrap).topics, "the wait must not create it"
