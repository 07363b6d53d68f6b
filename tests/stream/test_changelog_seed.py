"""`hiertcn-stream changelog seed` without a broker: the records it selects from a real LMDB
store, the states it skips, its settings, its exit codes, and its two delivery phases.

tests/integration/test_changelog_seed.py seeds a changelog on a broker and hands partitions
over through it.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import KafkaError

from statestore import PartitionPosition, StateStore, StoreConfig, locks
from statestore.codec import encode_state
from statestore.keys import encode_position, position_key
from stream.changelog_seed import (
    SEED_NAMED_SKIPS,
    SeedCounts,
    SeedScope,
    describe_skips,
    position_records,
    state_record_chunks,
)
from stream.cli import build_parser, main
from stream.commands import changelog as seed
from stream.commands.changelog import (
    SeedDeliveryError,
    SeedInputError,
    check_not_all_behind,
    partitions_behind,
    produce_seed,
)
from stream.commands.changelog_args import DEFAULT_MESSAGE_TIMEOUT_MS, SeedConfig, seed_config
from stream.config import WorkerConfig
from stream.errors import ConfigError
from tests.statestore.helpers import make_state

INPUT = "interactions"
CHANGELOG = "interactions.changelog"
PARTITIONS = 4
# Users and the partition of each: 0 to 2 have stored positions, 3 has none, -1 is a replay's
# and 7 lies beyond the input topic's 4 partitions.
USERS = {
    "alice": 0,
    "bob": 1,
    "carol": 2,
    "dave": 0,
    "erin": 3,
    "frank": -1,
    "grace": 7,
}
COVERED = ["alice", "bob", "carol", "dave"]
# Stored positions of the input topic. Partition 9 lies beyond its partitions.
POSITIONS = {
    0: PartitionPosition(120, 1_700_000_100.0),
    1: PartitionPosition(80, 1_700_000_050.0),
    2: PartitionPosition(5, 1_700_000_010.0),
    9: PartitionPosition(3, 1_700_000_001.0),
}


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    """A closed store with the states of USERS and the positions of POSITIONS."""
    path = tmp_path / "state"
    states = {
        user: make_state(seed=index, partition=p) for index, (user, p) in enumerate(USERS.items())
    }
    positions = {(INPUT, partition): position for partition, position in POSITIONS.items()}
    with StateStore(StoreConfig(path=path, sync=False)) as store:
        store.commit(states, positions)
        # A position of another topic, which seed must ignore.
        store.commit({}, {("other", 0): PartitionPosition(7, 0.0)})
    return path


@pytest.fixture
def store(state_dir: Path) -> Iterator[StateStore]:
    with StateStore(StoreConfig(path=state_dir, writer_lock="none")) as opened:
        yield opened


def make_scope(store: StateStore) -> SeedScope:
    return SeedScope(INPUT, PARTITIONS, store.positions(INPUT))


def test_state_records_cover_partitions_with_positions(store: StateStore) -> None:
    counts = SeedCounts()

    chunks = list(state_record_chunks(store, CHANGELOG, make_scope(store), counts, chunk_users=3))

    assert [len(chunk) for chunk in chunks] == [3, 1]
    records = [record for chunk in chunks for record in chunk]
    stored = store.read(COVERED)
    assert sorted(record.key for record in records) == sorted(b"u" + u.encode() for u in COVERED)
    for record in records:
        user = record.key[1:].decode()
        assert record.topic == CHANGELOG
        assert record.partition == USERS[user]
        assert record.value == encode_state(stored[user])
        assert record.headers == []
    assert counts.users == 4
    assert counts.users_read == len(USERS)


def test_state_records_skip_other_partitions(store: StateStore) -> None:
    counts = SeedCounts()

    list(state_record_chunks(store, CHANGELOG, make_scope(store), counts))

    assert dict(counts.skipped_users) == {3: 1, -1: 1, 7: 1}
    assert sorted(counts.skipped_names) == ["erin", "frank", "grace"]


def test_position_records_of_input_partitions(store: StateStore) -> None:
    counts = SeedCounts()

    records = position_records(CHANGELOG, make_scope(store), counts)

    assert [record.partition for record in records] == [0, 1, 2]
    for record in records:
        assert record.topic == CHANGELOG
        assert record.key == b"p" + position_key(INPUT, record.partition)
        assert record.value == encode_position(POSITIONS[record.partition])
    assert counts.positions == 3
    assert counts.skipped_positions == [9]


def test_counts_bytes_of_keys_and_values(store: StateStore) -> None:
    counts = SeedCounts()
    scope = make_scope(store)

    states = [r for chunk in state_record_chunks(store, CHANGELOG, scope, counts) for r in chunk]
    records = states + position_records(CHANGELOG, scope, counts)

    assert counts.bytes == sum(len(record.key) + len(record.value) for record in records)
    assert counts.skipped == 4


def test_skip_warning_names_reasons_and_users(store: StateStore) -> None:
    counts = SeedCounts()
    scope = make_scope(store)
    list(state_record_chunks(store, CHANGELOG, scope, counts))
    position_records(CHANGELOG, scope, counts)

    warning = describe_skips(counts, scope)

    assert warning is not None
    assert "1 user state of partition -1 (a replay's, not a partition of interactions)" in warning
    assert "1 user state of partition 3 (the store has no position of interactions[3])" in warning
    assert "1 user state of partition 7 (interactions has 4 partitions)" in warning
    assert "the position of partition 9 (interactions has 4 partitions)" in warning
    assert warning.endswith("starts these users anew: erin, frank, grace")


def test_skip_warning_lists_first_users_only() -> None:
    counts = SeedCounts()
    for number in range(SEED_NAMED_SKIPS + 2):
        counts.skip_user(f"u{number}", 5)

    warning = describe_skips(counts, SeedScope(INPUT, PARTITIONS, {}))

    assert warning is not None
    assert f"{SEED_NAMED_SKIPS + 2} user states of partition 5" in warning
    assert warning.endswith(f"u{SEED_NAMED_SKIPS - 1}, ...")


def test_no_skip_warning_without_skips() -> None:
    assert describe_skips(SeedCounts(users=3), SeedScope(INPUT, PARTITIONS, {})) is None


def test_partitions_behind_the_group() -> None:
    positions = {0: PartitionPosition(10, 0.0), 1: PartitionPosition(20, 0.0)}

    assert partitions_behind(positions, {0: 10, 1: 21, 2: 50}) == [1]
    assert partitions_behind(positions, {0: 9, 1: 20}) == []
    assert partitions_behind(positions, {}) == []


def test_partition_behind_group_skipped(store: StateStore) -> None:
    # Partition 1 moved to another host, which processed it up to offset 95 since.
    scope = SeedScope(INPUT, PARTITIONS, store.positions(INPUT), behind={1: 95})
    counts = SeedCounts()

    records = [r for chunk in state_record_chunks(store, CHANGELOG, scope, counts) for r in chunk]
    positions = position_records(CHANGELOG, scope, counts)

    assert sorted(record.key for record in records) == [b"ualice", b"ucarol", b"udave"]
    assert [record.partition for record in positions] == [0, 2]
    assert counts.skipped_users[1] == 1
    assert counts.skipped_positions == [1, 9]


def test_skip_warning_names_partitions_behind(store: StateStore) -> None:
    scope = SeedScope(INPUT, PARTITIONS, store.positions(INPUT), behind={1: 95})
    counts = SeedCounts()
    list(state_record_chunks(store, CHANGELOG, scope, counts))
    position_records(CHANGELOG, scope, counts)

    warning = describe_skips(counts, scope)

    assert warning is not None
    behind = "(the stored position 80 is behind the consumer group's committed offset 95)"
    assert f"1 user state of partition 1 {behind}" in warning
    assert f"the position of partition 1 {behind}" in warning
    assert "Another state directory has processed interactions[1] since" in warning
    assert "seed from that host's state directory too" in warning
    # Bob's state is current on the host that processed partition 1 last.
    assert warning.endswith("starts these users anew: erin, frank, grace")


def test_seed_rejected_when_every_partition_behind() -> None:
    config = WorkerConfig(brokers="b:1", bundle=Path(), changelog_topic=CHANGELOG)
    positions = {0: PartitionPosition(10, 0.0), 1: PartitionPosition(20, 0.0)}
    # Partition 9 lies beyond the topic's partitions and does not count.
    with_extra = {**positions, 9: PartitionPosition(3, 0.0)}

    check_not_all_behind(config, positions, PARTITIONS, {1: 25})
    check_not_all_behind(config, {}, PARTITIONS, {})
    with pytest.raises(SeedInputError) as raised:
        check_not_all_behind(config, with_extra, PARTITIONS, {0: 11, 1: 25})

    message = str(raised.value)
    assert raised.value.exit_code == 2
    assert "is behind consumer group hiertcn on every partition that it has a position" in message
    assert "interactions[0] stored 10, committed 11, interactions[1] stored 20, committed 25" in (
        message
    )


# -- configuration ---------------------------------------------------------------------------


def seed_args(*extra: str) -> argparse.Namespace:
    argv = ["changelog", "seed", "--state-dir", "state", "--brokers", "127.0.0.1:9092"]
    return build_parser().parse_args([*argv, "--changelog-topic", CHANGELOG, *extra])


def test_config_from_flags_and_defaults() -> None:
    config = seed_config(seed_args(), {})

    assert config.worker.state_dir == Path("state")
    assert config.worker.input_topic == "interactions"
    assert config.worker.group_id == "hiertcn"
    assert config.worker.changelog_topic == CHANGELOG
    assert config.message_timeout == DEFAULT_MESSAGE_TIMEOUT_MS / 1000
    assert config.producer_settings["enable.idempotence"] is True
    assert config.producer_settings["acks"] == "all"
    assert config.dry_run is False


def test_config_reads_run_variables() -> None:
    environ = {
        "HIERTCN_INPUT_TOPIC": "clicks",
        "HIERTCN_GROUP_ID": "pool",
        "HIERTCN_PROCESSES": "not a number",  # an option of `run` that seed does not read
        "HIERTCN_KAFKA_SECURITY_PROTOCOL": "PLAINTEXT",
    }

    config = seed_config(seed_args(), environ)

    assert config.worker.input_topic == "clicks"
    assert config.worker.group_id == "pool"
    assert config.worker.kafka_settings == {"security.protocol": "PLAINTEXT"}
    assert config.producer_settings["security.protocol"] == "PLAINTEXT"


def test_config_keeps_producer_settings_from_admin() -> None:
    config = seed_config(seed_args("-X", "linger.ms=50", "-X", "message.timeout.ms=0"), {})

    assert config.worker.kafka_settings == {}
    assert config.producer_settings["linger.ms"] == "50"
    assert config.message_timeout is None


@pytest.mark.parametrize(
    ("extra", "environ", "message"),
    [
        (["-X", "acks=1"], {}, "-X acks=1 is invalid because"),
        (["-X", "transactional.id=t"], {}, "-X transactional.id is rejected"),
        (["-X", "bootstrap.servers=h:1"], {}, "would replace the value of --brokers"),
        (["-X", "group.id=g"], {}, "would replace the value of --group-id"),
        ([], {"HIERTCN_KAFKA_ENABLE_IDEMPOTENCE": "false"}, "HIERTCN_KAFKA_ENABLE_IDEMPOTENCE"),
        (["--changelog-topic", INPUT], {}, "is also the input topic"),
    ],
)
def test_config_rejects_settings(extra: list[str], environ: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        seed_config(seed_args(*extra), environ)

    assert message in str(raised.value)


def test_missing_changelog_topic_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["changelog", "seed", "--state-dir", "state", "--brokers", "127.0.0.1:1"])

    assert code == 2
    assert "--changelog-topic is missing" in capsys.readouterr().err


# -- exit codes before the broker ------------------------------------------------------------


def run_seed_command(state_dir: Path) -> int:
    # Port 1 has no broker: these runs must stop before they connect.
    argv = ["changelog", "seed", "--state-dir", str(state_dir), "--brokers", "127.0.0.1:1"]
    return main([*argv, "--changelog-topic", CHANGELOG])


def test_missing_store_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = run_seed_command(tmp_path / "none")

    assert code == 2
    assert "contains no LMDB store (data.mdb not found)" in capsys.readouterr().err
    assert not (tmp_path / "none").exists()


def test_store_in_use_by_pool_exits_2(state_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    descriptor = locks.lock_shared(state_dir)
    try:
        code = run_seed_command(state_dir)
    finally:
        if descriptor is not None:
            os.close(descriptor)

    assert code == 2
    error = capsys.readouterr().err
    assert f"state directory {state_dir} is in use" in error
    assert "then run seed again" in error


# -- the two delivery phases -----------------------------------------------------------------


class FakeMessage:
    def __init__(self, topic: str, partition: int, key: bytes) -> None:
        self._topic, self._partition, self.key = topic, partition, key

    def topic(self) -> str:
        return self._topic

    def partition(self) -> int:
        return self._partition


class FakeProducer:
    """A producer that reports every record at its next flush, failing those `fails` selects,
    and never reporting those `silent` selects."""

    def __init__(
        self,
        fails: Callable[[bytes], bool] = lambda key: False,
        silent: Callable[[bytes], bool] = lambda key: False,
    ) -> None:
        self.fails = fails
        self.silent = silent
        self.events: list[tuple[str, Any]] = []  # ("produce", key) and ("flush", None)
        self._pending: list[tuple[FakeMessage, Any]] = []

    def produce(
        self, topic: str, value: bytes, key: bytes, partition: int, on_delivery: Any
    ) -> None:
        self.events.append(("produce", key))
        self._pending.append((FakeMessage(topic, partition, key), on_delivery))

    def poll(self, timeout: float) -> int:
        return 0

    def flush(self, timeout: float) -> int:
        self.events.append(("flush", None))
        pending, self._pending = self._pending, []
        for message, on_delivery in pending:
            if self.silent(message.key):
                continue
            error = KafkaError(KafkaError._MSG_TIMED_OUT) if self.fails(message.key) else None
            on_delivery(error, message)
        return 0


def seed_with(
    store: StateStore, producer: FakeProducer, monkeypatch: pytest.MonkeyPatch
) -> SeedCounts:
    monkeypatch.setattr(seed, "open_producer", lambda config: producer)
    monkeypatch.setattr(seed, "REPORT_GRACE_SECONDS", 0.0)
    worker = WorkerConfig(
        brokers="127.0.0.1:1", bundle=Path(), input_topic=INPUT, changelog_topic=CHANGELOG
    )
    config = SeedConfig(worker, {}, message_timeout=0.05)
    counts = SeedCounts()
    produce_seed(store, config, make_scope(store), counts)
    return counts


def test_positions_follow_delivered_states(
    store: StateStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    producer = FakeProducer()

    counts = seed_with(store, producer, monkeypatch)

    keys = [key for event, key in producer.events if event == "produce"]
    assert [key[:1] for key in keys] == [b"u"] * 4 + [b"p"] * 3
    first_position = producer.events.index(("produce", keys[4]))
    assert ("flush", None) in producer.events[:first_position]
    assert (counts.users, counts.positions) == (4, 3)


def test_failed_state_produces_no_position(
    store: StateStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    producer = FakeProducer(fails=lambda key: key == b"ubob")

    with pytest.raises(SeedDeliveryError) as raised:
        seed_with(store, producer, monkeypatch)

    keys = [key for event, key in producer.events if event == "produce"]
    assert not [key for key in keys if key.startswith(b"p")]
    message = str(raised.value)
    assert "1 of 4 user states were not delivered to 127.0.0.1:1 (_MSG_TIMED_OUT x1" in message
    assert "so seed produced no partition position" in message
    assert "a rerun is safe" in message
    assert raised.value.exit_code == 1


def test_missing_report_fails_after_timeout(
    store: StateStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    producer = FakeProducer(silent=lambda key: key.startswith(b"p"))

    with pytest.raises(SeedDeliveryError) as raised:
        seed_with(store, producer, monkeypatch)

    message = str(raised.value)
    assert "3 of 7 user states and partition positions were not delivered" in message
    assert "3 without a delivery report" in message
