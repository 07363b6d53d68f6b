"""The worker's session-close outputs without a broker: a real pipeline on the numpy fake
bundle, a real LMDB store and committer, and a producer whose deliveries the test controls."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import msgpack
import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from statestore import PartitionPosition, StateStore, StoreConfig
from stream.config import WorkerConfig
from stream.events import EventConfig, Position, decode_event
from stream.metrics import create_metrics
from stream.pipeline import Pipeline, PipelineConfig
from stream.timers import CLOCK_LOG_SECONDS
from stream.worker import Worker
from tests.stream.fake_bundle import FakeBundle
from tests.stream.messages import event_message

GAP = 600.0
# Event times well in the past, so that the ts_in_future check accepts them.
START = time.time() - 100_000.0


class HeldProducer:
    """A producer that keeps each delivery report until `deliver` runs it."""

    def __init__(self, hold: bool = False) -> None:
        self.hold = hold
        self.produced: list[tuple[bytes, dict[str, Any]]] = []  # (key, output map)
        self.reports: list[Callable[[Any, Any], None]] = []

    def produce(self, topic: str, value: Any, key: Any, headers: Any, on_delivery: Any) -> None:
        self.produced.append((key, msgpack.unpackb(value)))
        if self.hold:
            self.reports.append(on_delivery)
        else:
            on_delivery(None, None)

    def deliver(self) -> None:
        reports, self.reports = self.reports, []
        for report in reports:
            report(None, None)

    def flush(self, timeout: float) -> int:
        return 0

    def poll(self, timeout: float) -> int:
        time.sleep(min(timeout, 0.01))
        return 0


@pytest.fixture
def make_worker(tmp_path: Path) -> Iterator[Callable[..., Worker]]:
    workers: list[Worker] = []

    def make(producer: HeldProducer, publish: bool = True, **settings: Any) -> Worker:
        state_dir = tmp_path / f"state{len(workers)}"
        config = WorkerConfig(
            brokers="127.0.0.1:1",
            bundle=Path("bundle"),
            state_dir=state_dir,
            publish_on_session_close=publish,
            **settings,
        )
        bundle = FakeBundle()
        pipeline = Pipeline(
            bundle, PipelineConfig(session_gap=GAP, top_k=5, session_close_outputs=publish)
        )
        store = StateStore(StoreConfig(path=state_dir, sync=False))
        consumer = SimpleNamespace(get_watermark_offsets=lambda tp, cached: (0, 0))
        metrics = create_metrics(CollectorRegistry())
        parts: tuple[Any, ...] = (config, pipeline, store, metrics, consumer, producer)
        worker = Worker(*parts, bundle.row_of)
        workers.append(worker)
        return worker

    yield make
    for worker in workers:
        worker.committer.close(timeout=10)
        worker.store.close()


def counter(worker: Worker, trigger: str) -> float:
    return worker.metrics.outputs_produced.labels(trigger)._value.get()


def test_batch_timer_close_output_follows_events(make_worker) -> None:
    producer = HeldProducer()
    worker = make_worker(producer)
    worker._process([event_message(0, 0, "u1", 3, START), event_message(0, 1, "u2", 4, START + 10)])

    # u2's next event moves the watermark past u1's last event plus the gap.
    worker._process([event_message(0, 2, "u2", 5, START + 1000)])
    worker.committer.drain()

    outputs = [output for _key, output in producer.produced]
    assert [(o["user"], o.get("trigger")) for o in outputs] == [
        ("u1", None),
        ("u2", None),
        ("u2", None),
        ("u1", "session_close"),
    ]
    close = outputs[-1]
    assert producer.produced[-1][0] == b"u1"
    assert close["event_id"] is None
    assert close["ts"] == START + GAP
    assert close["session"] == 2
    stored = worker.store.read(["u1"])["u1"]
    assert stored.session_length == 0
    np.testing.assert_array_equal(stored.last_embedding, session_start(worker, stored.gru_state))
    assert counter(worker, "event") == 3
    assert counter(worker, "session_close") == 1
    # The end-to-end latency counts the three event outputs only.
    assert latency_count(worker) == 3


def session_start(worker: Worker, gru_state: np.ndarray) -> np.ndarray:
    """Return the fake bundle's user embedding [D] for an empty prefix after `gru_state`."""
    prefix = np.zeros((1, 1, worker.pipeline.dim), dtype=np.float32)
    lengths = np.zeros(1, dtype=np.int64)
    return worker.pipeline.bundle.session_step(prefix, lengths, gru_state[None])[0]


def latency_count(worker: Worker) -> float:
    samples = worker.metrics.end_to_end_latency.collect()[0].samples
    return next(sample.value for sample in samples if sample.name.endswith("_count"))


def test_idle_timer_close_commits_after_delivery(make_worker) -> None:
    producer = HeldProducer()
    worker = make_worker(producer)
    worker._process([event_message(0, 0, "u1", 3, START), event_message(0, 1, "u2", 4, START + 10)])
    worker.committer.drain()
    producer.produced.clear()
    producer.hold = True

    # An assignment with a stored watermark beyond both sessions' expiry makes a timer pass due.
    worker._positions[0] = PartitionPosition(2, START + 5000)
    worker._timers_due.add(0)
    worker._idle()
    time.sleep(0.3)

    closes = [output for _key, output in producer.produced]
    assert sorted(o["user"] for o in closes) == ["u1", "u2"]
    assert {o["trigger"] for o in closes} == {"session_close"}
    assert {o["user"]: o["ts"] for o in closes} == {"u1": START + GAP, "u2": START + 10 + GAP}
    # Undelivered outputs hold back the commit of the states that produced them.
    assert worker.committer.pending_batches() == 1
    assert worker.store.read(["u1"])["u1"].session_length == 1

    producer.deliver()
    worker.committer.drain()

    stored = worker.store.read(["u1", "u2"])
    assert stored["u1"].session_length == 0
    assert stored["u2"].session_length == 0
    assert counter(worker, "session_close") == 2


def test_worker_without_flag_publishes_events_only(make_worker) -> None:
    producer = HeldProducer()
    worker = make_worker(producer, publish=False)
    worker._process([event_message(0, 0, "u1", 3, START), event_message(0, 1, "u2", 4, START + 10)])
    worker._process([event_message(0, 2, "u2", 5, START + 1000)])
    worker._positions[0] = PartitionPosition(3, START + 5000)
    worker._timers_due.add(0)
    worker._idle()
    worker.committer.drain()

    outputs = [output for _key, output in producer.produced]
    assert [o["user"] for o in outputs] == ["u1", "u2", "u2"]
    assert all("trigger" not in o for o in outputs)
    assert worker.store.read(["u2"])["u2"].session_length == 0
    assert counter(worker, "event") == 3


def stale_state(row: int, last_ts: float) -> Any:
    """Return a state with an open session of item `row` from a bundle with 500 items."""
    big = FakeBundle(num_items=500)
    pipeline = Pipeline(big, PipelineConfig(session_gap=GAP))
    message = event_message(0, 0, "old", row, last_ts)
    event = decode_event(
        message.key(), message.value(), Position("interactions", 0, 0), big.row_of, EventConfig()
    )
    return pipeline.process([event], {}).states["old"]


def resets(worker: Worker) -> float:
    return worker.metrics.states_reset._value.get()


def timer_closes(worker: Worker) -> float:
    return worker.metrics.sessions_closed.labels("timer")._value.get()


def test_idle_timer_reset_counted(make_worker) -> None:
    worker = make_worker(HeldProducer())
    worker.store.commit({"old": stale_state(400, START)})
    worker._process([event_message(0, 0, "u1", 3, START)])
    worker.committer.drain()

    worker._positions[0] = PartitionPosition(1, START + 5000)
    worker._timers_due.add(0)
    worker._idle()
    worker.committer.drain()

    assert resets(worker) == 1
    # u1's session closed; the reset state had its session dropped, not closed.
    assert timer_closes(worker) == 1
    assert worker.store.read(["old"])["old"].session_length == 0


def test_batch_timer_reset_counted(make_worker) -> None:
    worker = make_worker(HeldProducer())
    worker.store.commit({"old": stale_state(400, START)})

    # u1's event moves the watermark past the stored session's expiry.
    worker._process([event_message(0, 0, "u1", 3, START + 5000)])
    worker.committer.drain()

    assert resets(worker) == 1
    assert timer_closes(worker) == 0
    assert worker.store.read(["old"])["old"].session_length == 0


# --idle-partition-seconds of the tests below.
DELAY = 30.0


def quiet_pass(worker: Worker, seconds: float) -> list[tuple[str, Any]]:
    """Run a quiet-partition pass `seconds` after partition 0's last event, publish what it
    closes, and return the (user, trigger) of each output it produced."""
    since, _watermark = worker._last_events[0]
    before = len(worker.producer.produced)
    for idle in worker._close_quiet_partitions(since + seconds):
        worker._publish_timer_closes(idle)
    worker.committer.drain()
    return [(o["user"], o.get("trigger")) for _key, o in worker.producer.produced[before:]]


def test_quiet_partition_timers_follow_clock(make_worker, caplog: pytest.LogCaptureFixture) -> None:
    worker = make_worker(HeldProducer(), idle_partition_seconds=DELAY)
    worker._positions[0] = PartitionPosition(0, float("-inf"))
    worker._process([event_message(0, 0, "u1", 3, START), event_message(0, 1, "u2", 4, START + 5)])
    worker.committer.drain()

    with caplog.at_level(logging.INFO, logger="stream.timers"):
        # The clock's watermark is the last event's time, START + 5, plus the seconds since
        # less DELAY. A session stays open while its last event plus GAP is not behind it.
        assert quiet_pass(worker, DELAY) == []
        assert quiet_pass(worker, DELAY + GAP - 5) == []
        assert quiet_pass(worker, DELAY + GAP - 4) == [("u1", "session_close")]
        assert quiet_pass(worker, DELAY + GAP) == []
        assert quiet_pass(worker, DELAY + GAP + 1) == [("u2", "session_close")]

    stored = worker.store.read(["u1", "u2"])
    assert stored["u1"].session_length == 0
    assert stored["u2"].session_length == 0
    assert timer_closes(worker) == 2
    # The stored position keeps the newest event time.
    assert worker.store.positions("interactions")[0] == PartitionPosition(2, START + 5)
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        f"interactions[0] has received no event for {DELAY + GAP - 5:.0f} s: its session timers "
        "follow the clock (--idle-partition-seconds 30) until its next event"
    ]


def test_event_puts_partition_back_on_event_time(
    make_worker, caplog: pytest.LogCaptureFixture
) -> None:
    worker = make_worker(HeldProducer(), idle_partition_seconds=DELAY)
    worker._positions[0] = PartitionPosition(0, float("-inf"))
    worker._process([event_message(0, 0, "u1", 3, START)])
    with caplog.at_level(logging.INFO, logger="stream.timers"):
        assert quiet_pass(worker, DELAY + 1) == []
        assert 0 in worker._on_clock

        worker._process([event_message(0, 1, "u2", 4, START + 100)])
        # Measured from u2's event now: u1's session is 100 s older than u2's.
        assert 0 not in worker._on_clock
        assert quiet_pass(worker, DELAY + GAP - 99) == [("u1", "session_close")]

        # A third spell, CLOCK_LOG_SECONDS after the first line, is logged again.
        worker._process([event_message(0, 2, "u3", 5, START + 200)])
        quiet_pass(worker, CLOCK_LOG_SECONDS + DELAY + 2)

    # One line per quiet spell, at most one per CLOCK_LOG_SECONDS.
    assert len(caplog.records) == 2


def test_quiet_pass_off_without_flag(make_worker) -> None:
    worker = make_worker(HeldProducer())
    worker._positions[0] = PartitionPosition(0, float("-inf"))
    worker._process([event_message(0, 0, "u1", 3, START)])

    assert worker._close_quiet_partitions(1e12) == []
    assert worker._last_events == {}  # the batches skip the bookkeeping without the flag


def test_quiet_pass_backlog_pauses_nothing(make_worker) -> None:
    # The consumer of make_worker has no pause(): a pause would raise AttributeError.
    worker = make_worker(HeldProducer(), idle_partition_seconds=DELAY, timer_limit=2)
    worker._positions[0] = PartitionPosition(0, float("-inf"))
    events = [event_message(0, n, f"u{n}", 3, START + n) for n in range(5)]
    worker._process(events)
    worker.committer.drain()

    closed = [quiet_pass(worker, DELAY + GAP + 10) for _ in range(3)]

    assert [len(outputs) for outputs in closed] == [2, 2, 1]
    assert worker._paused == set()
    assert worker._timers_due == set()


def test_revoked_partition_forgets_its_last_events(make_worker) -> None:
    worker = make_worker(HeldProducer(), idle_partition_seconds=DELAY)
    worker._positions[0] = PartitionPosition(0, float("-inf"))
    worker._process([event_message(0, 0, "u1", 3, START)])
    quiet_pass(worker, DELAY + 1)

    worker._forget({0}, "revoked")

    assert worker._last_events == {}
    assert worker._on_clock == set()


def test_partition_with_unread_events_is_not_quiet(make_worker) -> None:
    worker = make_worker(HeldProducer(), idle_partition_seconds=DELAY)
    worker._positions[0] = PartitionPosition(0, float("-inf"))
    worker._process([event_message(0, 0, "u1", 3, START)])
    # The broker has events up to offset 5 that the worker has not read: it is behind.
    worker.consumer = SimpleNamespace(get_watermark_offsets=lambda tp, cached: (0, 5))

    assert quiet_pass(worker, DELAY + GAP + 1) == []
    assert worker._on_clock == set()

    worker.consumer = SimpleNamespace(get_watermark_offsets=lambda tp, cached: (0, 1))
    assert quiet_pass(worker, DELAY + GAP + 1) == [("u1", "session_close")]


def test_dead_letters_leave_partition_quiet(make_worker) -> None:
    worker = make_worker(HeldProducer(), idle_partition_seconds=DELAY)
    worker._positions[0] = PartitionPosition(0, float("-inf"))
    worker._process([event_message(0, 0, "u1", 3, START)])
    since = worker._last_events[0]

    # An unknown item: a dead letter, which moves the offset but not event time.
    worker._process([event_message(0, 1, "u2", 10_000, START + 50)])

    assert worker._last_events[0] == since
    assert quiet_pass(worker, DELAY + GAP + 1) == [("u1", "session_close")]


def test_events_of_unassigned_partition_not_noted(make_worker) -> None:
    worker = make_worker(HeldProducer(), idle_partition_seconds=DELAY)
    worker._positions[0] = PartitionPosition(0, float("-inf"))

    worker._process([event_message(1, 0, "u1", 3, START)])

    assert worker._last_events == {}
