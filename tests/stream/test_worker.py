"""Worker parts that need no broker: Kafka settings, dead letters, decoding, assignment, timers
and metrics.

The integration tests in tests/integration/test_worker_*.py run the whole worker on a broker.
"""

from __future__ import annotations

import multiprocessing
import signal
import socket
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import msgpack
import pytest
from confluent_kafka import (
    OFFSET_BEGINNING,
    OFFSET_INVALID,
    KafkaError,
    KafkaException,
    TopicPartition,
)
from prometheus_client import CollectorRegistry

import stream.worker as worker_module
from statestore import PartitionPosition
from stream.committer import CommitError
from stream.config import WorkerConfig
from stream.consume import ConsumerSetupError
from stream.dead_letters import DeadLetterLog
from stream.delivery import OutputRecord
from stream.events import REASONS, DeadLetter
from stream.health import HeartbeatTable
from stream.interval import Interval
from stream.kafka_settings import (
    KafkaErrorLog,
    consumer_settings,
    open_clients,
    partition_count_seconds,
    producer_settings,
)
from stream.logs import DEAD_LETTERS_LOGGED_PER_REASON, RateLimitedLog
from stream.metric_updates import live_cutoffs
from stream.metrics import create_metrics
from stream.rebalance import CommittedOffsetsError
from stream.worker import Worker
from tests.stream.messages import INPUT_TOPIC, ConsumedMessage


class FakeProducer:
    """Accepts produce calls and reports every delivery as done on flush or poll."""

    def __init__(self) -> None:
        self.produced: list[tuple[str, bytes | None]] = []

    def produce(self, topic: str, value: Any, key: Any, headers: Any, on_delivery: Any) -> None:
        self.produced.append((topic, value))
        on_delivery(None, None)

    def flush(self, timeout: float) -> int:
        return 0

    def poll(self, timeout: float) -> int:
        return 0


def make_worker(producer: FakeProducer, **settings: Any) -> Worker:
    config = WorkerConfig(
        brokers="127.0.0.1:1",
        bundle=Path("bundle"),
        **settings,
    )
    pipeline = SimpleNamespace(config=SimpleNamespace(session_gap=600.0, top_k=10))
    metrics = create_metrics(CollectorRegistry())
    # The main loop checks the store's files; tests that use the store replace this one.
    store = SimpleNamespace(check_files=lambda: None)
    return Worker(config, pipeline, store, metrics, None, producer, {})  # type: ignore[arg-type]


def test_consumer_settings_disable_auto_commit() -> None:
    config = WorkerConfig(
        brokers="b:9092", bundle=Path("x"), kafka_settings={"security.protocol": "SSL"}
    )

    settings = consumer_settings(config)

    assert settings["enable.auto.commit"] is False
    assert settings["enable.auto.offset.store"] is False
    assert settings["auto.offset.reset"] == "earliest"
    assert settings["partition.assignment.strategy"] == "cooperative-sticky"
    assert settings["security.protocol"] == "SSL"
    assert producer_settings(config)["security.protocol"] == "SSL"
    assert producer_settings(config)["enable.idempotence"] is True


def test_dead_letter_headers_name_reason_and_source() -> None:
    worker = make_worker(FakeProducer())
    letter = DeadLetter(b"u1", b"\xc1", "invalid_msgpack", "not msgpack", "in[2]@7")

    (dead,) = worker.dead_letters.records([letter])

    headers = dict(dead.headers)
    assert dead.topic == "interactions.dlq"
    assert headers["hiertcn.reason"] == b"invalid_msgpack"
    assert headers["hiertcn.error"] == b"not msgpack"
    assert headers["hiertcn.source"] == b"in[2]@7"
    assert dead.value == b"\xc1"
    assert "hiertcn.truncated" not in headers


def test_dead_letter_too_large_is_truncated() -> None:
    worker = make_worker(FakeProducer(), kafka_settings={"message.max.bytes": "100000"})
    value = b"x" * 200_000
    letter = DeadLetter(b"u1", value, "message_too_large", "too large", "in[0]@1")

    (dead,) = worker.dead_letters.records([letter])

    headers = dict(dead.headers)
    assert headers["hiertcn.truncated"] == b"200002"
    assert len(dead.key) + len(dead.value) <= 100_000
    assert value.startswith(dead.value)


def test_dead_letter_reasons_start_at_zero() -> None:
    # rate() and increase() miss the first dead letter of a reason whose series starts at 1.
    worker = make_worker(FakeProducer())

    (family,) = worker.metrics.dead_letters.collect()
    totals = {
        sample.labels["reason"]: sample.value
        for sample in family.samples
        if sample.name.endswith("_total")
    }
    assert totals == dict.fromkeys(REASONS, 0.0)


def test_dead_letter_counted_once() -> None:
    worker = make_worker(FakeProducer())

    worker.dead_letters.records([_junk(0, "missing_user")])

    counter = worker.metrics.dead_letters
    assert counter.labels("missing_user")._value.get() == 1
    assert counter.labels("invalid_msgpack")._value.get() == 0


def test_live_cutoffs_stop_at_k() -> None:
    assert live_cutoffs(20) == [1, 5, 10, 20]
    assert live_cutoffs(7) == [1, 5, 7]
    assert live_cutoffs(50) == [1, 5, 10, 20, 50]


def _junk(offset: int, reason: str = "invalid_msgpack") -> DeadLetter:
    return DeadLetter(b"u1", b"\xc1", reason, "not msgpack", f"in[0]@{offset}")


def _log_lines(caplog: pytest.LogCaptureFixture, logger: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == logger]


def test_dead_letter_flood_logs_first_few(caplog: pytest.LogCaptureFixture) -> None:
    worker = make_worker(FakeProducer())
    letters = [_junk(offset) for offset in range(20_000)]

    with caplog.at_level("WARNING", logger="stream.dead_letters"):
        records = worker.dead_letters.records(letters)

    assert len(records) == 20_000
    counted = worker.metrics.dead_letters.labels("invalid_msgpack")._value.get()
    assert counted == 20_000
    lines = _log_lines(caplog, "stream.dead_letters")
    assert len(lines) == DEAD_LETTERS_LOGGED_PER_REASON + 1
    assert "further ones are counted" in lines[-1]


def test_dead_letter_summary_counts_by_reason(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    log = DeadLetterLog(per_reason=1, interval=10.0, clock=lambda: now[0])
    with caplog.at_level("WARNING", logger="stream.dead_letters"):
        for offset in range(30):
            log.add_letter(_junk(offset))
        for offset in range(3):
            log.add_letter(_junk(offset, "missing_user"))
        log.flush()
        lines = _log_lines(caplog, "stream.dead_letters")
        assert not any("more dead letters" in line for line in lines)
        now[0] = 12.0
        log.flush()
        log.flush()

    lines = _log_lines(caplog, "stream.dead_letters")
    summaries = [line for line in lines if "more dead letters" in line]
    assert summaries == [
        "31 more dead letters in the last 12 s, by reason: invalid_msgpack 29, missing_user 2"
    ]


def test_dead_letter_summary_of_one_is_singular(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    log = DeadLetterLog(per_reason=1, interval=10.0, clock=lambda: now[0])
    with caplog.at_level("WARNING", logger="stream.dead_letters"):
        log.add_letter(_junk(0))
        log.add_letter(_junk(1))
        now[0] = 10.0
        log.flush()

    lines = _log_lines(caplog, "stream.dead_letters")
    assert "1 more dead letter in the last 10 s, by reason: invalid_msgpack 1" in lines
    assert lines[1].startswith("logged 1 dead letter with reason invalid_msgpack")


def test_dead_letter_keeps_original_headers_first() -> None:
    worker = make_worker(FakeProducer())
    original = (("trace-id", b"abc"), ("empty", None))
    letter = DeadLetter(b"u1", b"\xc1", "invalid_msgpack", "not msgpack", "in[2]@7", original)

    (dead,) = worker.dead_letters.records([letter])

    assert dead.headers[:2] == list(original)
    assert dict(dead.headers)["hiertcn.reason"] == b"invalid_msgpack"


def test_dead_letter_replaces_oversized_original_headers() -> None:
    worker = make_worker(FakeProducer())
    original = (("big", b"x" * 10_000),)
    letter = DeadLetter(b"u1", b"\xc1", "invalid_msgpack", "not msgpack", "in[2]@7", original)

    (dead,) = worker.dead_letters.records([letter])

    headers = dict(dead.headers)
    assert "big" not in headers
    assert headers["hiertcn.headers_dropped"] == b"10003"


def _event_message(offset: int, ts: float, key: bytes | None = b"u1") -> ConsumedMessage:
    """Return an event of u1 on item "a" on partition 0, without a timestamp."""
    value = msgpack.packb({"user": "u1", "item": "a", "ts": ts})
    return ConsumedMessage(INPUT_TOPIC, 0, offset, key, value)


def _decoding_worker() -> Worker:
    worker = make_worker(FakeProducer())
    worker.row_of = {"a": 0}
    return worker


def test_future_event_keeps_watermark() -> None:
    worker = _decoding_worker()
    now = time.time()
    messages = [_event_message(0, now - 10), _event_message(1, 4e9), _event_message(2, now)]

    decoded = worker._decode(messages)

    assert [event.offset for event in decoded.events] == [0, 2]
    assert [letter.reason for letter in decoded.dead_letters] == ["ts_in_future"]
    assert decoded.positions[0].next_offset == 3
    assert decoded.positions[0].watermark == now


def test_keyless_events_logged_rate_limited(caplog: pytest.LogCaptureFixture) -> None:
    worker = _decoding_worker()
    messages = [_event_message(offset, 1_600_000_000, key=None) for offset in range(50)]

    with caplog.at_level("WARNING", logger="stream.consume"):
        decoded = worker._decode(messages)

    assert len(decoded.events) == 50
    assert not decoded.dead_letters
    lines = _log_lines(caplog, "stream.consume")
    assert len(lines) == DEAD_LETTERS_LOGGED_PER_REASON + 1
    assert "event without a Kafka key at interactions[0]@0 (user 'u1')" in lines[0]
    assert "logged 5 events without a Kafka key with partition 0" in lines[-1]


def test_keyed_events_not_logged(caplog: pytest.LogCaptureFixture) -> None:
    worker = _decoding_worker()

    with caplog.at_level("WARNING", logger="stream.consume"):
        worker._decode([_event_message(0, 1_600_000_000)])

    assert _log_lines(caplog, "stream.consume") == []


def test_keyless_summary_counts_by_partition(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    log = RateLimitedLog("events without a Kafka key", "partition", 1, 10.0, lambda: now[0])
    with caplog.at_level("WARNING", logger="stream.logs"):
        for _ in range(4):
            log.add("0", "keyless")
        log.add("3", "keyless")
        log.add("3", "keyless")
        now[0] = 11.0
        log.flush()

    summaries = [line for line in _log_lines(caplog, "stream.logs") if " more " in line]
    assert summaries == [
        "4 more events without a Kafka key in the last 11 s, by partition: 0 3, 3 1"
    ]


class AssignConsumer:
    """The consumer calls of an assignment: committed offsets and retained offsets."""

    def __init__(self, committed: dict[int, int], low: int = 0) -> None:
        self._committed = committed
        self._low = low
        self.assigned: list[TopicPartition] | None = None

    def committed(self, partitions: list[TopicPartition], timeout: float) -> list[TopicPartition]:
        return [
            TopicPartition(
                tp.topic, tp.partition, self._committed.get(tp.partition, OFFSET_INVALID)
            )
            for tp in partitions
        ]

    def get_watermark_offsets(
        self, tp: TopicPartition, timeout: float, cached: bool
    ) -> tuple[int, int]:
        return (self._low, 10_000)

    def incremental_assign(self, partitions: list[TopicPartition]) -> None:
        self.assigned = partitions


class PositionStore:
    """A state store that contains only partition positions."""

    def __init__(self, positions: dict[int, PartitionPosition]) -> None:
        self._positions = positions

    def positions(self, topic: str) -> dict[int, PartitionPosition]:
        return dict(self._positions)


def _assign(
    worker: Worker, consumer: AssignConsumer, store: PositionStore, partitions: list[int]
) -> list[TopicPartition]:
    worker.store = store
    worker.consumer = consumer
    tps = [TopicPartition("interactions", partition) for partition in partitions]
    worker._on_assign(consumer, tps)  # type: ignore[arg-type]
    return tps


def test_empty_store_in_committed_group_rejected(tmp_path: Path) -> None:
    worker = make_worker(FakeProducer(), state_dir=tmp_path / "fresh")
    consumer = AssignConsumer({0: 6556, 1: 0})

    with pytest.raises(CommittedOffsetsError) as raised:
        _assign(worker, consumer, PositionStore({}), [0, 1])

    message = str(raised.value)
    assert str((tmp_path / "fresh").resolve()) in message
    assert "interactions[0]@6556" in message
    assert "interactions[1]" not in message
    assert "--rebuild-state" in message
    assert "group hiertcn" in message
    assert raised.value.exit_code == 2
    assert consumer.assigned is None


class QueryFailingConsumer(AssignConsumer):
    """A consumer inside close(), whose offset queries fail."""

    def __init__(self) -> None:
        super().__init__({})
        self.unassigned: list[TopicPartition] | None = None

    def committed(self, partitions: list[TopicPartition], timeout: float) -> list[TopicPartition]:
        raise KafkaException(KafkaError(KafkaError._TIMED_OUT))

    def get_watermark_offsets(
        self, tp: TopicPartition, timeout: float, cached: bool
    ) -> tuple[int, int]:
        raise KafkaException(KafkaError(KafkaError._TIMED_OUT))

    def incremental_unassign(self, partitions: list[TopicPartition]) -> None:
        self.unassigned = partitions


def test_assignment_after_stop_request_assigns_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Without the stop request, this empty store makes the assignment query the committed
    # offsets, and the failing query stops the worker with exit code 2.
    worker = make_worker(FakeProducer(), state_dir=tmp_path / "fresh")
    consumer = QueryFailingConsumer()
    with pytest.raises(CommittedOffsetsError):
        _assign(worker, consumer, PositionStore({}), [0])
    worker.request_stop(signal.SIGTERM)

    with caplog.at_level("INFO", logger="stream.rebalance"):
        _assign(worker, consumer, PositionStore({}), [0, 1])
        worker._on_revoke(consumer, [TopicPartition("interactions", p) for p in (0, 1)])  # type: ignore[arg-type]

    assert consumer.assigned == []
    assert consumer.unassigned == []  # librdkafka rejects a partition outside the assignment
    assert worker._positions == {}
    assert worker._never_assigned == set()
    lines = _log_lines(caplog, "stream.rebalance")
    assert lines == [
        "stop requested before the assignment of interactions[0], interactions[1]: not "
        "assigned, so the group moves them to another member",
        "revoked interactions[0]: never assigned here",
        "revoked interactions[1]: never assigned here",
    ]


def test_relative_state_dir_named_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    worker = make_worker(FakeProducer(), state_dir=Path("state"))

    with pytest.raises(CommittedOffsetsError, match=f"state dir {tmp_path.resolve()}/state "):
        _assign(worker, AssignConsumer({2: 5}), PositionStore({}), [2])


def test_empty_store_in_new_group_starts_at_earliest() -> None:
    worker = make_worker(FakeProducer())
    consumer = AssignConsumer({})

    tps = _assign(worker, consumer, PositionStore({}), [0, 1])

    assert consumer.assigned == tps
    assert [tp.offset for tp in tps] == [OFFSET_BEGINNING, OFFSET_BEGINNING]


def test_assigned_partitions_get_lag_series() -> None:
    worker = make_worker(FakeProducer())
    store = PositionStore({1: PartitionPosition(40, 1_600_000_000.0)})

    _assign(worker, AssignConsumer({}), store, [0, 1])

    (family,) = worker.metrics.consumer_lag.collect()
    lags = {sample.labels["partition"]: sample.value for sample in family.samples}
    assert lags == {"0": 0.0, "1": 0.0}


def test_commits_behind_retention_start_at_earliest() -> None:
    worker = make_worker(FakeProducer())
    consumer = AssignConsumer({0: 500}, low=500)

    (tp,) = _assign(worker, consumer, PositionStore({}), [0])

    assert tp.offset == OFFSET_BEGINNING
    assert consumer.assigned == [tp]


def test_stored_positions_skip_committed_check() -> None:
    worker = make_worker(FakeProducer())
    consumer = AssignConsumer({0: 6556})
    store = PositionStore({0: PartitionPosition(6556, 1_600_000_000.0)})

    (tp,) = _assign(worker, consumer, store, [0])

    assert tp.offset == 6556


def test_partition_moved_from_other_host_rebuilt() -> None:
    # The store contains partition 0, so partition 1 comes from another host of the group.
    worker = make_worker(FakeProducer())
    consumer = AssignConsumer({0: 6556, 1: 4000})
    store = PositionStore({0: PartitionPosition(6556, 1_600_000_000.0)})

    first, second = _assign(worker, consumer, store, [0, 1])

    assert first.offset == 6556
    assert second.offset == OFFSET_BEGINNING
    assert consumer.assigned == [first, second]


def test_rebuild_state_reads_from_earliest() -> None:
    worker = make_worker(FakeProducer(), rebuild_state=True)
    consumer = AssignConsumer({0: 6556})

    (tp,) = _assign(worker, consumer, PositionStore({}), [0])

    assert tp.offset == OFFSET_BEGINNING


def test_future_stored_watermark_warned(caplog: pytest.LogCaptureFixture) -> None:
    worker = make_worker(FakeProducer())
    store = PositionStore({0: PartitionPosition(10, 4e9), 1: PartitionPosition(10, time.time())})

    with caplog.at_level("WARNING", logger="stream.rebalance"):
        _assign(worker, AssignConsumer({}), store, [0, 1])

    lines = _log_lines(caplog, "stream.rebalance")
    warnings = [line for line in lines if "ahead of the current time" in line]
    assert len(warnings) == 1
    assert warnings[0].startswith("stored watermark of interactions[0] is ")


def test_stop_log_names_signal(caplog: pytest.LogCaptureFixture) -> None:
    worker = make_worker(FakeProducer())

    with caplog.at_level("INFO", logger="stream.worker"):
        worker.request_stop(signal.SIGTERM)
        worker.request_stop(signal.SIGTERM)

    lines = [r.getMessage() for r in caplog.records if r.name == "stream.worker"]
    assert len(lines) == 1
    assert "received SIGTERM: finishing the batch in flight" in lines[0]
    assert "None" not in lines[0]


def test_unassigned_worker_says_once_that_it_waits(caplog: pytest.LogCaptureFixture) -> None:
    worker = make_worker(FakeProducer())
    worker._unassigned_since -= 60.0

    with caplog.at_level("INFO", logger="stream.worker"):
        worker._notice_unassigned()
        worker._notice_unassigned()

    notices = [r.getMessage() for r in caplog.records if "has had no partition" in r.getMessage()]
    assert len(notices) == 1
    assert "session.timeout.ms" in notices[0]


def test_assigned_worker_says_nothing(caplog: pytest.LogCaptureFixture) -> None:
    worker = make_worker(FakeProducer())
    worker._positions[0] = PartitionPosition(5, 1_600_000_000.0)
    worker._unassigned_since -= 60.0

    with caplog.at_level("INFO", logger="stream.worker"):
        worker._notice_unassigned()

    assert "has had no partition" not in caplog.text


def test_stored_position_behind_commit_warned(caplog: pytest.LogCaptureFixture) -> None:
    worker = make_worker(FakeProducer())
    consumer = AssignConsumer({0: 6556, 1: 300})
    store = PositionStore(
        {0: PartitionPosition(6056, 1_600_000_000.0), 1: PartitionPosition(300, 1_600_000_000.0)}
    )

    with caplog.at_level("WARNING", logger="stream.rebalance"):
        first, second = _assign(worker, consumer, store, [0, 1])

    assert (first.offset, second.offset) == (6056, 300)
    warnings = [r.getMessage() for r in caplog.records if "behind the committed" in r.getMessage()]
    assert len(warnings) == 1
    assert warnings[0].startswith("stored position interactions[0]@6056 in ")
    assert "is 500 events behind the committed offset 6556 of group hiertcn" in warnings[0]


def _worker_with_heartbeat() -> tuple[Worker, HeartbeatTable]:
    table = HeartbeatTable(multiprocessing.get_context("spawn"), 1)
    worker = make_worker(FakeProducer())
    worker.heartbeat = table.worker(0)
    return worker, table


def test_empty_assignment_marks_worker_ready() -> None:
    worker, table = _worker_with_heartbeat()
    consumer = AssignConsumer({})

    _assign(worker, consumer, PositionStore({}), [])

    assert consumer.assigned == []
    assert table.ready(0)


def test_assignment_after_stop_request_leaves_worker_unready() -> None:
    worker, table = _worker_with_heartbeat()
    worker.request_stop(signal.SIGTERM)

    _assign(worker, AssignConsumer({}), PositionStore({}), [0])

    assert not table.ready(0)


def test_rejected_assignment_leaves_worker_unready() -> None:
    worker, table = _worker_with_heartbeat()

    with pytest.raises(CommittedOffsetsError):
        _assign(worker, AssignConsumer({0: 6556}), PositionStore({}), [0])

    assert not table.ready(0)


class ClosingConsumer:
    """A consumer with the calls of the worker's shutdown: assignment, unsubscribe and close."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def assignment(self) -> list[Any]:
        return []

    def unsubscribe(self) -> None:
        self.calls.append("unsubscribe")

    def close(self) -> None:
        self.calls.append("close")


def test_shutdown_clears_ready() -> None:
    worker, table = _worker_with_heartbeat()
    _assign(worker, AssignConsumer({}), PositionStore({}), [])
    worker.consumer = ClosingConsumer()  # type: ignore[assignment]

    worker._shutdown()

    assert not table.ready(0)


def test_main_loop_turn_beats() -> None:
    worker, table = _worker_with_heartbeat()
    table.values[0] = 0.0
    worker.heartbeat.clock = lambda: 123.0

    def stop_after_one_turn() -> list[Any]:
        worker.request_stop()
        return []

    worker.consumer = SimpleNamespace(  # type: ignore[assignment]
        subscribe=lambda *args, **kwargs: None,
        assignment=list,
        unsubscribe=lambda: None,
        close=lambda: None,
        list_topics=lambda topic, timeout: _partition_metadata(topic, 1),
    )
    worker._collect = stop_after_one_turn  # type: ignore[method-assign]
    worker._idle = lambda: None  # type: ignore[method-assign]
    worker._refresh_gauges = lambda: None  # type: ignore[method-assign]

    worker.run()

    assert table.last_beat(0) == 123.0


def test_static_membership_id_per_process() -> None:
    settings = {"group.instance.id": "pod-3"}
    pool = WorkerConfig(brokers="b:9092", bundle=Path("x"), processes=2, kafka_settings=settings)
    single = WorkerConfig(brokers="b:9092", bundle=Path("x"), processes=1, kafka_settings=settings)

    assert consumer_settings(pool, 0)["group.instance.id"] == "pod-3-0"
    assert consumer_settings(pool, 1)["group.instance.id"] == "pod-3-1"
    assert consumer_settings(single, 0)["group.instance.id"] == "pod-3"
    plain = WorkerConfig(brokers="b:9092", bundle=Path("x"), processes=2)
    assert "group.instance.id" not in consumer_settings(plain, 1)


def _stop_lines(
    worker: Worker, caplog: pytest.LogCaptureFixture, consumer: ClosingConsumer | None = None
) -> list[str]:
    worker.consumer = consumer or ClosingConsumer()  # type: ignore[assignment]
    worker.committer = SimpleNamespace(  # type: ignore[assignment]
        close=lambda: None, failed=False
    )
    with caplog.at_level("INFO", logger="stream.worker"):
        worker._shutdown()
    return [r.getMessage() for r in caplog.records if "stopping:" in r.getMessage()]


def test_static_member_stop_keeps_membership(caplog: pytest.LogCaptureFixture) -> None:
    worker = make_worker(FakeProducer(), processes=2, kafka_settings={"group.instance.id": "pod-0"})
    worker.index = 1

    (line,) = _stop_lines(worker, caplog)

    assert "keeping the static membership of pod-0-1" in line
    assert "session.timeout.ms" in line
    assert "leaving the group" not in line


def test_dynamic_member_stop_leaves_group(caplog: pytest.LogCaptureFixture) -> None:
    consumer = ClosingConsumer()
    (line,) = _stop_lines(make_worker(FakeProducer()), caplog, consumer)

    assert line.endswith("stopping: leaving the group")
    assert consumer.calls == ["unsubscribe", "close"]  # no partitions: leave explicitly


def test_static_member_stop_skips_unsubscribe(caplog: pytest.LogCaptureFixture) -> None:
    worker = make_worker(FakeProducer(), processes=2, kafka_settings={"group.instance.id": "pod-0"})
    consumer = ClosingConsumer()

    _stop_lines(worker, caplog, consumer)

    assert consumer.calls == ["close"]


@pytest.mark.parametrize(
    "code",
    [
        KafkaError.INVALID_SESSION_TIMEOUT,
        KafkaError.GROUP_AUTHORIZATION_FAILED,
        KafkaError.TOPIC_AUTHORIZATION_FAILED,
    ],
)
def test_unfixable_consumer_error_exits_2(code: int) -> None:
    worker = make_worker(FakeProducer())

    with pytest.raises(ConsumerSetupError) as raised:
        worker._on_consume_error(KafkaError(code))

    assert raised.value.exit_code == 2
    message = str(raised.value)
    assert KafkaError(code).name() in message
    assert "\n" not in message
    assert "grant" in message or "session.timeout.ms" in message


def test_repeated_consumer_error_rate_limited(caplog: pytest.LogCaptureFixture) -> None:
    worker = make_worker(FakeProducer())

    with caplog.at_level("WARNING", logger="stream.consume"):
        for _ in range(50):
            worker._on_consume_error(KafkaError(KafkaError._TRANSPORT))

    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == DEAD_LETTERS_LOGGED_PER_REASON + 1
    assert lines[0].startswith("consumer error (librdkafka retries it): ")
    assert "KafkaError{" not in lines[0]
    assert "consumer errors with code _TRANSPORT" in lines[-1]


def test_instance_id_setting_only_in_consumer() -> None:
    config = WorkerConfig(
        brokers="127.0.0.1:1",
        bundle=Path("bundle"),
        kafka_settings={
            "group.instance.id": "pod-0",
            "linger.ms": "5",
            "client.id": "hiertcn",
        },
    )

    consumer = consumer_settings(config)
    producer = producer_settings(config)

    assert consumer["group.instance.id"] == "pod-0"
    assert "group.instance.id" not in producer
    assert producer["linger.ms"] == "5"
    assert "linger.ms" not in consumer
    assert consumer["client.id"] == producer["client.id"] == "hiertcn"


def test_kafka_errors_counted_and_rate_limited(caplog: pytest.LogCaptureFixture) -> None:
    registry = CollectorRegistry()
    metrics = create_metrics(registry)
    on_error = KafkaErrorLog(metrics.kafka_errors)

    with caplog.at_level("WARNING", logger="stream.kafka_settings"):
        for _ in range(50):
            on_error(KafkaError(KafkaError._TRANSPORT, "127.0.0.1:1/bootstrap: Connect failed"))
        on_error(KafkaError(KafkaError._ALL_BROKERS_DOWN))

    transport = registry.get_sample_value("hiertcn_kafka_errors_total", {"code": "_TRANSPORT"})
    down = registry.get_sample_value("hiertcn_kafka_errors_total", {"code": "_ALL_BROKERS_DOWN"})
    assert transport == 50
    assert down == 1
    lines = [r.getMessage() for r in caplog.records]
    # The first lines of each code, the line that states the summary rule, and the other code.
    assert len(lines) == DEAD_LETTERS_LOGGED_PER_REASON + 2
    assert lines[0] == (
        "Kafka client error _TRANSPORT (librdkafka retries it): "
        "127.0.0.1:1/bootstrap: Connect failed"
    )
    assert "Kafka client errors with code _TRANSPORT" in lines[-2]
    assert lines[-1].startswith("Kafka client error _ALL_BROKERS_DOWN ")


def test_outage_error_codes_start_at_zero() -> None:
    registry = CollectorRegistry()

    KafkaErrorLog(create_metrics(registry).kafka_errors)

    for code in ("_TRANSPORT", "_ALL_BROKERS_DOWN"):
        assert registry.get_sample_value("hiertcn_kafka_errors_total", {"code": code}) == 0


def test_kafka_error_summary_counts_by_code(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    log = RateLimitedLog("Kafka client errors", "code", per_kind=1, clock=lambda: now[0])
    on_error = KafkaErrorLog(create_metrics(CollectorRegistry()).kafka_errors, log)

    with caplog.at_level("WARNING", logger="stream.logs"):
        for _ in range(4):
            on_error(KafkaError(KafkaError._TRANSPORT))
        now[0] = 11.0
        on_error.flush()

    assert caplog.records[-1].getMessage() == (
        "3 more Kafka client errors in the last 11 s, by code: _TRANSPORT 3"
    )


def closed_port() -> int:
    """Return a port of 127.0.0.1 that no socket listens on (free when this returns)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_unreachable_broker_counted_in_kafka_errors() -> None:
    # Real librdkafka clients of the worker, whose broker port is closed.
    config = WorkerConfig(brokers=f"127.0.0.1:{closed_port()}", bundle=Path("bundle"))
    registry = CollectorRegistry()
    on_error = KafkaErrorLog(create_metrics(registry).kafka_errors)
    consumer, producer = open_clients(config, 0, on_error)
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            consumer.poll(0.1)
            producer.poll(0.1)
            count = registry.get_sample_value("hiertcn_kafka_errors_total", {"code": "_TRANSPORT"})
            if count and count >= 2:
                break
    finally:
        consumer.close()

    assert registry.get_sample_value("hiertcn_kafka_errors_total", {"code": "_TRANSPORT"}) >= 2


def late_count(worker: Worker) -> float:
    """Return the value of the worker's hiertcn_late_events_total."""
    (family,) = worker.metrics.late_events.collect()
    return sum(sample.value for sample in family.samples if sample.name.endswith("_total"))


def test_late_events_counted_and_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    worker = _decoding_worker()
    start = 1_600_000_000.0
    # The session gap is 600 s: 599 s behind the watermark is in time, 601 s and more is late.
    times = [start + 10_000, start + 10_000 - 599, start + 10_000 - 601, start, start + 10_001]
    messages = [_event_message(offset, ts) for offset, ts in enumerate(times)]

    with caplog.at_level("WARNING", logger="stream.consume"):
        decoded = worker._decode(messages)

    assert len(decoded.events) == 5
    assert late_count(worker) == 2
    assert decoded.positions[0].watermark == start + 10_001
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2  # the first late event, then the line that states the summary rule
    assert lines[0].startswith(
        "late event at interactions[0]@2 (user 'u1'): its time 1600009399.000 is 601 s behind "
        "the partition's watermark 1600010000.000, more than the session gap of 600 s."
    )
    assert "hiertcn-stream produce --order time" in lines[0]
    assert "logged 1 late event with partition 0" in lines[1]


def test_time_ordered_events_not_late(caplog: pytest.LogCaptureFixture) -> None:
    worker = _decoding_worker()
    messages = [_event_message(offset, 1_600_000_000 + 900 * offset) for offset in range(10)]

    with caplog.at_level("WARNING", logger="stream.consume"):
        worker._decode(messages)

    assert late_count(worker) == 0
    assert caplog.records == []


class FailingProducer(FakeProducer):
    """Reports every delivery as _MSG_TIMED_OUT, as librdkafka does while the broker is down."""

    def produce(self, topic: str, value: Any, key: Any, headers: Any, on_delivery: Any) -> None:
        self.produced.append((topic, value))
        on_delivery(KafkaError(KafkaError._MSG_TIMED_OUT), None)


class HangingConsumer:
    """A consumer whose close() blocks until `release` is set, as librdkafka's close does while
    offset commits wait for an unreachable group coordinator."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.close_called = threading.Event()

    def close(self) -> None:
        self.close_called.set()
        self.release.wait(30)


def test_failed_commit_thread_stops_worker_promptly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(worker_module, "FAILED_CLOSE_SECONDS", 0.3)
    worker = make_worker(FailingProducer(), delivery_timeout=0.1, delivery_attempts=1)
    consumer = HangingConsumer()
    worker.consumer = consumer  # type: ignore[assignment]
    records = [OutputRecord("recommendations", b"u1", b"v", [])]
    worker.deliverer.produce(records)
    worker.committer.submit({}, {0: PartitionPosition(1, 100.0)}, records)
    deadline = time.monotonic() + 5
    while not worker.committer.failed and time.monotonic() < deadline:
        time.sleep(0.01)
    assert worker.committer.failed

    started = time.monotonic()
    try:
        with pytest.raises(CommitError, match="not delivered"):
            worker._shutdown()
        elapsed = time.monotonic() - started
    finally:
        consumer.release.set()

    assert consumer.close_called.is_set()
    assert elapsed < 1.0


def test_revoked_partition_logged_at_stored_position(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from statestore import StateStore, StoreConfig

    worker = make_worker(FakeProducer())
    with StateStore(StoreConfig(path=tmp_path / "state", sync=False)) as store:
        store.commit({}, {("interactions", 0): PartitionPosition(60955, 100.0)})
        worker.store = store
        # The worker processed further, but the commit of those batches failed.
        worker._positions = {0: PartitionPosition(61019, 200.0), 1: PartitionPosition(7, 1.0)}

        with caplog.at_level("INFO", logger="stream.rebalance"):
            worker._forget({0, 1}, "revoked")

    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "revoked interactions[0]@60955 (stored position)",
        "interactions[0]: offsets 60955 to 61018 were processed but their commit did not reach "
        "the state store, so the next owner processes them again",
        "revoked interactions[1]: no stored position, so its next owner starts at the earliest "
        "offset",
        "interactions[1]: offsets before 7 were processed but their commit did not reach the "
        "state store, so the next owner processes them again",
    ]


def test_first_start_revocation_logs_no_unstored_offsets(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from statestore import StateStore, StoreConfig

    worker = make_worker(FakeProducer())
    with StateStore(StoreConfig(path=tmp_path / "state", sync=False)) as store:
        # An empty store: the assignment starts each partition at offset 0, and nothing arrived.
        _assign(worker, AssignConsumer({}), store, [0])  # type: ignore[arg-type]

        with caplog.at_level("INFO", logger="stream.rebalance"):
            worker._forget({0}, "revoked")

    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "revoked interactions[0]: no stored position, so its next owner starts at the earliest "
        "offset"
    ]


def test_revocation_at_stored_position_logs_one_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from statestore import StateStore, StoreConfig

    worker = make_worker(FakeProducer())
    with StateStore(StoreConfig(path=tmp_path / "state", sync=False)) as store:
        store.commit({}, {("interactions", 0): PartitionPosition(50, 100.0)})
        worker.store = store
        worker._positions = {0: PartitionPosition(50, 100.0)}

        with caplog.at_level("INFO", logger="stream.rebalance"):
            worker._forget({0}, "revoked")

    assert [r.getMessage() for r in caplog.records] == [
        "revoked interactions[0]@50 (stored position)"
    ]


def test_consumer_refreshes_metadata_every_minute() -> None:
    config = WorkerConfig(brokers="b:9092", bundle=Path("x"))

    settings = consumer_settings(config)

    assert settings["topic.metadata.refresh.interval.ms"] == 60_000


def test_metadata_refresh_overridable_with_x() -> None:
    config = WorkerConfig(
        brokers="b:9092",
        bundle=Path("x"),
        kafka_settings={"topic.metadata.refresh.interval.ms": "2000"},
    )

    assert consumer_settings(config)["topic.metadata.refresh.interval.ms"] == "2000"
    assert producer_settings(config)["topic.metadata.refresh.interval.ms"] == "2000"


def test_metadata_refresh_setting_accepted_by_librdkafka() -> None:
    from confluent_kafka import Consumer

    config = WorkerConfig(brokers="127.0.0.1:1", bundle=Path("x"))

    Consumer(consumer_settings(config)).close()


class SizedStore:
    """A state store with the two calls of the store gauges."""

    def __init__(self, users: int = 0, fail: bool = False) -> None:
        self.users = users
        self.fail = fail
        self.calls = 0

    def check_files(self) -> None:
        pass

    def user_count(self) -> int:
        self.calls += 1
        if self.fail:
            from statestore.errors import StateStoreError

            raise StateStoreError("LMDB read failed")
        return self.users

    def environment_info(self) -> dict[str, int]:
        return {"map_size": 1 << 30, "used_bytes": 81_920, "data_bytes": 40_960, "page_size": 4096}


def _partition_metadata(topic: str, partitions: int, error: Any = None) -> Any:
    described = SimpleNamespace(partitions=dict.fromkeys(range(partitions)), error=error)
    return SimpleNamespace(topics={topic: described})


class MetadataConsumer:
    """A consumer whose list_topics returns `partitions` for the input topic."""

    def __init__(self, partitions: int) -> None:
        self.partitions = partitions
        self.requests: list[tuple[str, float]] = []

    def list_topics(self, topic: str, timeout: float) -> Any:
        self.requests.append((topic, timeout))
        return _partition_metadata(topic, self.partitions)


def _gauge(worker: Worker, name: str) -> float:
    return getattr(worker.metrics, name)._value.get()


def test_gauges_read_store_size() -> None:
    worker = make_worker(FakeProducer())
    worker.store = SizedStore(users=1234)

    worker._refresh_gauges()

    assert _gauge(worker, "state_users") == 1234
    assert _gauge(worker, "state_map_size") == 1 << 30
    assert _gauge(worker, "state_map_used") == 81_920
    assert _gauge(worker, "state_data") == 40_960


def test_gauges_refreshed_only_when_due() -> None:
    worker = make_worker(FakeProducer())
    store = SizedStore(users=1)
    consumer = MetadataConsumer(partitions=2)
    worker.store = store
    worker.consumer = consumer  # type: ignore[assignment]
    clock = [0.0]
    worker._store_gauges = Interval(5.0, lambda: clock[0])

    worker._refresh_gauges()
    clock[0] = 4.0
    worker._refresh_gauges()
    assert store.calls == 1

    clock[0] = 5.0
    worker._refresh_gauges()
    assert store.calls == 2
    # The partition count has a thread of its own, so the main loop sends no metadata request.
    assert consumer.requests == []


def test_store_gauge_failure_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    worker = make_worker(FakeProducer())
    worker.store = SizedStore(fail=True)

    with caplog.at_level("WARNING", logger="stream.metric_updates"):
        worker._refresh_gauges()

    assert [r.getMessage() for r in caplog.records] == [
        "reading the state store's size for the metrics failed: LMDB read failed"
    ]


class SlowMetadataConsumer(ClosingConsumer):
    """A consumer whose list_topics blocks until `release` is set, as on a slow broker, with
    the calls of a worker's run and shutdown."""

    def __init__(self) -> None:
        super().__init__()
        self.requested = threading.Event()
        self.release = threading.Event()

    def subscribe(self, *args: Any, **kwargs: Any) -> None:
        pass

    def list_topics(self, topic: str, timeout: float) -> Any:
        self.requested.set()
        self.release.wait(10)
        self.calls.append("list_topics")
        return _partition_metadata(topic, 3)


def test_partition_count_read_off_main_loop() -> None:
    worker = make_worker(FakeProducer())
    worker.store = SizedStore()
    consumer = SlowMetadataConsumer()
    worker.consumer = consumer  # type: ignore[assignment]
    turns: list[int] = []

    def collect() -> list[Any]:
        # The metadata request is in flight and blocked, and the main loop turns all the same.
        assert consumer.requested.wait(5)
        turns.append(len(turns))
        if len(turns) == 3:
            worker.request_stop()
            threading.Timer(0.2, consumer.release.set).start()
        return []

    worker._collect = collect  # type: ignore[method-assign]
    worker._idle = lambda: None  # type: ignore[method-assign]

    worker.run()

    assert turns == [0, 1, 2]
    # The shutdown waits for the request in flight before it closes the consumer.
    assert consumer.calls == ["list_topics", "unsubscribe", "close"]
    assert _gauge(worker, "input_partitions") == 3


def test_state_store_gauges_from_real_store(tmp_path: Path) -> None:
    import numpy as np

    from statestore import StateStore, StoreConfig, UserState

    worker = make_worker(FakeProducer())
    with StateStore(StoreConfig(path=tmp_path / "state", sync=False)) as store:
        state = UserState.new(np.zeros((1, 4), dtype=np.float32), 4)
        store.commit({f"u{index}": state for index in range(3)})
        worker.store = store

        worker._refresh_gauges()

        info = store.environment_info()
    assert _gauge(worker, "state_users") == 3
    assert _gauge(worker, "state_map_size") == info["map_size"]
    assert 0 < _gauge(worker, "state_map_used") <= info["map_size"]
    assert 0 < _gauge(worker, "state_data") == info["data_bytes"] <= info["used_bytes"]


@pytest.mark.parametrize(
    ("value", "seconds"),
    [(60_000, 60.0), ("2000", 2.0), ("100", 1.0), ("-1", 60.0), ("often", 60.0)],
)
def test_partition_count_follows_metadata_refresh(value: object, seconds: float) -> None:
    settings = {"topic.metadata.refresh.interval.ms": value}

    assert partition_count_seconds(settings) == seconds


class PausingConsumer:
    """A consumer that records the partitions that the timers pause and resume."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, list[int]]] = []

    def pause(self, partitions: list[TopicPartition]) -> None:
        self.calls.append(("pause", [tp.partition for tp in partitions]))

    def resume(self, partitions: list[TopicPartition]) -> None:
        self.calls.append(("resume", [tp.partition for tp in partitions]))


def test_timer_backlog_pause_names_partition(caplog: pytest.LogCaptureFixture) -> None:
    worker = make_worker(FakeProducer(), timer_limit=8)
    consumer = PausingConsumer()
    worker.consumer = consumer  # type: ignore[assignment]
    worker._positions = {2: PartitionPosition(5, 100.0)}

    with caplog.at_level("INFO", logger="stream.timers"):
        worker._set_timer_backlog(2, True)
        worker._set_timer_backlog(2, False)

    assert consumer.calls == [("pause", [2]), ("resume", [2])]
    assert _log_lines(caplog, "stream.timers") == [
        "paused interactions[2]: 8 or more idle sessions to close",
        "resumed interactions[2]: its idle sessions are closed",
    ]
    assert _gauge(worker, "paused_partitions") == 0


class FailingWatermarkConsumer:
    """A consumer whose cached watermark offsets fail, as for a partition it no longer has."""

    def get_watermark_offsets(self, tp: TopicPartition, cached: bool) -> tuple[int, int]:
        raise KafkaException(KafkaError(KafkaError._UNKNOWN_PARTITION))


def test_lag_read_failure_logged_at_debug(caplog: pytest.LogCaptureFixture) -> None:
    worker = make_worker(FakeProducer())
    worker.consumer = FailingWatermarkConsumer()  # type: ignore[assignment]
    worker.metrics.consumer_lag.labels("3").set(7)

    with caplog.at_level("DEBUG", logger="stream.metric_updates"):
        worker._update_lag({3: PartitionPosition(10, 100.0)})

    (line,) = _log_lines(caplog, "stream.metric_updates")
    assert line.startswith(
        "reading the high watermark of interactions[3] for the lag gauge failed: "
    )
    assert caplog.records[0].levelname == "DEBUG"
    assert worker.metrics.consumer_lag.labels("3")._value.get() == 7


def test_undelivered_at_shutdown_names_worker(caplog: pytest.LogCaptureFixture) -> None:
    producer = FakeProducer()
    producer.flush = lambda timeout: 3  # type: ignore[method-assign]
    worker = make_worker(producer)
    worker.label = "worker 1 (pid 42)"

    with caplog.at_level("INFO", logger="stream.worker"):
        worker._flush_producer(0.0)

    assert _log_lines(caplog, "stream.worker") == [
        "worker 1 (pid 42): 3 messages still undelivered at shutdown",
        "worker 1 (pid 42) stopped",
    ]


def _event(partition: int, offset: int) -> Any:
    from stream.events import Event

    return Event(
        user="u1",
        item="i1",
        row=1,
        ts=1_700_000_000.0,
        impressions=None,
        candidates=None,
        event_type=None,
        event_id="producer-id-1",
        topic="interactions",
        partition=partition,
        offset=offset,
        append_ts=None,
    )


def _recommendation(trigger: str | None = None) -> Any:
    from stream.pipeline import Recommendation

    event_id = None if trigger else "producer-id-1"
    return Recommendation("u1", event_id, 1_700_000_000.0, ("i2",), (0.5,), "v1", 1, trigger)


def test_event_output_names_its_input_position() -> None:
    worker = make_worker(FakeProducer())
    result = SimpleNamespace(outputs=[_recommendation(), _recommendation()])

    records = worker._output_records([_event(3, 41), _event(0, 7)], result)  # type: ignore[arg-type]

    sources = [dict(record.headers)["hiertcn.source"] for record in records]
    assert sources == [b"interactions[3]@41", b"interactions[0]@7"]
    assert all(dict(record.headers)["hiertcn.worker"] == worker.pid for record in records)


def test_session_close_output_has_no_input_position() -> None:
    worker = make_worker(FakeProducer())

    (record,) = worker._session_close_records([_recommendation("session_close")])

    assert "hiertcn.source" not in dict(record.headers)
