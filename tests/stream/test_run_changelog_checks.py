"""The start checks of `run` on the changelog topic, without a broker.

They cover the fix that a wrong partition count names, the warning for an empty changelog beside
a store with users, and the settings of a changelog topic that `--create-topics` creates.

tests/integration/test_changelog_handover.py runs the checks against a broker.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from stream.changelog import CHANGELOG_TOPIC_CONFIG, create_command
from stream.changelog_topic import (
    ChangelogStart,
    describe_partition_mismatch,
    warn_unseeded_changelog,
)
from stream.config import WorkerConfig

CHANGELOG = "interactions.changelog"


def config_of(tmp_path: Path) -> WorkerConfig:
    return WorkerConfig(
        brokers="kafka:9092",
        bundle=Path("bundle"),
        state_dir=tmp_path / "state",
        changelog_topic=CHANGELOG,
    )


def test_more_partitions_asks_to_recreate(tmp_path: Path) -> None:
    message = describe_partition_mismatch(config_of(tmp_path), 8, 6, "compact")

    assert message.startswith(
        f"changelog topic {CHANGELOG} has 8 partitions, but input topic interactions has 6:"
    )
    assert "--alter" not in message
    assert "A topic cannot lose partitions, so stop every host of the group, delete the topic" in (
        message
    )
    assert create_command("kafka:9092", CHANGELOG, 6) in message
    assert "Then seed it from the state directory of every host" in message
    assert "probably created it" not in message


def test_fewer_partitions_asks_to_add(tmp_path: Path) -> None:
    message = describe_partition_mismatch(config_of(tmp_path), 3, 6, "compact,delete")

    assert message.endswith(
        f"Add partitions with kafka-topics.sh --bootstrap-server kafka:9092 --alter --topic "
        f"{CHANGELOG} --partitions 6"
    )
    assert "delete the topic" not in message


def test_auto_created_topic_named(tmp_path: Path) -> None:
    # What the broker creates when a worker produces to a deleted changelog topic.
    message = describe_partition_mismatch(config_of(tmp_path), 1, 6, "delete")

    assert f"changelog topic {CHANGELOG} has 1 partition, but input topic" in message
    assert "1 partitions" not in message
    assert (
        "With cleanup.policy=delete and one partition, the broker probably created it on "
        "first use (auto.create.topics.enable=true)"
    ) in message
    assert "so it contains no user states." in message
    assert "Its cleanup.policy=delete lacks compact too, so stop every host" in message
    assert "delete the topic and create it again" in message
    assert "A topic cannot lose partitions" not in message
    assert "--alter" not in message


def test_create_command_shows_topic_settings() -> None:
    command = create_command("kafka:9092", CHANGELOG, 6)

    assert command == (
        f"kafka-topics.sh --bootstrap-server kafka:9092 --create --topic {CHANGELOG} "
        "--partitions 6 --config cleanup.policy=compact --config segment.ms=3600000 "
        "--config min.cleanable.dirty.ratio=0.1"
    )
    assert CHANGELOG_TOPIC_CONFIG["cleanup.policy"] == "compact"


def test_empty_changelog_with_users_warned(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = config_of(tmp_path)

    with caplog.at_level(logging.WARNING, logger="stream.changelog_topic"):
        warn_unseeded_changelog(config, ChangelogStart(created=True, empty=True), 30_731)

    (line,) = [record.getMessage() for record in caplog.records]
    state_dir = config.state_dir.resolve()
    assert line.startswith(
        f"changelog topic {CHANGELOG} was created just now, but state store {state_dir} "
        "contains 30731 users: a host that restores a partition from this changelog misses "
        "every one of them."
    )
    assert (
        f"`hiertcn-stream changelog seed --brokers kafka:9092 --state-dir {state_dir} "
        f"--changelog-topic {CHANGELOG}`"
    ) in line


def test_existing_empty_changelog_warned(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="stream.changelog_topic"):
        warn_unseeded_changelog(config_of(tmp_path), ChangelogStart(created=False, empty=True), 1)

    (line,) = [record.getMessage() for record in caplog.records]
    assert f"changelog topic {CHANGELOG} contains no record, but state store " in line
    assert "contains 1 user: " in line


def test_empty_store_not_warned(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="stream.changelog_topic"):
        warn_unseeded_changelog(config_of(tmp_path), ChangelogStart(created=True, empty=True), 0)

    assert caplog.records == []


def test_run_counts_store_users_for_warning(
    onnx_bundle_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from statestore import StateStore, StoreConfig
    from stream.cli import main
    from stream.commands import run as run_command
    from tests.statestore.helpers import make_state

    state_dir = tmp_path / "state"
    args = ["run", "--brokers", "127.0.0.1:1", "--bundle", str(onnx_bundle_dir)]
    args += ["--state-dir", str(state_dir), "--metrics-port", "0", "--changelog-topic", CHANGELOG]
    monkeypatch.setattr(run_command, "run_pool", lambda config, level: 0)
    empty = ChangelogStart(created=False, empty=True)
    monkeypatch.setattr(run_command, "check_topics", lambda config: empty)
    assert main(args) == 0  # creates the store, which contains no user yet
    with StateStore(StoreConfig(path=state_dir, sync=False)) as store:
        store.commit({"u1": make_state(1), "u2": make_state(2)}, {})

    with caplog.at_level(logging.WARNING, logger="stream.changelog_topic"):
        assert main(args) == 0

    warnings = [r.getMessage() for r in caplog.records if r.name == "stream.changelog_topic"]
    assert len(warnings) == 1
    assert f"state store {state_dir.resolve()} contains 2 users" in warnings[0]
