"""The changelog topic without a broker: its records, the restore into a real LMDB store, the
reader's stop rules, and the worker's choice of the partitions to restore.

tests/integration/test_changelog_handover.py runs the handover between two hosts on a broker.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from confluent_kafka import OFFSET_BEGINNING, OFFSET_INVALID, KafkaError, TopicPartition
from prometheus_client import CollectorRegistry

from statestore import PartitionPosition, StateStore, StoreConfig, UserState
from statestore.codec import decode_state, encode_state
from statestore.keys import decode_position, encode_position, position_key
from stream.changelog import Changelog, ChangelogError, changelog_records
from stream.changelog_restore import (
    RESTORE_CONSUME_MESSAGES,
    ChangelogReader,
    ChangelogRestoreError,
    RestoreStoppedError,
    RestoreWriter,
    changelog_consumer_settings,
)
from stream.config import WorkerConfig
from stream.delivery import Deliverer, DeliveryConfig, DeliveryError, OutputRecord
from stream.errors import ConfigError
from stream.metrics import create_metrics
from stream.pipeline import Pipeline, PipelineConfig
from stream.rebalance import CommittedOffsetsError
from stream.worker import Worker
from tests.statestore.helpers import make_state
from tests.stream.fake_bundle import FakeBundle
from tests.stream.messages import ConsumedMessage, event_message, partition_eof

INPUT = "interactions"
CHANGELOG = "interactions.changelog"
GAP = 600.0
# Event times well in the past, so that the ts_in_future check accepts them.
START = time.time() - 100_000.0


def state_record(user: str, state: UserState) -> tuple[bytes, bytes]:
    return b"u" + user.encode(), encode_state(state)


def position_record(partition: int, position: PartitionPosition) -> tuple[bytes, bytes]:
    return b"p" + position_key(INPUT, partition), encode_position(position)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[StateStore]:
    opened = StateStore(StoreConfig(path=tmp_path / "state", sync=False))
    yield opened
    opened.close()


class CommitLog:
    """A state store that records every commit before it passes it on to the real store."""

    def __init__(self, store: StateStore) -> None:
        self.store = store
        self.commits: list[tuple[list[str], dict | None, list[str]]] = []

    def commit(self, states: dict, positions: dict | None, deletes: list[str]) -> None:
        self.commits.append((sorted(states), positions, list(deletes)))
        self.store.commit(states, positions, deletes)


def restore(store: Any, records: list[tuple[bytes | None, bytes | None]], chunk: int = 1000):
    writer = RestoreWriter(store, CHANGELOG, INPUT, 0, chunk_users=chunk)
    for offset, (key, value) in enumerate(records):
        writer.add(key, value, offset)
    return writer, writer.finish()


# -- records of a batch ------------------------------------------------------------------------


def test_batch_records_states_then_positions() -> None:
    states = {"u1": make_state(1, partition=2), "ü7": make_state(2, partition=0)}
    positions = {2: PartitionPosition(41, START), 0: PartitionPosition(9, float("-inf"))}

    records = changelog_records(CHANGELOG, INPUT, states, positions)

    assert [record.topic for record in records] == [CHANGELOG] * 4
    assert [record.key for record in records] == [
        b"u" + b"u1",
        b"u" + "ü7".encode(),
        b"p" + position_key(INPUT, 0),
        b"p" + position_key(INPUT, 2),
    ]
    assert [record.partition for record in records] == [2, 0, 0, 2]
    assert all(record.deferred for record in records)
    assert decode_state(records[0].value).same_as(states["u1"])
    assert decode_state(records[1].value).same_as(states["ü7"])
    assert decode_position(records[2].value) == positions[0]
    assert decode_position(records[3].value) == positions[2]
    assert all(record.append_ts is None for record in records)


def test_user_and_position_keys_differ_in_prefix() -> None:
    # A user id spelled like a position key still gets another compaction key.
    lookalike = position_key(INPUT, 0).decode("utf-8")
    (state,) = changelog_records(CHANGELOG, INPUT, {lookalike: make_state(0)}, {})
    (position,) = changelog_records(CHANGELOG, INPUT, {}, {0: PartitionPosition(1, START)})
    assert state.key != position.key


class PollingProducer:
    """Serves delivery reports on `poll`, as librdkafka does; values in `failing` always fail."""

    def __init__(self, failing: tuple[bytes, ...] = ()) -> None:
        self.failing = failing
        self.produced: list[bytes] = []
        self._reports: list[tuple[Any, KafkaError | None]] = []

    def produce(
        self, topic: str, value: bytes, key: Any, headers: Any, on_delivery: Any, **target: Any
    ) -> None:
        self.produced.append(value)
        error = KafkaError(KafkaError._MSG_TIMED_OUT) if value in self.failing else None
        self._reports.append((on_delivery, error))

    def poll(self, timeout: float) -> int:
        reports, self._reports = self._reports, []
        for callback, error in reports:
            callback(error, None)
        return len(reports)


def batch_of(output: bytes) -> list[OutputRecord]:
    (log,) = changelog_records(CHANGELOG, INPUT, {}, {0: PartitionPosition(1, START)})
    log.value = b"changelog"
    return [OutputRecord("recommendations", b"u1", output, []), log]


def test_changelog_produced_after_outputs_delivered() -> None:
    producer = PollingProducer()
    deliverer = Deliverer(producer, DeliveryConfig("b:1", 0.05, 3), lambda s: None, lambda n: None)
    records = batch_of(b"output")

    deliverer.produce(records)
    assert producer.produced == [b"output"]

    deliverer.wait(records)
    assert producer.produced == [b"output", b"changelog"]
    assert all(record.delivered for record in records)


def test_changelog_withheld_when_outputs_fail() -> None:
    producer = PollingProducer(failing=(b"output",))
    deliverer = Deliverer(producer, DeliveryConfig("b:1", 0.01, 2), lambda s: None, lambda n: None)
    records = batch_of(b"output")
    deliverer.produce(records)

    with pytest.raises(DeliveryError):
        deliverer.wait(records)

    assert producer.produced == [b"output", b"output"]
    assert not records[1].delivered


# -- restore into a real store ----------------------------------------------------------------


def test_restore_later_record_wins(store: StateStore) -> None:
    old, new = make_state(1, last_ts=START), make_state(2, last_ts=START + 50)
    records = [state_record("u1", old), state_record("u2", old), state_record("u1", new)]

    for chunk in (1, 1000):
        writer, _ = restore(store, records, chunk)
        stored = store.read(["u1", "u2"])
        assert stored["u1"].same_as(new), f"chunk {chunk}"
        assert stored["u2"].same_as(old), f"chunk {chunk}"
        assert writer.records == 3
        assert writer.users == 2


def test_restore_writes_newest_position_last(store: StateStore) -> None:
    spy = CommitLog(store)
    first, newest = PartitionPosition(5, START), PartitionPosition(9, START + 20)
    writer = RestoreWriter(spy, CHANGELOG, INPUT, 0, chunk_users=1)
    records = [
        state_record("u1", make_state(1)),
        position_record(0, first),
        state_record("u2", make_state(2)),
        state_record("u3", make_state(3)),
        position_record(0, newest),
    ]
    for offset, (key, value) in enumerate(records):
        writer.add(key, value, offset)

    assert store.positions(INPUT) == {}
    assert writer.finish() == newest

    assert store.positions(INPUT) == {0: newest}
    assert [commit[1] for commit in spy.commits[:-1]] == [None] * (len(spy.commits) - 1)
    assert spy.commits[-1][1] == {(INPUT, 0): newest}
    assert sorted(user for commit in spy.commits for user in commit[0]) == ["u1", "u2", "u3"]


def test_restore_timer_index_follows(store: StateStore) -> None:
    # u1 had an open session here. The changelog contains its closed session and u2's open one.
    store.commit({"u1": make_state(1, session_length=2, last_ts=START)})
    closed = make_state(1, session_length=0, last_ts=START + 100)
    opened = make_state(2, session_length=3, last_ts=START + 200)

    restore(store, [state_record("u1", closed), state_record("u2", opened)])

    assert store.expired(0, START + 10_000, 10) == ["u2"]
    assert store.expired(0, START + 150, 10) == []


def test_restore_without_position_stores_none(store: StateStore) -> None:
    _, position = restore(store, [state_record("u1", make_state(1))])

    assert position is None
    assert store.positions(INPUT) == {}
    assert list(store.read(["u1"])) == ["u1"]


def test_restore_tombstone_deletes_user(store: StateStore) -> None:
    store.commit({"u1": make_state(1)})
    records = [state_record("u2", make_state(2)), (b"u" + b"u1", None)]

    restore(store, records)

    assert list(store.read(["u1", "u2"])) == ["u2"]
    assert store.expired(0, START + 10_000, 10) == ["u2"]


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        (b"p" + position_key("orders", 0), b"\x92\x01\xcb", "the position of orders[0]"),
        (b"p" + position_key(INPUT, 3), b"\x92\x01\xcb", f"the position of {INPUT}[3]"),
        (b"x42", b"1", "the unknown key b'x42'"),
        (None, b"1", "no key"),
        (b"u" + b"u1", b"not msgpack", "contains an invalid user state"),
        (b"p" + position_key(INPUT, 0), b"\x93", "contains an invalid partition position"),
    ],
)
def test_restore_rejects_foreign_record(
    store: StateStore, key: bytes | None, value: bytes, message: str
) -> None:
    writer = RestoreWriter(store, CHANGELOG, INPUT, 0)
    writer.add(*state_record("u1", make_state(1)), 0)

    with pytest.raises(ChangelogError) as raised:
        writer.add(key, value, 1)

    assert f"changelog record {CHANGELOG}[0]@1 " in str(raised.value)
    assert message in str(raised.value)
    assert raised.value.exit_code == 2


# -- the reader --------------------------------------------------------------------------------


class ChangelogConsumer:
    """The consumer calls of a restore, over in-memory changelog partitions.

    `high` fixes the high watermark of every partition (default: its record count), `eof`
    whether the end of a partition gives an event, and `stalled` makes consume return nothing.
    """

    def __init__(
        self,
        partitions: dict[int, list[tuple[bytes | None, bytes | None]]],
        high: int | None = None,
        eof: bool = True,
        stalled: bool = False,
        count: int | None = None,
    ) -> None:
        self.partitions = partitions
        self.count = len(partitions) if count is None else count
        self.high = high
        self.eof = eof
        self.stalled = stalled
        self.assigned: list[TopicPartition] = []
        self.next_offset = 0
        self.eof_sent = False
        self.closed = False

    def list_topics(self, topic: str, timeout: float) -> Any:
        described = SimpleNamespace(error=None, partitions=dict.fromkeys(range(self.count)))
        return SimpleNamespace(topics={topic: described})

    def get_watermark_offsets(
        self, tp: TopicPartition, timeout: float, cached: bool
    ) -> tuple[int, int]:
        records = self.partitions.get(tp.partition, [])
        return 0, len(records) if self.high is None else self.high

    def assign(self, partitions: list[TopicPartition]) -> None:
        self.assigned = partitions
        self.next_offset = 0
        self.eof_sent = False

    def unassign(self) -> None:
        self.assigned = []

    def consume(self, num_messages: int, timeout: float) -> list[ConsumedMessage]:
        if self.stalled or not self.assigned:
            return []
        partition = self.assigned[0].partition
        records = self.partitions.get(partition, [])
        end = min(len(records), self.next_offset + num_messages)
        batch = [
            ConsumedMessage(CHANGELOG, partition, offset, *records[offset])
            for offset in range(self.next_offset, end)
        ]
        self.next_offset += len(batch)
        if self.next_offset >= len(records) and self.eof and not self.eof_sent:
            self.eof_sent = True
            batch.append(partition_eof(CHANGELOG, partition, self.next_offset))
        return batch

    def close(self) -> None:
        self.closed = True


def reader_of(consumer: ChangelogConsumer, stall_seconds: float = 60.0, **kwargs: Any):
    return ChangelogReader(consumer, CHANGELOG, INPUT, stall_seconds, **kwargs)  # type: ignore[arg-type]


def test_reader_restores_partition_to_end(store: StateStore) -> None:
    position = PartitionPosition(7, START)
    records = [state_record(f"u{n}", make_state(n)) for n in range(5)]
    records.append(position_record(0, position))
    consumer = ChangelogConsumer({0: records, 1: []})

    result = reader_of(consumer).restore(store, 0)

    assert consumer.assigned == []
    assert (result.partition, result.records, result.users) == (0, 6, 5)
    assert result.position == position
    assert store.positions(INPUT) == {0: position}
    assert len(store.read([f"u{n}" for n in range(5)])) == 5


def test_reader_stops_at_high_watermark(store: StateStore) -> None:
    # Records at or beyond the high watermark taken at the start are not applied.
    position = PartitionPosition(3, START)
    records = [state_record("u1", make_state(1)), position_record(0, position)]
    records.append(state_record("late", make_state(9)))

    result = reader_of(ChangelogConsumer({0: records}, high=2, eof=False)).restore(store, 0)

    assert result.records == 2
    assert store.read(["late"]) == {}
    assert store.positions(INPUT) == {0: position}


def test_reader_stops_at_partition_end(store: StateStore) -> None:
    # Compaction may leave no record at the offset below the high watermark.
    records = [state_record("u1", make_state(1)), position_record(0, PartitionPosition(4, START))]

    result = reader_of(ChangelogConsumer({0: records}, high=5)).restore(store, 0)

    assert result.position == PartitionPosition(4, START)


def test_reader_empty_partition_reads_nothing(store: StateStore) -> None:
    consumer = ChangelogConsumer({0: []})

    result = reader_of(consumer, stall_seconds=0.0).restore(store, 0)

    assert (result.records, result.position) == (0, None)
    assert consumer.assigned == []


def test_reader_gives_up_when_stalled(store: StateStore) -> None:
    times = iter(range(0, 1000, 10))
    consumer = ChangelogConsumer({0: [state_record("u1", make_state(1))]}, stalled=True)
    reader = reader_of(consumer, stall_seconds=30.0, clock=lambda: float(next(times)))

    with pytest.raises(ChangelogRestoreError, match=r"no record of .*\[0\] arrived for 30 s"):
        reader.restore(store, 0)
    assert consumer.assigned == []


def test_reader_rejects_partition_beyond_topic(store: StateStore) -> None:
    consumer = ChangelogConsumer({0: [], 1: []})

    with pytest.raises(ChangelogError) as raised:
        reader_of(consumer).restore(store, 3)

    message = str(raised.value)
    assert f"changelog topic {CHANGELOG} has 2 partitions, so {INPUT}[3] has no" in message
    assert f"--alter --topic {CHANGELOG} --partitions N" in message


def test_reader_stop_request_ends_restore(store: StateStore) -> None:
    # Three consume calls' worth of records; the stop arrives after the first call.
    records = [state_record(f"u{n}", make_state(n)) for n in range(2 * RESTORE_CONSUME_MESSAGES)]
    records.append(position_record(0, PartitionPosition(40, START)))
    consumer = ChangelogConsumer({0: records})
    calls: list[int] = []

    def stop_requested() -> bool:
        calls.append(consumer.next_offset)
        return True

    with pytest.raises(RestoreStoppedError) as raised:
        reader_of(consumer).restore(store, 0, stop_requested=stop_requested)

    stopped = raised.value
    assert calls == [RESTORE_CONSUME_MESSAGES]
    assert (stopped.partition, stopped.next_offset, stopped.high) == (
        0,
        RESTORE_CONSUME_MESSAGES,
        len(records),
    )
    assert stopped.records == RESTORE_CONSUME_MESSAGES
    # No position, so the partition restores again next time; the written chunk may stay.
    assert store.positions(INPUT) == {}
    assert consumer.assigned == []


def test_reader_stop_after_last_record_completes(store: StateStore) -> None:
    position = PartitionPosition(2, START)
    records = [state_record("u1", make_state(1)), position_record(0, position)]

    result = reader_of(ChangelogConsumer({0: records})).restore(
        store, 0, stop_requested=lambda: True
    )

    assert result.position == position
    assert store.positions(INPUT) == {0: position}


def test_reader_consumer_joins_no_group() -> None:
    config = WorkerConfig(
        brokers="b:9092",
        bundle=Path("x"),
        changelog_topic=CHANGELOG,
        kafka_settings={"security.protocol": "SSL", "group.instance.id": "host-a", "acks": "all"},
    )

    settings = changelog_consumer_settings(config)

    assert settings["security.protocol"] == "SSL"
    assert settings["group.id"] == config.group_id
    assert settings["enable.auto.commit"] is False
    assert settings["enable.partition.eof"] is True
    assert "group.instance.id" not in settings
    assert "acks" not in settings


# -- configuration -----------------------------------------------------------------------------


def test_changelog_off_by_default() -> None:
    config = WorkerConfig(brokers="b:1", bundle=Path("x"))
    assert config.changelog_topic == ""


@pytest.mark.parametrize(
    ("field", "role"),
    [("input_topic", "input"), ("output_topic", "output"), ("dead_letter_topic", "dead-letter")],
)
def test_changelog_topic_must_be_its_own(field: str, role: str) -> None:
    topics = {"input_topic": "a", "output_topic": "b", "dead_letter_topic": "c"}
    expected = f"--changelog-topic {topics[field]} is also the {role} topic"
    with pytest.raises(ConfigError, match=expected):
        WorkerConfig(brokers="b:1", bundle=Path("x"), **topics, changelog_topic=topics[field])


def test_changelog_topic_name_checked() -> None:
    with pytest.raises(ConfigError, match=r"^--changelog-topic 'a b' is invalid: use a topic name"):
        WorkerConfig(brokers="b:1", bundle=Path("x"), changelog_topic="a b")


# -- the worker --------------------------------------------------------------------------------


class RecordingProducer:
    """Reports every delivery at once and records (topic, key, partition) of each message."""

    def __init__(self) -> None:
        self.produced: list[tuple[str, bytes, int | None]] = []

    def produce(
        self, topic: str, value: Any, key: Any, headers: Any, on_delivery: Any, **target: Any
    ) -> None:
        self.produced.append((topic, key, target.get("partition")))
        on_delivery(None, None)

    def flush(self, timeout: float) -> int:
        return 0

    def poll(self, timeout: float) -> int:
        return 0


class AssignConsumer:
    """The consumer calls of an assignment: committed offsets and retained offsets."""

    def __init__(self, committed: dict[int, int]) -> None:
        self._committed = committed
        self.assigned: list[TopicPartition] | None = None
        self.unassigned: list[TopicPartition] | None = None

    def committed(self, partitions: list[TopicPartition], timeout: float) -> list[TopicPartition]:
        offsets = [self._committed.get(tp.partition, OFFSET_INVALID) for tp in partitions]
        return [
            TopicPartition(tp.topic, tp.partition, offset)
            for tp, offset in zip(partitions, offsets, strict=True)
        ]

    def get_watermark_offsets(self, tp: TopicPartition, **kwargs: Any) -> tuple[int, int]:
        return (0, 10_000)

    def incremental_assign(self, partitions: list[TopicPartition]) -> None:
        self.assigned = partitions

    def incremental_unassign(self, partitions: list[TopicPartition]) -> None:
        self.unassigned = partitions


@pytest.fixture
def make_worker(tmp_path: Path) -> Iterator[Callable[..., Worker]]:
    workers: list[Worker] = []

    def make(changelog: ChangelogConsumer | None, consumer: Any = None) -> Worker:
        state_dir = tmp_path / f"state{len(workers)}"
        config = WorkerConfig(
            brokers="127.0.0.1:1",
            bundle=Path("bundle"),
            state_dir=state_dir,
            changelog_topic=CHANGELOG if changelog is not None else "",
        )
        bundle = FakeBundle()
        pipeline = Pipeline(bundle, PipelineConfig(session_gap=GAP, top_k=5))
        store = StateStore(StoreConfig(path=state_dir, sync=False))
        metrics = create_metrics(CollectorRegistry())
        consumer = consumer or SimpleNamespace(get_watermark_offsets=lambda tp, cached: (0, 0))
        parts = (config, pipeline, store, metrics, consumer, RecordingProducer())
        worker = Worker(*parts, bundle.row_of)
        if changelog is not None:
            worker.changelog = Changelog(config, open_consumer=lambda: changelog)  # type: ignore[arg-type, return-value]
        workers.append(worker)
        return worker

    yield make
    for worker in workers:
        worker.committer.close(timeout=10)
        worker.store.close()


def test_batch_changelog_follows_outputs(make_worker) -> None:
    worker = make_worker(ChangelogConsumer({}))
    worker._process([event_message(1, 0, "u1", 3, START), event_message(2, 0, "u2", 4, START)])
    worker.committer.drain()

    produced = worker.producer.produced
    assert [topic for topic, _key, _p in produced] == ["recommendations"] * 2 + [CHANGELOG] * 4
    assert produced[2:4] == [(CHANGELOG, b"uu1", 1), (CHANGELOG, b"uu2", 2)]
    assert produced[4:] == [
        (CHANGELOG, b"p" + position_key(INPUT, 1), 1),
        (CHANGELOG, b"p" + position_key(INPUT, 2), 2),
    ]
    assert all(partition is None for _t, _k, partition in produced[:2])


def test_timer_close_goes_to_changelog(make_worker) -> None:
    worker = make_worker(ChangelogConsumer({}))
    worker._process([event_message(0, 0, "u1", 3, START)])
    worker.committer.drain()
    worker.producer.produced.clear()

    worker._positions[0] = PartitionPosition(1, START + 5000)
    worker._timers_due.add(0)
    worker._idle()
    worker.committer.drain()

    assert worker.producer.produced == [(CHANGELOG, b"uu1", 0)]
    assert worker.store.read(["u1"])["u1"].session_length == 0


def test_worker_without_changelog_produces_outputs_only(make_worker) -> None:
    worker = make_worker(None)
    worker._process([event_message(0, 0, "u1", 3, START)])
    worker.committer.drain()

    assert [topic for topic, _key, _p in worker.producer.produced] == ["recommendations"]


def assign(worker: Worker, consumer: AssignConsumer, partitions: list[int]) -> list[int]:
    tps = [TopicPartition(INPUT, partition) for partition in partitions]
    worker._on_assign(consumer, tps)  # type: ignore[arg-type]
    return [tp.offset for tp in tps]


def restored_count(worker: Worker) -> float:
    return worker.metrics.changelog_records_restored._value.get()


def test_empty_store_restores_instead_of_rejecting(make_worker) -> None:
    # Without the changelog, these committed offsets stop an empty store (CommittedOffsetsError).
    position = PartitionPosition(120, START + 50)
    changelog = ChangelogConsumer(
        {0: [state_record("u1", make_state(1)), position_record(0, position)], 1: []}
    )
    worker = make_worker(changelog)
    consumer = AssignConsumer({0: 100})

    offsets = assign(worker, consumer, [0, 1])

    assert offsets == [120, OFFSET_BEGINNING]
    assert worker._positions[0] == position
    assert list(worker.store.read(["u1"])) == ["u1"]
    assert restored_count(worker) == 2
    assert changelog.closed


def test_stale_store_restored_when_group_ahead(make_worker) -> None:
    newer = make_state(2, last_ts=START + 900)
    changelog = ChangelogConsumer(
        {0: [state_record("u1", newer), position_record(0, PartitionPosition(300, START + 900))]}
    )
    worker = make_worker(changelog)
    worker.store.commit({"u1": make_state(1)}, {(INPUT, 0): PartitionPosition(200, START)})

    offsets = assign(worker, AssignConsumer({0: 290}), [0])

    assert offsets == [300]
    assert worker.store.read(["u1"])["u1"].same_as(newer)


def test_current_store_not_restored(make_worker) -> None:
    changelog = ChangelogConsumer({0: [position_record(0, PartitionPosition(999, START))]})
    worker = make_worker(changelog)
    worker.store.commit({}, {(INPUT, 0): PartitionPosition(200, START)})

    offsets = assign(worker, AssignConsumer({0: 200}), [0])

    assert offsets == [200]
    assert not changelog.closed
    assert restored_count(worker) == 0


def test_changelog_without_position_keeps_committed_check(make_worker) -> None:
    worker = make_worker(ChangelogConsumer({0: []}))
    consumer = AssignConsumer({0: 100})

    with pytest.raises(CommittedOffsetsError, match="--rebuild-state"):
        assign(worker, consumer, [0])
    assert consumer.assigned is None


def test_restore_histogram_observed(make_worker) -> None:
    changelog = ChangelogConsumer({0: [position_record(0, PartitionPosition(3, START))]})
    worker = make_worker(changelog)

    assign(worker, AssignConsumer({}), [0])

    samples = worker.metrics.changelog_restore_seconds.collect()[0].samples
    count = next(sample.value for sample in samples if sample.name.endswith("_count"))
    assert count == 1
    assert np.isfinite(next(s.value for s in samples if s.name.endswith("_sum")))


def test_changelog_topic_from_environment() -> None:
    from stream.config import build_config, source_of

    flags = {"brokers": "b:1", "bundle": Path("x")}
    named = build_config(flags, {"HIERTCN_CHANGELOG_TOPIC": CHANGELOG})
    empty = build_config(flags, {"HIERTCN_CHANGELOG_TOPIC": ""})

    assert named.changelog_topic == CHANGELOG
    assert source_of(named, "changelog_topic") == "HIERTCN_CHANGELOG_TOPIC"
    assert empty.changelog_topic == ""


# -- a changelog behind the group, and the log lines of the assignment -------------------------


def test_restored_position_behind_commit_names_changelog(
    make_worker, caplog: pytest.LogCaptureFixture
) -> None:
    changelog = ChangelogConsumer({0: [position_record(0, PartitionPosition(300, START))]})
    worker = make_worker(changelog)

    with caplog.at_level("WARNING", logger="stream.rebalance"):
        offsets = assign(worker, AssignConsumer({0: 350}), [0])

    assert offsets == [300]
    (warning,) = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warning.startswith(
        f"{INPUT}[0] starts at offset 300, the position restored from changelog {CHANGELOG}, "
        "but group hiertcn has committed offset 350: its 50 events in between are processed "
        "again and their outputs published again."
    )
    assert "(it ran without --changelog-topic, or with another topic)" in warning
    assert "the changelog lost records (the topic was deleted or recreated)" in warning
    assert f"Run every member of the group with --changelog-topic {CHANGELOG}." in warning
    assert "`hiertcn-stream changelog seed`" in warning
    assert "an older copy of the state directory" not in warning


def test_changelog_without_position_behind_commit_warned(
    make_worker, caplog: pytest.LogCaptureFixture
) -> None:
    # The changelog was recreated: it contains states, but no position of partition 0.
    worker = make_worker(ChangelogConsumer({0: [state_record("u1", make_state(1))]}))
    worker.store.commit({}, {(INPUT, 0): PartitionPosition(200, START)})

    with caplog.at_level("WARNING", logger="stream.rebalance"):
        offsets = assign(worker, AssignConsumer({0: 290}), [0])

    assert offsets == [200]
    lines = [r.getMessage() for r in caplog.records]
    warnings = [line for line in lines if line.startswith(f"{INPUT}[0] starts at offset")]
    assert len(warnings) == 1
    expected = f"starts at offset 200, the stored position, with no position in {CHANGELOG}"
    assert expected in warnings[0]
    assert "its 90 events in between" in warnings[0]


def test_current_restore_not_warned(make_worker, caplog: pytest.LogCaptureFixture) -> None:
    changelog = ChangelogConsumer({0: [position_record(0, PartitionPosition(300, START))]})
    worker = make_worker(changelog)

    with caplog.at_level("WARNING", logger="stream.rebalance"):
        assign(worker, AssignConsumer({0: 300}), [0])

    assert [r.getMessage() for r in caplog.records if r.levelname == "WARNING"] == []


class StoppingChangelogConsumer(ChangelogConsumer):
    """A changelog consumer that calls `on_consume(partition)` before each consume call and
    `on_unassign(partition)` when a restore ends, so a test can request a stop there."""

    def __init__(self, partitions: dict[int, list], **kwargs: Any) -> None:
        super().__init__(partitions, **kwargs)
        self.on_consume: Callable[[int], None] = lambda partition: None
        self.on_unassign: Callable[[int], None] = lambda partition: None
        self.restored: list[int] = []

    def consume(self, num_messages: int, timeout: float) -> list[ConsumedMessage]:
        if self.assigned:
            self.on_consume(self.assigned[0].partition)
        return super().consume(num_messages, timeout)

    def unassign(self) -> None:
        partition = self.assigned[0].partition
        self.restored.append(partition)
        super().unassign()
        self.on_unassign(partition)


def three_partitions(long_partition: int = -1) -> dict[int, list]:
    """Return changelog partitions 0 to 2, each with a state and a position at offset 100 + p.

    `long_partition` gets enough states for three consume calls.
    """
    partitions = {}
    for partition in range(3):
        users = 2 * RESTORE_CONSUME_MESSAGES if partition == long_partition else 1
        records = [
            state_record(f"p{partition}u{n}", make_state(n, partition=partition))
            for n in range(users)
        ]
        records.append(position_record(partition, PartitionPosition(100 + partition, START)))
        partitions[partition] = records
    return partitions


def test_stop_between_restores_leaves_rest_unassigned(
    make_worker, caplog: pytest.LogCaptureFixture
) -> None:
    changelog = StoppingChangelogConsumer(three_partitions())
    worker = make_worker(changelog)
    changelog.on_unassign = lambda partition: worker.request_stop()
    consumer = AssignConsumer({0: 50, 1: 50, 2: 50})

    with caplog.at_level("INFO", logger="stream.rebalance"):
        offsets = assign(worker, consumer, [0, 1, 2])

    assert changelog.restored == [0]
    assert offsets == [100, OFFSET_INVALID, OFFSET_INVALID]  # only [0] got an offset
    assert consumer.assigned is not None
    assert [tp.partition for tp in consumer.assigned] == [0]
    assert worker.store.positions(INPUT) == {0: PartitionPosition(100, START)}
    assert set(worker._positions) == {0}
    assert worker._never_assigned == {1, 2}
    lines = [r.getMessage() for r in caplog.records]
    assert (
        f"stop requested during the changelog restores: {INPUT}[1], {INPUT}[2] left unrestored "
        f"and not assigned. Their next owner restores them from changelog {CHANGELOG}"
    ) in lines
    assert not any("starting at the earliest offset" in line for line in lines)


def test_stop_inside_restore_assigns_nothing(make_worker, caplog: pytest.LogCaptureFixture) -> None:
    changelog = StoppingChangelogConsumer(three_partitions(long_partition=0))
    worker = make_worker(changelog)
    changelog.on_consume = lambda partition: worker.request_stop()
    # An empty store with committed offsets would stop the worker, were [0] to start anywhere.
    consumer = AssignConsumer({0: 50, 1: 50, 2: 50})

    with caplog.at_level("INFO", logger="stream.rebalance"):
        assign(worker, consumer, [0, 1, 2])

    assert changelog.restored == [0]
    assert consumer.assigned == []
    assert worker.store.positions(INPUT) == {}
    assert worker._never_assigned == {0, 1, 2}
    assert restored_count(worker) == 0
    lines = [r.getMessage() for r in caplog.records]
    assert any(
        line.startswith(f"stop requested: the restore of {INPUT}[0] from changelog {CHANGELOG} ")
        and line.endswith(
            "No position was written, so the partition restores again at its next assignment"
        )
        for line in lines
    ), lines


def test_revoke_unassigns_only_assigned_partitions(
    make_worker, caplog: pytest.LogCaptureFixture
) -> None:
    changelog = StoppingChangelogConsumer(three_partitions())
    worker = make_worker(changelog)
    changelog.on_unassign = lambda partition: worker.request_stop()
    consumer = AssignConsumer({0: 50, 1: 50, 2: 50})
    assign(worker, consumer, [0, 1, 2])

    with caplog.at_level("INFO", logger="stream.rebalance"):
        worker._on_revoke(consumer, [TopicPartition(INPUT, p) for p in range(3)])  # type: ignore[arg-type]

    assert consumer.unassigned is not None
    assert [tp.partition for tp in consumer.unassigned] == [0]
    assert worker._never_assigned == set()
    lines = [r.getMessage() for r in caplog.records]
    assert f"revoked {INPUT}[0]@100 (stored position)" in lines
    for partition in (1, 2):
        assert (
            f"revoked {INPUT}[{partition}]: left unrestored here, so its next owner restores it "
            f"from changelog {CHANGELOG}"
        ) in lines


def test_revoke_without_unrestored_leaves_unassign_to_client(make_worker) -> None:
    changelog = ChangelogConsumer({0: [position_record(0, PartitionPosition(3, START))]})
    worker = make_worker(changelog)
    consumer = AssignConsumer({})
    assign(worker, consumer, [0])

    worker._on_revoke(consumer, [TopicPartition(INPUT, 0)])  # type: ignore[arg-type]

    assert consumer.unassigned is None


def test_revoke_without_position_names_changelog(
    make_worker, caplog: pytest.LogCaptureFixture
) -> None:
    worker = make_worker(ChangelogConsumer({}))
    worker._positions[1] = PartitionPosition(0, float("-inf"))

    with caplog.at_level("INFO", logger="stream.rebalance"):
        worker._forget({1}, "revoked")

    (line,) = [r.getMessage() for r in caplog.records]
    assert line == (
        f"revoked {INPUT}[1]: no stored position in {worker.state_dir}, so its next owner "
        f"restores it from changelog {CHANGELOG}"
    )


def test_unstored_partition_error_offers_changelog_topic(make_worker) -> None:
    worker = make_worker(None)

    with pytest.raises(CommittedOffsetsError) as raised:
        assign(worker, AssignConsumer({0: 100}), [0])

    assert (
        "When the group's other hosts run with --changelog-topic, pass the --changelog-topic "
        "that they use, and this host restores the partitions from it."
    ) in str(raised.value)


def test_unstored_partition_error_names_empty_changelog(make_worker) -> None:
    worker = make_worker(ChangelogConsumer({0: []}))

    with pytest.raises(CommittedOffsetsError) as raised:
        assign(worker, AssignConsumer({0: 100}), [0])

    assert f"Changelog topic {CHANGELOG} contains no position of them either" in str(raised.value)
