"""A broker outage longer than the delivery wait stops the pool, and a restart loses no event.

The drill of ops/README.md ("Broker outages") with a short wait: the pool runs with
`--delivery-timeout 1 --delivery-attempts 3`, so a worker gives its outputs 3 s. The test stops
its own broker while the pool works through a backlog and checks that the pool exits with status
1 and names the undelivered messages. It then starts the broker again on the same data and port,
restarts the pool on the same state directory and checks that every event got an output.
"""

from __future__ import annotations

import re
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import msgpack
import pytest
from confluent_kafka import Consumer, TopicPartition

from ops.kafka.broker import BrokerConfig, LocalBroker
from stream.worker import FAILED_CLOSE_SECONDS
from tests.integration.fixtures_stream import (
    Topics,
    WorkerRun,
    make_events,
    make_topics,
    output_watcher,
    produce_events,
    start_worker,
    stream_bundle,  # noqa: F401 - pytest fixture
    wait_for_messages,
    worker_runs,  # noqa: F401 - pytest fixture
)

EVENTS = 12000
USERS = 300
PARTITIONS = 4
DELIVERY_TIMEOUT = 1.0  # seconds
DELIVERY_ATTEMPTS = 3
DELIVERY_WAIT = DELIVERY_TIMEOUT * DELIVERY_ATTEMPTS
# Small batches keep the pool busy with the backlog for several seconds after STOP_AFTER.
BATCH = 8
# The broker stops once this many outputs are out, with most of the backlog still to do.
STOP_AFTER = 300
# Seconds that the pool's exit may take beyond the delivery wait and the worker's consumer close,
# for the pool's 1 s watch interval, the process exits and a busy 2-core machine. The bound
# stays well below the 65 s that the default delivery settings take.
EXIT_SLACK_S = 20.0
EXIT_BOUND_S = DELIVERY_WAIT + FAILED_CLOSE_SECONDS + EXIT_SLACK_S
WORKER_FLAGS = [
    "--processes",
    "1",
    "--max-batch-size",
    str(BATCH),
    "--delivery-timeout",
    f"{DELIVERY_TIMEOUT:g}",
    "--delivery-attempts",
    str(DELIVERY_ATTEMPTS),
    # The broker's minimum session timeout, so that the group drops the member that the failed
    # worker left behind in 6 s instead of 45 s.
    "-X",
    "session.timeout.ms=6000",
]
UNDELIVERED = re.compile(r"(\d+) messages not delivered to (\S+) within [\d.]+ s")


@pytest.fixture
def private_broker(tmp_path: Path) -> Iterator[LocalBroker]:
    """A broker of this test alone, stopped with its data deleted at the end, even on failure."""
    broker = LocalBroker(BrokerConfig(state_dir=tmp_path / "kafka"))
    broker.fetch()
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


def collect_event_ids(
    consumer: Consumer, until: Callable[[dict[str, int]], bool], timeout_s: float
) -> dict[str, int]:
    """Count the outputs of each event id until `until(counts)` is true or `timeout_s` passes."""
    counts: dict[str, int] = {}
    deadline = time.monotonic() + timeout_s
    while not until(counts) and time.monotonic() < deadline:
        for message in consumer.consume(num_messages=1000, timeout=0.1):
            assert message.error() is None, f"consumer error: {message.error()}"
            event_id = msgpack.unpackb(message.value())["event_id"]
            counts[event_id] = counts.get(event_id, 0) + 1
    return counts


def message_count(bootstrap: str, topic: str) -> int:
    """Return the number of messages in `topic`, from the partitions' watermark offsets."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"count-{topic}"})
    try:
        total = 0
        for partition in range(PARTITIONS):
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)
            total += high - low
        return total
    finally:
        consumer.close()


def stop_broker_mid_backlog(broker: LocalBroker, run: WorkerRun, topics: Topics) -> float:
    """Stop `broker`, keeping its data, once the pool has published STOP_AFTER outputs.

    Returns the monotonic time at which the broker process had exited.
    """
    with output_watcher(broker.bootstrap, topics.output, PARTITIONS) as watcher:
        wait_for_messages(watcher, STOP_AFTER, timeout_s=60)
    assert run.process.poll() is None, f"the pool exited before the outage:\n{run.log()}"
    broker.stop(keep_data=True)
    return time.monotonic()


def test_outage_stops_pool_restart_loses_nothing(
    private_broker: LocalBroker,
    stream_bundle: Path,  # noqa: F811
    worker_runs: list[WorkerRun],  # noqa: F811
    tmp_path: Path,
    record_property: Callable[[str, object], None],
) -> None:
    bootstrap = private_broker.bootstrap
    events = make_events(users=USERS, count=EVENTS, seed=11)
    topics = make_topics(bootstrap, lambda base: f"{base}-outage", PARTITIONS)
    produce_events(bootstrap, topics.input, events)
    state_dir = tmp_path / "state"

    # 1. The broker stops while the pool works through the backlog: the pool exits with 1.
    first = start_worker(
        bootstrap, stream_bundle, topics, state_dir, tmp_path / "first.log", WORKER_FLAGS
    )
    worker_runs.append(first)
    stopped_at = stop_broker_mid_backlog(private_broker, first, topics)
    try:
        code = first.wait(EXIT_BOUND_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the pool still runs {EXIT_BOUND_S:g} s after the outage:\n{first.log()}")
    exit_seconds = time.monotonic() - stopped_at
    record_property("outage_exit_seconds", round(exit_seconds, 1))
    log = first.log()
    assert code == 1, log
    undelivered = UNDELIVERED.search(log)
    assert undelivered is not None, log
    assert int(undelivered.group(1)) >= 1
    assert undelivered.group(2) == bootstrap
    assert f"at most {DELIVERY_WAIT:g} s)" in log
    assert re.search(r"pool exits with 1: worker 0 \(pid \d+\) failed with exit code 1", log), log

    # 2. The broker comes back on its data and port; the pool resumes from its stored offsets.
    assert private_broker.start() == bootstrap, "the broker came back on another port"
    assert message_count(bootstrap, topics.output) < EVENTS, "the backlog was done before the stop"
    second = start_worker(
        bootstrap, stream_bundle, topics, state_dir, tmp_path / "second.log", WORKER_FLAGS
    )
    worker_runs.append(second)
    expected = {event["event_id"] for event in events}
    with output_watcher(bootstrap, topics.output, PARTITIONS) as watcher:
        counts = collect_event_ids(watcher, lambda seen: seen.keys() >= expected, timeout_s=120)
    second.signal(signal.SIGTERM)
    assert second.wait(60) == 0, second.log()

    missing = sorted(expected - counts.keys())
    assert missing == [], f"{len(missing)} events without an output, e.g. {missing[:5]}"
    assert counts.keys() == expected, "outputs of unknown event ids"
    assert message_count(bootstrap, topics.dead_letter) == 0
    duplicates = sum(counts.values()) - len(counts)
    record_property("outage_duplicates", duplicates)
    print(f"pool exited {exit_seconds:.1f} s after the broker stop; {duplicates} duplicates")
