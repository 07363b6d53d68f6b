"""Partitions added to the input topic while a pool runs are assigned and read, and the pool's
gauges show the topic's partition count, the bundle version and the state store's size."""

from __future__ import annotations

import json
import re
import signal
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import msgpack
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewPartitions

from ops.prometheus.run import free_port
from tests.integration.fixtures_stream import (
    START_TS,
    WorkerRun,
    item_id,
    make_topics,
    read_topic,
    start_worker,
    stream_bundle,  # noqa: F401 - pytest fixture
    worker_runs,  # noqa: F401 - pytest fixture
)

PARTITIONS_BEFORE = 2
PARTITIONS_AFTER = 4
EVENTS_PER_PARTITION = 5
# Milliseconds between the consumers' metadata refreshes in this test (60000 by default).
REFRESH_MS = 1000
# Seconds from adding the partitions until their events must have outputs: the refresh, a
# cooperative rebalance and the batch, with room for a slow shared machine.
NEW_PARTITION_BOUND_S = 45.0


def metrics_text(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        return response.read().decode()


def metric_value(text: str, name: str, labels: str = "") -> float | None:
    """Return the value of the series `name{labels}` in a /metrics text, or None."""
    pattern = rf"^{re.escape(name)}{re.escape(labels)} ([0-9.e+-]+)$"
    match = re.search(pattern, text, re.MULTILINE)
    return float(match.group(1)) if match else None


def wait_for_metric(
    run: WorkerRun, port: int, name: str, expected: float, labels: str = "", timeout_s: float = 30
) -> None:
    deadline = time.monotonic() + timeout_s
    value = None
    while time.monotonic() < deadline:
        assert run.process.poll() is None, run.log()
        try:
            value = metric_value(metrics_text(port), name, labels)
        except urllib.error.URLError:
            value = None  # the pool has not bound its metrics port yet
        if value == expected:
            return
        time.sleep(0.3)
    raise AssertionError(f"{name}{labels} is {value}, not {expected}, after {timeout_s} s")


def produce_to_partitions(bootstrap: str, topic: str, partitions: range) -> list[str]:
    """Produce EVENTS_PER_PARTITION events of one new user to each partition; return the ids."""
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
    event_ids = []
    for partition in partitions:
        user = f"p{partition}-user"
        for number in range(EVENTS_PER_PARTITION):
            event_id = f"p{partition}-e{number}"
            event = {
                "user": user,
                "item": item_id(number),
                "ts": START_TS + 10 * number,
                "event_id": event_id,
            }
            producer.produce(topic, msgpack.packb(event), user.encode(), partition=partition)
            event_ids.append(event_id)
    assert producer.flush(30) == 0
    return event_ids


def test_added_partitions_assigned_and_read(
    kafka_bootstrap: str,
    unique_topic: Callable[[str], str],
    stream_bundle: Path,  # noqa: F811
    worker_runs: list[WorkerRun],  # noqa: F811
    tmp_path: Path,
) -> None:
    topics = make_topics(kafka_bootstrap, unique_topic, partitions=PARTITIONS_BEFORE)
    port = free_port()
    run = start_worker(
        kafka_bootstrap,
        stream_bundle,
        topics,
        tmp_path / "state",
        tmp_path / "worker.log",
        [
            "--processes",
            "2",
            "--metrics-port",
            str(port),
            "-X",
            f"topic.metadata.refresh.interval.ms={REFRESH_MS}",
        ],
    )
    worker_runs.append(run)
    wait_for_metric(run, port, "hiertcn_partitions_assigned", PARTITIONS_BEFORE, timeout_s=60)
    wait_for_metric(run, port, "hiertcn_input_partitions", PARTITIONS_BEFORE)
    version = json.loads((stream_bundle / "manifest.json").read_text())["version"]
    wait_for_metric(run, port, "hiertcn_bundle_info", 1, f'{{version="{version}"}}')

    old_ids = produce_to_partitions(kafka_bootstrap, topics.input, range(PARTITIONS_BEFORE))
    before = read_topic(kafka_bootstrap, topics.output, len(old_ids))
    assert {o.value["event_id"] for o in before} == set(old_ids), run.log()

    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    futures = admin.create_partitions([NewPartitions(topics.input, PARTITIONS_AFTER)])
    futures[topics.input].result(timeout=30)
    added = time.monotonic()
    new_ids = produce_to_partitions(
        kafka_bootstrap, topics.input, range(PARTITIONS_BEFORE, PARTITIONS_AFTER)
    )

    outputs = read_topic(
        kafka_bootstrap, topics.output, len(old_ids) + len(new_ids), NEW_PARTITION_BOUND_S
    )
    waited = time.monotonic() - added
    produced = {o.value["event_id"] for o in outputs}
    assert set(new_ids) <= produced, f"no outputs within {NEW_PARTITION_BOUND_S} s\n{run.log()}"
    assert waited < NEW_PARTITION_BOUND_S
    wait_for_metric(run, port, "hiertcn_partitions_assigned", PARTITIONS_AFTER)
    wait_for_metric(run, port, "hiertcn_input_partitions", PARTITIONS_AFTER)
    # One user per partition; the gauge is read every 5 s.
    wait_for_metric(run, port, "hiertcn_state_users", PARTITIONS_AFTER)
    text = metrics_text(port)
    assert metric_value(text, "hiertcn_state_map_size_bytes") > 0
    assert metric_value(text, "hiertcn_state_map_used_bytes") > 0

    run.signal(signal.SIGTERM)
    assert run.wait() == 0, run.log()
