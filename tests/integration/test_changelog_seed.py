"""`hiertcn-stream changelog seed` on a real broker: a pool that ran without a changelog hands
its partitions to a new host through a seeded changelog topic.

Host A serves the first part of the stream without `--changelog-topic` and stops. `seed` copies
its state directory into a new changelog topic. Host B, with a new state directory, the same
consumer group and the changelog, restores every partition and serves the rest. Every event must
get exactly one output, equal to replay's output for the whole stream in one run.
"""

from __future__ import annotations

import logging
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient

from stream.cli import main
from tests.integration.fixtures_stream import (
    WorkerRun,
    assert_same_recommendation,
    make_events,
    make_topics,
    output_watcher,
    outputs_by_user,
    produce_events,
    read_topic,
    replay_outputs,
    start_worker,
    stream_bundle,  # noqa: F401 - pytest fixture
    wait_for_log,
    wait_for_messages,
    worker_runs,  # noqa: F401 - pytest fixture
)

EVENTS = 400
USERS = 24
PARTITIONS = 3
# Host A serves the events before this index, host B the rest.
SPLIT = 240


def _stop(run: WorkerRun) -> None:
    run.signal(signal.SIGTERM)
    assert run.wait() == 0, run.log()


def test_seeded_changelog_hands_over_without_repeats(
    kafka_bootstrap: str,
    unique_topic: Callable[[str], str],
    stream_bundle: Path,  # noqa: F811
    worker_runs: list[WorkerRun],  # noqa: F811
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    events = make_events(users=USERS, count=EVENTS, seed=11)
    topics = make_topics(kafka_bootstrap, unique_topic, PARTITIONS)
    changelog = unique_topic("changelog")
    host_a = tmp_path / "host-a" / "state"
    seed = ["changelog", "seed", "--brokers", kafka_bootstrap, "--state-dir", str(host_a)]
    seed += ["--input-topic", topics.input, "--group-id", topics.group]
    seed += ["--changelog-topic", changelog, "--create-topics"]
    batches = ["--max-batch-size", "16"]
    users_a = len({event["user"] for event in events[:SPLIT]})

    with output_watcher(kafka_bootstrap, topics.output, PARTITIONS) as watcher:
        produce_events(kafka_bootstrap, topics.input, events[:SPLIT])
        run_a = start_worker(
            kafka_bootstrap, stream_bundle, topics, host_a, tmp_path / "a.log", batches
        )
        worker_runs.append(run_a)
        wait_for_messages(watcher, SPLIT, timeout_s=120)
        _stop(run_a)

        assert main([*seed, "--dry-run"]) == 0
        dry_run = capsys.readouterr().out
        admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
        assert changelog not in admin.list_topics(timeout=10).topics, "--dry-run created it"
        assert main(seed) == 0
        report = capsys.readouterr().out

        produce_events(kafka_bootstrap, topics.input, events[SPLIT:])
        extra = ["--changelog-topic", changelog, *batches]
        run_b = start_worker(
            kafka_bootstrap, stream_bundle, topics, tmp_path / "host-b", tmp_path / "b.log", extra
        )
        worker_runs.append(run_b)
        wait_for_messages(watcher, EVENTS - SPLIT, timeout_s=120)
        _stop(run_b)

    expected = f"{users_a} user states and {PARTITIONS} partition positions"
    assert f"would produce {expected}" in dry_run
    assert f"produced {expected}" in report
    assert "skipped 0 records" in report
    log_b = run_b.log()
    for partition in range(PARTITIONS):
        assert f"restored {topics.input}[{partition}]@" in log_b, log_b

    outputs = read_topic(kafka_bootstrap, topics.output, EVENTS, timeout_s=30, settle_s=1.0)
    event_ids = [output.value["event_id"] for output in outputs]
    assert len(event_ids) == len(set(event_ids)), "an event got more than one output"
    assert len(outputs) == EVENTS, log_b
    expected_by_user: dict[str, list[dict]] = {}
    for output in replay_outputs(stream_bundle, events):
        expected_by_user.setdefault(output["user"], []).append(output)
    produced_by_user = outputs_by_user(outputs)
    assert produced_by_user.keys() == expected_by_user.keys()
    for user, expected_outputs in expected_by_user.items():
        produced = [output.value for output in produced_by_user[user]]
        assert [o["event_id"] for o in produced] == [o["event_id"] for o in expected_outputs]
        for worker_output, replay_output in zip(produced, expected_outputs, strict=True):
            assert_same_recommendation(worker_output, replay_output)

    # Host B has processed every partition beyond host A's positions since the seed.
    assert main(seed) == 2
    error = capsys.readouterr().err
    assert f"is behind consumer group {topics.group} on every partition that it has a" in error


def _delete_topic(bootstrap: str, topic: str) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.delete_topics([topic])[topic].result(30)
    deadline = time.monotonic() + 30
    while topic in admin.list_topics(timeout=10).topics:
        assert time.monotonic() < deadline, f"topic {topic} still listed 30 s after its deletion"
        time.sleep(0.2)


def test_lost_changelog_seeded_from_every_host(
    kafka_bootstrap: str,
    unique_topic: Callable[[str], str],
    stream_bundle: Path,  # noqa: F811
    worker_runs: list[WorkerRun],  # noqa: F811
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    events = make_events(users=USERS, count=EVENTS, seed=13)
    # Host A serves the first part alone. Then A and B serve the second part side by side, each
    # with some partitions. After the changelog topic is lost, a seed from each of A and B
    # recovers it, and host C restores from it and serves the rest.
    first, second = 160, 300
    topics = make_topics(kafka_bootstrap, unique_topic, PARTITIONS)
    changelog = unique_topic("changelog")
    hosts = {name: tmp_path / f"host-{name}" / "state" for name in "abc"}
    extra = ["--changelog-topic", changelog, "--max-batch-size", "16", "--processes", "1"]

    def start(name: str, log_name: str, *more: str) -> WorkerRun:
        log_path = tmp_path / log_name
        run = start_worker(
            kafka_bootstrap, stream_bundle, topics, hosts[name], log_path, [*extra, *more]
        )
        worker_runs.append(run)
        return run

    with output_watcher(kafka_bootstrap, topics.output, PARTITIONS) as watcher:
        produce_events(kafka_bootstrap, topics.input, events[:first])
        run_a = start("a", "a1.log", "--create-topics", "--partitions", str(PARTITIONS))
        wait_for_messages(watcher, first, timeout_s=120)
        run_b = start("b", "b.log")
        wait_for_log(run_b, f"assigned {topics.input}[")
        produce_events(kafka_bootstrap, topics.input, events[first:second])
        wait_for_messages(watcher, second - first, timeout_s=120)
        for run in (run_a, run_b):
            run.signal(signal.SIGTERM)
        for run in (run_a, run_b):
            assert run.wait() == 0, run.log()

        _delete_topic(kafka_bootstrap, changelog)
        seed = ["changelog", "seed", "--brokers", kafka_bootstrap, "--changelog-topic", changelog]
        seed += ["--input-topic", topics.input, "--group-id", topics.group, "--create-topics"]
        reports, warnings = [], []
        for name in "ab":
            caplog.clear()
            with caplog.at_level(logging.WARNING, logger="stream.commands.changelog"):
                assert main([*seed, "--state-dir", str(hosts[name])]) == 0
            reports.append(capsys.readouterr().out)
            warnings.append(" ".join(r.getMessage() for r in caplog.records))

        produce_events(kafka_bootstrap, topics.input, events[second:])
        run_c = start("c", "c.log")
        wait_for_messages(watcher, EVENTS - second, timeout_s=120)
        run_c.signal(signal.SIGTERM)
        assert run_c.wait() == 0, run_c.log()

    # B processed its partitions of the second part, so A's copies of them are behind.
    assert "is behind the consumer group's committed offset" in warnings[0], warnings
    assert "seed from that host's state directory too" in warnings[0]
    positions = [
        int(report.split(" partition position")[0].rsplit(" ", 1)[1]) for report in reports
    ]
    assert positions[0] < PARTITIONS, reports
    assert sum(positions) >= PARTITIONS, reports
    log_c = run_c.log()
    for partition in range(PARTITIONS):
        assert f"restored {topics.input}[{partition}]@" in log_c, log_c
    assert "but group" not in log_c, log_c

    # Every user's state came from one of the two seeds, so C's outputs equal one replay.
    outputs = read_topic(kafka_bootstrap, topics.output, EVENTS, timeout_s=30, settle_s=1.0)
    event_ids = [output.value["event_id"] for output in outputs]
    assert len(event_ids) == len(set(event_ids)), "an event got more than one output"
    assert len(outputs) == EVENTS
    expected_by_user: dict[str, list[dict]] = {}
    for output in replay_outputs(stream_bundle, events):
        expected_by_user.setdefault(output["user"], []).append(output)
    produced_by_user = outputs_by_user(outputs)
    for user, expected_outputs in expected_by_user.items():
        produced = [output.value for output in produced_by_user[user]]
        for worker_output, replay_output in zip(produced, expected_outputs, strict=True):
            assert_same_recommendation(worker_output, replay_output)
