"""Partitions that move between two hosts of one consumer group, through the changelog topic.

Each "host" is a `hiertcn-stream run` pool with a state directory of its own. Host A serves the
first part of the stream and stops. Host B restores every partition from the changelog and
serves the second part. Then A starts again on its old state directory, restores what B changed
and serves the rest. Every event must get exactly one output, equal to replay's output for the
whole stream in one run. The start checks of the changelog topic run against the same broker.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic, ResourceType

from ops.kafka.admin import wait_for_leaders
from stream.changelog import CHANGELOG_TOPIC_CONFIG, ChangelogError
from stream.changelog_topic import ChangelogStart
from stream.cli import main
from stream.commands.run import check_topics
from stream.config import WorkerConfig
from tests.integration.fixtures_stream import (
    Topics,
    WorkerRun,
    assert_same_recommendation,
    make_events,
    make_topics,
    output_watcher,
    outputs_by_user,
    produce_events,
    produce_raw,
    read_topic,
    replay_outputs,
    start_worker,
    stream_bundle,  # noqa: F401 - pytest fixture
    wait_for_messages,
    worker_runs,  # noqa: F401 - pytest fixture
)

EVENTS = 600
USERS = 30
PARTITIONS = 3
# The events that each phase produces and serves: host A, host B, host A again.
PHASE_ENDS = (240, 420, EVENTS)


def _serve_phase(
    bootstrap: str,
    bundle: Path,
    topics: Topics,
    state_dir: Path,
    log_path: Path,
    watcher: object,
    events: list[dict],
    extra: list[str],
    runs: list[WorkerRun],
) -> str:
    """Produce `events`, run one host until their outputs are out, stop it; return its log."""
    produce_events(bootstrap, topics.input, events)
    run = start_worker(bootstrap, bundle, topics, state_dir, log_path, extra)
    runs.append(run)
    wait_for_messages(watcher, len(events), timeout_s=120)  # type: ignore[arg-type]
    run.signal(signal.SIGTERM)
    assert run.wait() == 0, run.log()
    return run.log()


def _topic_config(bootstrap: str, topic: str) -> tuple[int, dict[str, str]]:
    """Return the partition count of `topic` and the values of the settings that
    `--create-topics` gives a changelog topic.

    It reads them once, with no wait: `--create-topics` returns only once the new topic's
    partitions have leaders, and a start right after it must find the topic complete.
    """
    admin = AdminClient({"bootstrap.servers": bootstrap})
    # Metadata of every topic, because a request that names a missing topic makes a broker
    # with auto.create.topics.enable create it with one partition.
    partitions = len(admin.list_topics(timeout=10).topics[topic].partitions)
    resource = ConfigResource(ResourceType.TOPIC, topic)
    entries = admin.describe_configs([resource])[resource].result(10)
    return partitions, {name: entries[name].value for name in CHANGELOG_TOPIC_CONFIG}


def test_partitions_move_between_hosts_without_repeats(
    kafka_bootstrap: str,
    unique_topic: Callable[[str], str],
    stream_bundle: Path,  # noqa: F811
    worker_runs: list[WorkerRun],  # noqa: F811
    tmp_path: Path,
) -> None:
    events = make_events(users=USERS, count=EVENTS, seed=5)
    topics = make_topics(kafka_bootstrap, unique_topic, PARTITIONS)
    changelog = unique_topic("changelog")
    # --create-topics creates the changelog topic at the first start.
    extra = ["--changelog-topic", changelog, "--create-topics", "--partitions", str(PARTITIONS)]
    extra += ["--max-batch-size", "16"]
    hosts = [tmp_path / "host-a", tmp_path / "host-b", tmp_path / "host-a"]
    logs = []

    with output_watcher(kafka_bootstrap, topics.output, PARTITIONS) as watcher:
        start = 0
        for phase, (host, end) in enumerate(zip(hosts, PHASE_ENDS, strict=True)):
            log = _serve_phase(
                kafka_bootstrap,
                stream_bundle,
                topics,
                host / "state",
                tmp_path / f"phase{phase}.log",
                watcher,
                events[start:end],
                extra,
                worker_runs,
            )
            logs.append(log)
            start = end

    assert _topic_config(kafka_bootstrap, changelog) == (PARTITIONS, CHANGELOG_TOPIC_CONFIG)
    # B starts with an empty store, A again with the positions of its first phase.
    assert logs[1].count(f"from changelog {changelog}: no stored position") == PARTITIONS, logs[1]
    assert logs[2].count("is behind the committed offset") == PARTITIONS, logs[2]
    for log in logs[1:]:
        for partition in range(PARTITIONS):
            assert f"restored {topics.input}[{partition}]@" in log, log

    outputs = read_topic(kafka_bootstrap, topics.output, EVENTS, timeout_s=30, settle_s=1.0)
    event_ids = [output.value["event_id"] for output in outputs]
    assert len(event_ids) == len(set(event_ids)), "an event got more than one output"
    assert len(outputs) == EVENTS, "\n".join(logs)

    expected_by_user: dict[str, list[dict]] = {}
    for output in replay_outputs(stream_bundle, events):
        expected_by_user.setdefault(output["user"], []).append(output)
    produced_by_user = outputs_by_user(outputs)
    assert produced_by_user.keys() == expected_by_user.keys()
    for user, expected in expected_by_user.items():
        produced = [output.value for output in produced_by_user[user]]
        assert [o["event_id"] for o in produced] == [o["event_id"] for o in expected], user
        for worker_output, replay_output in zip(produced, expected, strict=True):
            assert_same_recommendation(worker_output, replay_output)


def _create_topic(bootstrap: str, topic: str, partitions: int, policy: str) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    new_topic = NewTopic(topic, partitions, 1, config={"cleanup.policy": policy})
    admin.create_topics([new_topic])[topic].result(30)
    # The metadata that `run` reads lists a new topic only once its partitions have leaders.
    wait_for_leaders(admin, [topic], 30)


def test_changelog_with_other_partition_count_exits_2(
    kafka_bootstrap: str,
    unique_topic: Callable[[str], str],
    stream_bundle: Path,  # noqa: F811
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    topics = make_topics(kafka_bootstrap, unique_topic, PARTITIONS)
    changelog = unique_topic("changelog")
    _create_topic(kafka_bootstrap, changelog, PARTITIONS - 1, "compact")
    args = ["run", "--brokers", kafka_bootstrap, "--bundle", str(stream_bundle)]
    args += ["--input-topic", topics.input, "--output-topic", topics.output]
    args += ["--dead-letter-topic", topics.dead_letter, "--changelog-topic", changelog]

    code = main([*args, "--state-dir", str(tmp_path / "state"), "--metrics-port", "0"])

    error = capsys.readouterr().err
    assert code == 2
    assert f"changelog topic {changelog} has 2 partitions, but input topic" in error
    assert f"--alter --topic {changelog} --partitions 3" in error
    assert not (tmp_path / "state").exists()


def test_changelog_without_compaction_rejected(
    kafka_bootstrap: str, unique_topic: Callable[[str], str]
) -> None:
    topics = make_topics(kafka_bootstrap, unique_topic, PARTITIONS)
    changelog = unique_topic("changelog")
    _create_topic(kafka_bootstrap, changelog, PARTITIONS, "delete")
    config = _changelog_config(topics, changelog, kafka_bootstrap)

    with pytest.raises(ChangelogError) as raised:
        check_topics(config)

    message = str(raised.value)
    assert raised.value.exit_code == 2
    assert f"changelog topic {changelog} has cleanup.policy=delete, without compact" in message
    assert f"--entity-name {changelog} --add-config cleanup.policy=compact" in message


def test_missing_changelog_names_create_command(
    kafka_bootstrap: str, unique_topic: Callable[[str], str]
) -> None:
    topics = make_topics(kafka_bootstrap, unique_topic, PARTITIONS)
    changelog = unique_topic("changelog")
    config = _changelog_config(topics, changelog, kafka_bootstrap)

    with pytest.raises(ChangelogError) as raised:
        check_topics(config)

    message = str(raised.value)
    assert f"changelog topic {changelog} does not exist" in message
    command = f"--topic {changelog} --partitions {PARTITIONS} --config cleanup.policy=compact"
    assert command in message


def _changelog_config(
    topics: Topics, changelog: str, bootstrap: str, **kwargs: object
) -> WorkerConfig:
    return WorkerConfig(
        brokers=bootstrap,
        bundle=Path("bundle"),
        input_topic=topics.input,
        output_topic=topics.output,
        dead_letter_topic=topics.dead_letter,
        changelog_topic=changelog,
        **kwargs,  # type: ignore[arg-type]
    )


def test_auto_created_changelog_named(
    kafka_bootstrap: str, unique_topic: Callable[[str], str]
) -> None:
    # What a broker with auto.create.topics.enable=true creates when a worker produces to a
    # deleted changelog topic.
    topics = make_topics(kafka_bootstrap, unique_topic, PARTITIONS)
    changelog = unique_topic("changelog")
    _create_topic(kafka_bootstrap, changelog, 1, "delete")

    with pytest.raises(ChangelogError) as raised:
        check_topics(_changelog_config(topics, changelog, kafka_bootstrap))

    message = str(raised.value)
    assert f"changelog topic {changelog} has 1 partition, but input topic" in message
    assert "the broker probably created it on first use" in message
    assert "delete the topic and create it again" in message
    assert "--alter" not in message


def test_start_check_finds_empty_changelog(
    kafka_bootstrap: str, unique_topic: Callable[[str], str]
) -> None:
    topics = make_topics(kafka_bootstrap, unique_topic, PARTITIONS)
    changelog = unique_topic("changelog")
    create = _changelog_config(
        topics, changelog, kafka_bootstrap, create_topics=True, partitions=PARTITIONS
    )
    check = _changelog_config(topics, changelog, kafka_bootstrap)

    assert check_topics(create) == ChangelogStart(created=True, empty=True)
    assert _topic_config(kafka_bootstrap, changelog) == (PARTITIONS, CHANGELOG_TOPIC_CONFIG)
    assert check_topics(check) == ChangelogStart(created=False, empty=True)
    produce_raw(kafka_bootstrap, changelog, [(b"ux", b"")])
    assert check_topics(check) == ChangelogStart(created=False, empty=False)
