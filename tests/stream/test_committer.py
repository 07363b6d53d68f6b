"""The committer thread on a real LMDB store: pending reads, delivery order, group commits.

The producer is a fake whose delivery reports the test releases, so that the order of
"delivered" and "committed" can be checked. The integration tests run the committer inside the
worker against a real broker.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import KafkaError

from statestore import PartitionPosition, StateStore, StoreConfig, UserState
from stream.committer import CommitError, Committer, CommitterConfig
from stream.delivery import Deliverer, DeliveryConfig, OutputRecord
from tests.statestore.helpers import make_state

TOPIC = "events"


class GatedProducer:
    """Serves delivery reports only while `open` is set; `fail` makes every report a failure."""

    def __init__(self) -> None:
        self.open = threading.Event()
        self.fail = False
        self._reports: list[Any] = []
        self._lock = threading.Lock()

    def produce(self, topic: str, value: Any, key: Any, headers: Any, on_delivery: Any) -> None:
        with self._lock:
            self._reports.append(on_delivery)

    def poll(self, timeout: float) -> int:
        if not self.open.wait(timeout):
            return 0
        with self._lock:
            reports, self._reports = self._reports, []
        error = KafkaError(KafkaError._MSG_TIMED_OUT) if self.fail else None
        for callback in reports:
            callback(error, None)
        return len(reports)


class CountingStore:
    """A real StateStore that counts its commits and the states each one wrote."""

    def __init__(self, store: StateStore) -> None:
        self.store = store
        self.commits: list[set[str]] = []

    def read(self, users: Any) -> dict[str, UserState]:
        return self.store.read(users)

    def expired(self, partition: int, before_ts: float, limit: int) -> list[str]:
        return self.store.expired(partition, before_ts, limit)

    def commit(self, states: Any, positions: Any = None, deletes: Any = ()) -> None:
        self.store.commit(states, positions, deletes)
        self.commits.append(set(states))


@pytest.fixture
def store(tmp_path: Path) -> Iterator[CountingStore]:
    with StateStore(StoreConfig(path=tmp_path / "state", sync=False)) as real:
        yield CountingStore(real)


def make_committer(
    store: CountingStore, producer: GatedProducer, max_pending: int = 4
) -> tuple[Committer, Deliverer]:
    deliverer = Deliverer(
        producer,
        DeliveryConfig("127.0.0.1:1", timeout=0.2, attempts=2),
        on_latency=lambda seconds: None,
        on_retries=lambda count: None,
    )
    return Committer(store, deliverer, CommitterConfig(TOPIC, max_pending)), deliverer


def produced(deliverer: Deliverer, count: int = 1) -> list[OutputRecord]:
    records = [OutputRecord("out", b"u", b"v", []) for _ in range(count)]
    deliverer.produce(records)
    return records


def position(offset: int) -> dict[int, PartitionPosition]:
    return {0: PartitionPosition(offset, 100.0)}


def test_pending_state_is_read_back_before_its_commit(store: CountingStore) -> None:
    producer = GatedProducer()
    committer, deliverer = make_committer(store, producer)
    state = make_state(seed=1)

    committer.submit({"u1": state}, position(5), produced(deliverer))

    assert committer.read(["u1"])["u1"] is state
    assert store.read(["u1"]) == {}  # not delivered, so not committed
    producer.open.set()
    committer.drain()
    assert store.read(["u1"])["u1"].same_as(state)
    assert store.store.positions(TOPIC)[0].next_offset == 5
    assert committer.take_committed() == position(5)
    assert committer.take_committed() == {}
    committer.close()


def test_batches_waiting_together_share_one_commit(store: CountingStore) -> None:
    producer = GatedProducer()
    committer, deliverer = make_committer(store, producer)
    older, newer = make_state(seed=1), make_state(seed=2)

    committer.submit({"u1": older, "u2": make_state(seed=3)}, position(5), produced(deliverer))
    committer.submit({"u1": newer}, position(9), produced(deliverer))
    producer.open.set()
    committer.drain()

    assert store.commits == [{"u1", "u2"}]
    assert store.read(["u1"])["u1"].same_as(newer)
    assert store.store.positions(TOPIC)[0].next_offset == 9
    committer.close()


def test_newer_pending_state_survives_older_commit(
    store: CountingStore,
) -> None:
    producer = GatedProducer()
    committer, deliverer = make_committer(store, producer)
    first_records = produced(deliverer)
    committer.submit({"u1": make_state(seed=1)}, position(5), first_records)
    producer.open.set()
    committer.drain()
    producer.open.clear()
    newer = make_state(seed=2)

    committer.submit({"u1": newer}, position(9), produced(deliverer))

    assert committer.read(["u1"])["u1"] is newer
    producer.open.set()
    committer.close()
    assert store.read(["u1"])["u1"].same_as(newer)


def test_submit_waits_while_max_pending_batches_are_pending(store: CountingStore) -> None:
    producer = GatedProducer()
    committer, deliverer = make_committer(store, producer, max_pending=1)
    committer.submit({"u1": make_state(seed=1)}, position(1), produced(deliverer))
    done = threading.Event()

    def second() -> None:
        committer.submit({"u2": make_state(seed=2)}, position(2), produced(deliverer))
        done.set()

    thread = threading.Thread(target=second)
    thread.start()
    assert not done.wait(0.3)  # blocked behind the undelivered first batch
    producer.open.set()
    assert done.wait(5)
    thread.join()
    committer.close()
    assert set(store.read(["u1", "u2"])) == {"u1", "u2"}


def test_zero_pending_commits_before_submit_returns(store: CountingStore) -> None:
    producer = GatedProducer()
    producer.open.set()
    committer, deliverer = make_committer(store, producer, max_pending=0)

    committer.submit({"u1": make_state(seed=1)}, position(3), produced(deliverer))

    assert "u1" in store.read(["u1"])
    assert committer.pending_batches() == 0
    committer.close()


def test_failed_delivery_commits_nothing_and_raises(store: CountingStore) -> None:
    producer = GatedProducer()
    producer.fail = True
    producer.open.set()
    committer, deliverer = make_committer(store, producer)

    committer.submit({"u1": make_state(seed=1)}, position(3), produced(deliverer))

    with pytest.raises(CommitError, match="not delivered"):
        committer.drain()
    assert store.commits == []
    assert store.store.positions(TOPIC) == {}
    with pytest.raises(CommitError):
        committer.submit({"u2": make_state(seed=2)}, position(4))
    with pytest.raises(CommitError):
        committer.close()


def test_failed_commit_log_counts_batches(
    store: CountingStore, caplog: pytest.LogCaptureFixture
) -> None:
    producer = GatedProducer()
    producer.fail = True
    producer.open.set()
    committer, deliverer = make_committer(store, producer)

    with caplog.at_level(logging.ERROR, logger="stream.committer"):
        committer.submit({"u1": make_state(seed=1)}, position(3), produced(deliverer))
        with pytest.raises(CommitError):
            committer.drain()

    (line,) = [record.getMessage() for record in caplog.records]
    assert line.startswith("commit of 1 batch failed: ")


def test_expired_skips_stale_timer_entries(
    store: CountingStore,
) -> None:
    producer = GatedProducer()
    producer.open.set()
    committer, deliverer = make_committer(store, producer)
    # Stored: u1 and u2 have sessions open since t=10 on partition 0.
    committer.submit(
        {"u1": make_state(seed=1, last_ts=10.0), "u2": make_state(seed=2, last_ts=10.0)},
        position(1),
    )
    committer.drain()
    producer.open.clear()
    # Pending: u1's session is closed, u3 has one open since t=20, u4 is on partition 1.
    closed = replace(make_state(seed=1, last_ts=10.0), session_length=0)
    committer.submit(
        {
            "u1": closed,
            "u3": make_state(seed=3, last_ts=20.0),
            "u4": make_state(seed=4, last_ts=5.0, partition=1),
        },
        position(2),
        produced(deliverer),
    )

    assert committer.expired(0, before_ts=50.0, limit=10) == ["u3", "u2"]
    assert committer.expired(0, before_ts=15.0, limit=10) == ["u2"]
    assert committer.expired(0, before_ts=50.0, limit=1) == ["u3"]
    producer.open.set()
    committer.close()
    assert store.store.expired(0, 50.0, 10) == ["u2", "u3"]


def test_close_commits_everything_pending(store: CountingStore) -> None:
    producer = GatedProducer()
    committer, deliverer = make_committer(store, producer)
    committer.submit({"u1": make_state(seed=1)}, position(1), produced(deliverer, 3))
    threading.Timer(0.1, producer.open.set).start()

    started = time.monotonic()
    committer.close()

    assert time.monotonic() - started >= 0.05
    assert "u1" in store.read(["u1"])


def test_forget_keeps_lost_partition_out_of_lmdb(store: CountingStore) -> None:
    producer = GatedProducer()
    committer, deliverer = make_committer(store, producer)
    other_partition_state = make_state(seed=9, partition=1)
    committer.submit(
        {"u1": make_state(seed=1), "u9": other_partition_state},
        {0: PartitionPosition(5, 100.0), 1: PartitionPosition(7, 100.0)},
        produced(deliverer),
    )

    committer.forget({0})
    # The new owner of partition 0, another process of the pool, commits before the outputs of
    # the forgotten batch are acknowledged.
    newer = make_state(seed=2)
    store.store.commit({"u1": newer}, {(TOPIC, 0): PartitionPosition(20, 200.0)})
    assert committer.read(["u1"])["u1"].same_as(newer)
    producer.open.set()
    committer.drain()

    stored = store.store.positions(TOPIC)
    assert stored[0].next_offset == 20
    assert stored[1].next_offset == 7
    assert store.read(["u1"])["u1"].same_as(newer)
    assert store.read(["u9"])["u9"].same_as(other_partition_state)
    assert set(committer.take_committed()) == {1}
    committer.close()


class BlockingStore(CountingStore):
    """A CountingStore whose commits wait until `release` is set."""

    def __init__(self, store: StateStore) -> None:
        super().__init__(store)
        self.entered = threading.Event()
        self.release = threading.Event()

    def commit(self, states: Any, positions: Any = None, deletes: Any = ()) -> None:
        self.entered.set()
        assert self.release.wait(5)
        super().commit(states, positions, deletes)


def test_forget_waits_for_running_write(store: CountingStore) -> None:
    blocking = BlockingStore(store.store)
    producer = GatedProducer()
    producer.open.set()
    committer, deliverer = make_committer(blocking, producer)
    committer.submit({"u1": make_state(seed=1)}, position(5), produced(deliverer))
    assert blocking.entered.wait(5)
    done = threading.Event()

    def forget() -> None:
        committer.forget({0})
        done.set()

    thread = threading.Thread(target=forget)
    thread.start()
    assert not done.wait(0.2)  # the write that contains partition 0 is still running
    blocking.release.set()
    assert done.wait(5)
    thread.join()
    committer.close()
    assert committer.read(["u1"]) != {}  # written before `forget`, so it stays


class FlakyProducer:
    """Fails the first delivery of each message value and delivers the second, reporting each
    `delay` seconds after its produce, as a broker that times out once would."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self._attempts: dict[Any, int] = {}
        self._reports: list[tuple[float, Any, KafkaError | None]] = []
        self._lock = threading.Lock()

    def produce(self, topic: str, value: Any, key: Any, headers: Any, on_delivery: Any) -> None:
        with self._lock:
            attempt = self._attempts[value] = self._attempts.get(value, 0) + 1
            error = KafkaError(KafkaError._MSG_TIMED_OUT) if attempt == 1 else None
            self._reports.append((time.monotonic() + self.delay, on_delivery, error))

    def poll(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while True:
            now = time.monotonic()
            with self._lock:
                due = [report for report in self._reports if report[0] <= now]
                self._reports = [report for report in self._reports if report[0] > now]
            for _due, callback, error in due:
                callback(error, None)
            if due or now >= deadline:
                return len(due)
            time.sleep(0.005)


def test_group_delivery_wait_stays_within_attempts(store: CountingStore) -> None:
    blocking = BlockingStore(store.store)
    producer = FlakyProducer(delay=0.3)
    deliverer = Deliverer(
        producer,
        DeliveryConfig("127.0.0.1:1", timeout=0.5, attempts=2),
        on_latency=lambda seconds: None,
        on_retries=lambda count: None,
    )
    committer = Committer(blocking, deliverer, CommitterConfig(TOPIC, max_pending=4))
    # A first batch without outputs keeps the thread inside its commit, so that the next three
    # batches are committed as one group.
    committer.submit({"u0": make_state(seed=0)}, position(1))
    assert blocking.entered.wait(5)
    for index in range(1, 4):
        records = [OutputRecord("out", b"u", f"v{index}".encode(), [])]
        deliverer.produce(records)
        committer.submit({f"u{index}": make_state(seed=index)}, position(index + 1), records)

    started = time.monotonic()
    blocking.release.set()
    committer.drain()
    elapsed = time.monotonic() - started

    # Each record needs one retry, which two attempts allow. Waiting batch by batch took 1.2 s
    # here, because each batch's retry started only after the previous batch was delivered.
    assert elapsed < 2 * 0.5
    assert set(store.read([f"u{index}" for index in range(4)])) == {"u0", "u1", "u2", "u3"}
    assert store.store.positions(TOPIC)[0].next_offset == 4
    committer.close()


def test_submit_after_close_is_rejected(store: CountingStore) -> None:
    producer = GatedProducer()
    producer.open.set()
    committer, _deliverer = make_committer(store, producer)
    committer.close()

    with pytest.raises(CommitError, match="submit after close"):
        committer.submit({"u1": make_state(seed=1)}, position(1))
