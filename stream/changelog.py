"""The changelog topic of the user states, from which a host restores a partition it receives.

User states live in the LMDB store of one host. With `--changelog-topic`, the worker also
produces every state and partition position that it writes to that topic, and a host that
receives a partition processed elsewhere reads them back before it reads the partition. The
records are a contract, which docs/architecture.md ("Changelog topic") repeats:

- state: partition `UserState.partition` (the input partition of the user's newest event), key
  `b"u"` + the user id in UTF-8, value `statestore.codec.encode_state(state)`.
- position: after a batch's states, one record for each input partition that the batch
  advanced, in that partition, key `b"p"` + `statestore.keys.position_key(input_topic,
  partition)`, value `statestore.keys.encode_position(position)`.

The prefixes keep a user id from ever sharing a compaction key with a position. The topic has as
many partitions as the input topic and `cleanup.policy=compact`, so the broker keeps the newest
record of every key. `--create-topics` creates it with `CHANGELOG_TOPIC_CONFIG`. The committer's
delivery wait produces these records once the broker has acknowledged the batch's outputs, so a
restored position never skips an undelivered output. It writes the batch to LMDB only after the
broker has acknowledged the changelog records too, so the changelog never lags the local store.

A restore reads one changelog partition from its beginning up to the high watermark taken when
it starts. It writes the states to the store in chunks, where a later record of a user replaces
an earlier one, and writes the newest position last. A stop request ends it with
`RestoreStoppedError` before the position is written, so that partition restores again next time.

`hiertcn-stream changelog seed` (`stream.commands.changelog`) produces the same records from an
existing store, for the users that a pool stored before it ran with the changelog. It produces
every state whose partition is a partition of the input topic with a stored position
(`state_record_chunks`), then those positions (`position_records`).
"""

from __future__ import annotations

import logging
import struct
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition

from statestore import REPLAY_PARTITION, PartitionPosition, StateStore, UserState
from statestore.codec import decode_state, encode_state
from statestore.errors import SchemaVersionError, StateCodecError
from statestore.keys import decode_position, encode_position, position_key, topic_partition_of_key
from statestore.maintenance import iter_records, plural
from stream.config import WorkerConfig
from stream.delivery import OutputRecord
from stream.errors import StreamError
from stream.events import Position
from stream.kafka_settings import client_settings
from stream.logs import librdkafka_logger

logger = logging.getLogger(__name__)

USER_PREFIX = b"u"
POSITION_PREFIX = b"p"

# Users written per LMDB transaction of a restore: each chunk costs one fsync, and its states
# stay in memory until it is written.
RESTORE_CHUNK_USERS = 1000
# Seconds between two progress lines of a long restore.
RESTORE_PROGRESS_SECONDS = 10.0
# Messages that one consume call of a restore takes, and its longest wait in seconds.
RESTORE_CONSUME_MESSAGES = 1000
RESTORE_POLL_SECONDS = 0.2
# Users read per LMDB read transaction of a seed, and per list of records it yields.
SEED_CHUNK_USERS = 1000
# Skipped user ids that the warning of a seed names.
SEED_NAMED_SKIPS = 10
# Seconds of one metadata or watermark request, and the pause before it is sent again.
REQUEST_TIMEOUT_SECONDS = 10.0
RETRY_PAUSE_SECONDS = 0.5

# The topic settings that `--create-topics` gives a new changelog topic, and that the runbook's
# create command shows. The broker compacts only closed segments and never the active one, so a
# restore reads every record of the active segment and of the segments that the cleaner has not
# reached yet. NOTE: the two values after compact are a judgment, not measured optima. One hour
# of segment.ms (Kafka's default is 7 days, or 1 GiB of segment.bytes) bounds the active segment
# to one hour of writes. A min.cleanable.dirty.ratio of 0.1 (Kafka's default is 0.5) makes the
# cleaner compact once a tenth of the log is uncompacted, at the cost of more cleaner I/O.
CHANGELOG_TOPIC_CONFIG = {
    "cleanup.policy": "compact",
    "segment.ms": "3600000",
    "min.cleanable.dirty.ratio": "0.1",
}


class ChangelogError(StreamError):
    """The changelog topic or one of its records is unusable, so a restart fails the same way."""

    exit_code = 2


class ChangelogRestoreError(StreamError):
    """A restore timed out waiting for the broker. A restart tries it again."""


class RestoreStoppedError(Exception):
    """A stop request ended the restore of `partition` before its position was written."""

    def __init__(self, partition: int, next_offset: int, high: int, records: int) -> None:
        super().__init__(
            f"the restore of partition {partition} stopped at changelog offset {next_offset} "
            f"of {high}, after {records} records"
        )
        self.partition = partition
        self.next_offset = next_offset  # the changelog offset that the restore would read next
        self.high = high  # the high watermark that the restore would have read up to
        self.records = records  # changelog records applied before the stop


def create_command(brokers: str, topic: str, partitions: int) -> str:
    """Return the kafka-topics.sh command that creates `topic` as `--create-topics` does."""
    configs = " ".join(f"--config {key}={value}" for key, value in CHANGELOG_TOPIC_CONFIG.items())
    return (
        f"kafka-topics.sh --bootstrap-server {brokers} --create --topic {topic} "
        f"--partitions {partitions} {configs}"
    )


def state_record_key(user: str) -> bytes:
    """Return the changelog key of `user`'s state."""
    return USER_PREFIX + user.encode("utf-8")


def position_record_key(input_topic: str, partition: int) -> bytes:
    """Return the changelog key of the position of `input_topic[partition]`."""
    return POSITION_PREFIX + position_key(input_topic, partition)


def changelog_records(
    topic: str,
    input_topic: str,
    states: Mapping[str, UserState],
    positions: Mapping[int, PartitionPosition],
) -> list[OutputRecord]:
    """Return the changelog records of one batch: every state, then every partition position."""
    # Deferred: the committer's delivery wait produces them once the batch's outputs are
    # delivered, so that no host restores a position whose outputs the broker lacks.
    records = [
        OutputRecord(
            topic,
            state_record_key(user),
            encode_state(state),
            [],
            partition=state.partition,
            deferred=True,
        )
        for user, state in states.items()
    ]
    records.extend(
        OutputRecord(
            topic,
            position_record_key(input_topic, partition),
            encode_position(position),
            [],
            partition=partition,
            deferred=True,
        )
        for partition, position in sorted(positions.items())
    )
    return records


class RestoreWriter:
    """Apply the records of one changelog partition to the state store, in the order read.

    `store` is a `statestore.StateStore` or an object with its `commit`. States are written in
    chunks of `chunk_users` users through `commit`, which keeps the timer index in step, so a
    later record of a user replaces the earlier one. A null value (a tombstone) deletes the
    user. The newest position record is written by `finish`, in the last transaction, so that a
    restore cut short stores no position ahead of the states it wrote.
    """

    def __init__(
        self,
        store: Any,
        changelog_topic: str,
        input_topic: str,
        partition: int,
        chunk_users: int = RESTORE_CHUNK_USERS,
    ) -> None:
        self.store = store
        self.changelog_topic = changelog_topic
        self.input_topic = input_topic
        self.partition = partition
        self.chunk_users = chunk_users
        self.records = 0
        self.position: PartitionPosition | None = None
        self._position_key = position_record_key(input_topic, partition)
        self._states: dict[str, UserState] = {}
        self._deletes: set[str] = set()
        self._users: set[str] = set()

    @property
    def users(self) -> int:
        """Distinct users with a record among those applied so far."""
        return len(self._users)

    def add(self, key: bytes | None, value: bytes | None, offset: int) -> None:
        """Apply the record at `offset`; raise ChangelogError for a record the worker never
        writes."""
        self.records += 1
        source = Position(self.changelog_topic, self.partition, offset)
        if key is not None and key.startswith(USER_PREFIX):
            self._add_state(key, value, source)
        elif key == self._position_key:
            self.position = None if value is None else self._decode_position(value, source)
        else:
            raise ChangelogError(
                f"changelog record {source} has {self._describe_key(key)}, where this worker "
                f"expects user states and the position of {self.input_topic}[{self.partition}]: "
                "give each input topic a changelog topic of its own, with as many partitions as "
                "it has, that only hiertcn-stream run writes to"
            )
        if len(self._states) + len(self._deletes) >= self.chunk_users:
            self._write(final=False)

    def finish(self) -> PartitionPosition | None:
        """Write what is left and the newest position; return that position, or None."""
        # NOTE: a worker that died after some state records of a batch were delivered, but
        # before the batch's position record, left those states one batch ahead of this
        # position. The restoring host applies that batch's events to them a second time
        # (at-least-once).
        self._write(final=True)
        return self.position

    def _add_state(self, key: bytes, value: bytes | None, source: Position) -> None:
        # NOTE: the changelog contains the states written since the pool first ran with it, and
        # `hiertcn-stream state evict` deletes users from the local store only. A restore thus
        # misses users idle since the changelog was turned on, who start anew, and brings back
        # the users that an eviction deleted.
        try:
            user = key[len(USER_PREFIX) :].decode("utf-8")
            state = None if value is None else decode_state(value)
        except (UnicodeDecodeError, StateCodecError, SchemaVersionError) as error:
            raise ChangelogError(
                f"changelog record {source} contains an invalid user state ({error}): only "
                "hiertcn-stream run may write to a changelog topic"
            ) from error
        self._users.add(user)
        if state is None:
            self._states.pop(user, None)
            self._deletes.add(user)
        else:
            self._deletes.discard(user)
            self._states[user] = state

    def _decode_position(self, value: bytes, source: Position) -> PartitionPosition:
        try:
            return decode_position(value)
        except StateCodecError as error:
            raise ChangelogError(
                f"changelog record {source} contains an invalid partition position ({error}): "
                "only hiertcn-stream run may write to a changelog topic"
            ) from error

    @staticmethod
    def _describe_key(key: bytes | None) -> str:
        if key is None:
            return "no key"
        if key.startswith(POSITION_PREFIX):
            try:
                topic, partition = topic_partition_of_key(key[len(POSITION_PREFIX) :])
                return f"the position of {topic}[{partition}]"
            except (UnicodeDecodeError, struct.error):
                pass
        return f"the unknown key {key[:40]!r}"

    def _write(self, final: bool) -> None:
        positions = None
        if final and self.position is not None:
            positions = {(self.input_topic, self.partition): self.position}
        if not self._states and not self._deletes and positions is None:
            return
        self.store.commit(self._states, positions, deletes=sorted(self._deletes))
        self._states = {}
        self._deletes = set()


@dataclass(frozen=True)
class RestoreResult:
    """Counts and outcome of the restore of one partition."""

    partition: int
    records: int  # changelog records read
    users: int  # distinct users among them
    position: PartitionPosition | None  # the stored position; None when the changelog has none
    seconds: float


def changelog_consumer_settings(config: WorkerConfig) -> dict[str, Any]:
    """Return the librdkafka settings of the consumer that reads the changelog, each with its
    reason. The -X settings of the worker's consumer apply, security settings among them."""
    settings: dict[str, Any] = client_settings(config.kafka_settings, "consumer")
    # Static membership concerns the worker's own group member, never this consumer.
    settings.pop("group.instance.id", None)
    settings.update(
        {
            "bootstrap.servers": config.brokers,
            # confluent-kafka requires a group.id. This consumer only calls assign(), so it
            # never joins the group and commits no offset. The worker's group is one that the
            # client's principal may use already.
            "group.id": config.group_id,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            # The end of the partition ends a restore also where compaction has left no
            # record at the offset below the high watermark.
            "enable.partition.eof": True,
            "auto.offset.reset": "earliest",
            # A fetch of the previous partition that waits for new records delays the first
            # fetch of the next one by up to this long (librdkafka's default is 500 ms).
            "fetch.wait.max.ms": 50,
        }
    )
    return settings


class ChangelogReader:
    """Read changelog partitions with a consumer that joins no group, and restore them.

    A restore raises ChangelogRestoreError when no record arrives for `stall_seconds` before the
    end of the partition.
    """

    def __init__(
        self,
        consumer: Consumer,
        topic: str,
        input_topic: str,
        stall_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.consumer = consumer
        self.topic = topic
        self.input_topic = input_topic
        self.stall_seconds = stall_seconds
        self.clock = clock

    def restore(
        self,
        store: Any,
        partition: int,
        on_progress: Callable[[], None] = lambda: None,
        stop_requested: Callable[[], bool] = lambda: False,
    ) -> RestoreResult:
        """Write the states and the newest position of changelog `partition` to `store`.

        `on_progress` is called after every consume call. When `stop_requested()` returns True
        there, the restore raises `RestoreStoppedError` and writes no position, but the chunks of
        states written before stay in the store.
        """
        started = time.perf_counter()
        self._check_partition(partition)
        low, high = self._watermarks(partition)
        writer = RestoreWriter(store, self.topic, self.input_topic, partition)
        if high > low:
            self._read(writer, partition, high, on_progress, stop_requested)
        position = writer.finish()
        return RestoreResult(
            partition, writer.records, writer.users, position, time.perf_counter() - started
        )

    def close(self) -> None:
        self.consumer.close()

    def _check_partition(self, partition: int) -> None:
        """Raise ChangelogError when the changelog topic lacks `partition`."""
        metadata = self._retry(
            lambda: self.consumer.list_topics(self.topic, timeout=REQUEST_TIMEOUT_SECONDS),
            f"reading the metadata of changelog topic {self.topic}",
        )
        described = metadata.topics.get(self.topic)
        if described is None or (
            described.error is not None
            and described.error.code() == KafkaError.UNKNOWN_TOPIC_OR_PART
        ):
            raise ChangelogError(
                f"changelog topic {self.topic} does not exist: create it with as many partitions "
                f"as {self.input_topic} and cleanup.policy=compact, or pass --create-topics"
            )
        if partition not in described.partitions:
            raise ChangelogError(
                f"changelog topic {self.topic} has {plural(len(described.partitions), 'partition')}"
                f", so {self.input_topic}[{partition}] has no changelog partition: give "
                f"{self.topic} as many partitions as {self.input_topic} (kafka-topics.sh "
                f"--alter --topic {self.topic} --partitions N)"
            )

    def _watermarks(self, partition: int) -> tuple[int, int]:
        tp = TopicPartition(self.topic, partition)

        def query() -> tuple[int, int]:
            offsets = self.consumer.get_watermark_offsets(
                tp, timeout=REQUEST_TIMEOUT_SECONDS, cached=False
            )
            if offsets is None:
                raise KafkaException(KafkaError(KafkaError._TIMED_OUT))
            return int(offsets[0]), int(offsets[1])

        return self._retry(query, f"reading the offsets of {self.topic}[{partition}]")

    def _retry(self, request: Callable[[], Any], description: str) -> Any:
        """Run `request` until it succeeds, or raise ChangelogRestoreError after stall_seconds."""
        deadline = self.clock() + self.stall_seconds
        attempt = 1
        while True:
            try:
                return request()
            except KafkaException as error:
                if self.clock() >= deadline:
                    raise ChangelogRestoreError(
                        f"{description} failed for {self.stall_seconds:g} s ({error}): check "
                        "that the broker is up, then start the pool again"
                    ) from error
                logger.warning("%s failed (%s), attempt %d, retrying", description, error, attempt)
                attempt += 1
                time.sleep(RETRY_PAUSE_SECONDS)

    def _read(
        self,
        writer: RestoreWriter,
        partition: int,
        high: int,
        on_progress: Callable[[], None],
        stop_requested: Callable[[], bool],
    ) -> None:
        """Apply the records of `partition` from its beginning up to offset `high` (or its end).

        Raise `RestoreStoppedError` when `stop_requested()` returns True after a consume call.
        """
        self.consumer.assign([TopicPartition(self.topic, partition, OFFSET_BEGINNING)])
        try:
            next_offset = 0
            at_end = False
            last_record = last_progress = self.clock()
            while next_offset < high and not at_end:
                messages = self.consumer.consume(
                    num_messages=RESTORE_CONSUME_MESSAGES, timeout=RESTORE_POLL_SECONDS
                )
                now = self.clock()
                for message in messages:
                    error = message.error()
                    if error is not None and error.code() == KafkaError._PARTITION_EOF:
                        at_end = at_end or message.partition() == partition
                    elif error is not None:
                        self._on_consume_error(error)
                    elif message.partition() != partition:
                        continue  # fetched before the previous partition was unassigned
                    elif message.offset() >= high:
                        at_end = True  # written after the restore started
                    else:
                        writer.add(message.key(), message.value(), message.offset())
                        next_offset = message.offset() + 1
                        last_record = now
                if now - last_record > self.stall_seconds and not at_end:
                    raise ChangelogRestoreError(
                        f"no record of {self.topic}[{partition}] arrived for "
                        f"{self.stall_seconds:g} s at offset {next_offset} of {high}: check that "
                        "the broker is up, then start the pool again"
                    )
                if now - last_progress >= RESTORE_PROGRESS_SECONDS:
                    last_progress = now
                    logger.info(
                        "restoring %s[%d] from its changelog: offset %d of %d, %d records read",
                        self.input_topic,
                        partition,
                        next_offset,
                        high,
                        writer.records,
                    )
                on_progress()
                if stop_requested() and next_offset < high and not at_end:
                    raise RestoreStoppedError(partition, next_offset, high, writer.records)
        finally:
            self.consumer.unassign()

    def _on_consume_error(self, error: KafkaError) -> None:
        if error.fatal():
            raise KafkaException(error)
        # librdkafka retries the others itself; the stall limit ends a restore that stops.
        logger.warning("reading changelog topic %s: %s (librdkafka retries it)", self.topic, error)


class Changelog:
    """The changelog topic of one worker: the records of its batches, and its readers."""

    def __init__(
        self, config: WorkerConfig, open_consumer: Callable[[], Consumer] | None = None
    ) -> None:
        self.topic = config.changelog_topic
        self.input_topic = config.input_topic
        # A restore waits for the broker as long as a batch waits for its deliveries: that is
        # the broker outage that the pool rides out.
        self.stall_seconds = config.delivery_timeout * config.delivery_attempts
        self._open_consumer = open_consumer or (lambda: _open_changelog_consumer(config))

    def records(
        self, states: Mapping[str, UserState], positions: Mapping[int, PartitionPosition]
    ) -> list[OutputRecord]:
        """Return the changelog records of `states` and `positions` (see `changelog_records`)."""
        return changelog_records(self.topic, self.input_topic, states, positions)

    def reader(self) -> ChangelogReader:
        """Open a reader; the caller closes it."""
        return ChangelogReader(
            self._open_consumer(), self.topic, self.input_topic, self.stall_seconds
        )


def _open_changelog_consumer(config: WorkerConfig) -> Consumer:
    # librdkafka's own lines go to a rate-limited logger instead of this process's stderr.
    client_log = librdkafka_logger(f"{__name__}.librdkafka")
    return Consumer({**changelog_consumer_settings(config), "logger": client_log})


# -- seeding from an existing store ----------------------------------------------------------


@dataclass(frozen=True)
class SeedScope:
    """The input partitions that a seed covers: partitions of the input topic with a stored
    position that is not behind the consumer group's committed offset."""

    input_topic: str
    partition_count: int  # partitions of the input topic on the broker
    positions: Mapping[int, PartitionPosition]  # the store's positions of the input topic
    # The group's committed offset of each partition whose stored position is behind it.
    behind: Mapping[int, int] = field(default_factory=dict)

    def in_topic(self, partition: int) -> bool:
        """Return whether `partition` is a partition of the input topic."""
        return 0 <= partition < self.partition_count

    def is_behind(self, partition: int) -> bool:
        """Return whether the group has processed `partition` beyond its stored position."""
        return partition in self.behind

    def covers(self, partition: int) -> bool:
        """Return whether seed produces the states and the position of `partition`."""
        return (
            self.in_topic(partition)
            and partition in self.positions
            and not self.is_behind(partition)
        )

    def skip_reason(self, partition: int) -> str:
        """Return why seed skips the states of `partition`, which it does not cover."""
        if partition == REPLAY_PARTITION:
            return f"a replay's, not a partition of {self.input_topic}"
        if not self.in_topic(partition):
            return f"{self.input_topic} has {plural(self.partition_count, 'partition')}"
        if self.is_behind(partition):
            return (
                f"the stored position {self.positions[partition].next_offset} is behind the "
                f"consumer group's committed offset {self.behind[partition]}"
            )
        return f"the store has no position of {self.input_topic}[{partition}]"


@dataclass
class SeedCounts:
    """Counts of the records that a seed produced, or would produce in a dry run, and of the
    states and positions that it skipped."""

    users: int = 0
    positions: int = 0
    bytes: int = 0  # keys and values of the records
    users_read: int = 0  # stored users read, the skipped ones included
    skipped_users: Counter[int] = field(default_factory=Counter)  # by partition
    skipped_positions: list[int] = field(default_factory=list)  # their partitions
    skipped_names: list[str] = field(default_factory=list)  # the first SEED_NAMED_SKIPS user ids

    @property
    def skipped(self) -> int:
        """Skipped user states and positions."""
        return sum(self.skipped_users.values()) + len(self.skipped_positions)

    def add_bytes(self, records: Sequence[OutputRecord]) -> None:
        self.bytes += sum(len(record.key or b"") + len(record.value or b"") for record in records)

    def skip_user(self, user: str, partition: int, named: bool = True) -> None:
        """Count a skipped state, and keep its user id for the warning when `named`."""
        self.skipped_users[partition] += 1
        if named and len(self.skipped_names) < SEED_NAMED_SKIPS:
            self.skipped_names.append(user)


def state_record_chunks(
    store: StateStore,
    changelog_topic: str,
    scope: SeedScope,
    counts: SeedCounts,
    chunk_users: int = SEED_CHUNK_USERS,
) -> Iterator[list[OutputRecord]]:
    """Yield the changelog records of the stored states that `scope` covers, at most
    `chunk_users` per list, in key order. Count them in `counts`, and skip and count the rest."""
    chunk: dict[str, UserState] = {}
    for user, blob in iter_records(store, chunk_users):
        counts.users_read += 1
        try:
            state = decode_state(blob)
        except StateCodecError as error:
            raise StateCodecError(f"the stored state of user {user!r}: {error}") from error
        if not scope.covers(state.partition):
            # The users of a partition behind the group are current on another host, whose
            # seed copies them, so the warning names only the users that start anew.
            counts.skip_user(user, state.partition, named=not scope.is_behind(state.partition))
            continue
        chunk[user] = state
        if len(chunk) >= chunk_users:
            yield _state_records(changelog_topic, scope, chunk, counts)
            chunk = {}
    if chunk:
        yield _state_records(changelog_topic, scope, chunk, counts)


def _state_records(
    changelog_topic: str, scope: SeedScope, states: dict[str, UserState], counts: SeedCounts
) -> list[OutputRecord]:
    records = changelog_records(changelog_topic, scope.input_topic, states, {})
    counts.users += len(records)
    counts.add_bytes(records)
    return records


def position_records(
    changelog_topic: str, scope: SeedScope, counts: SeedCounts
) -> list[OutputRecord]:
    """Return the changelog records of the stored positions that `scope` covers. Count them in
    `counts`, and skip and count the other positions."""
    selected = {}
    for partition, position in sorted(scope.positions.items()):
        if scope.covers(partition):
            selected[partition] = position
        else:
            counts.skipped_positions.append(partition)
    records = changelog_records(changelog_topic, scope.input_topic, {}, selected)
    counts.positions += len(records)
    counts.add_bytes(records)
    return records


def describe_skips(counts: SeedCounts, scope: SeedScope) -> str | None:
    """Return the warning that names what a seed skipped, or None when it skipped nothing."""
    if not counts.skipped:
        return None
    parts = [
        f"{plural(users, 'user state')} of partition {partition} ({scope.skip_reason(partition)})"
        for partition, users in sorted(counts.skipped_users.items())
    ]
    parts.extend(
        f"the position of partition {partition} ({scope.skip_reason(partition)})"
        for partition in counts.skipped_positions
    )
    message = f"skipped {'; '.join(parts)}"
    behind = sorted(
        partition
        for partition in {*counts.skipped_users, *counts.skipped_positions}
        if scope.is_behind(partition)
    )
    if behind:
        message += (
            f". Another state directory has processed {_partition_list(scope, behind)} since "
            "this one did, so their states here are older than those of the host that processed "
            "them last: seed from that host's state directory too"
        )
    if counts.skipped_names:
        named = sum(
            users
            for partition, users in counts.skipped_users.items()
            if not scope.is_behind(partition)
        )
        more = ", ..." if named > len(counts.skipped_names) else ""
        message += (
            f". A host that restores from the changelog starts these users anew: "
            f"{', '.join(counts.skipped_names)}{more}"
        )
    return message


def _partition_list(scope: SeedScope, partitions: Sequence[int]) -> str:
    """Return `partitions` of the input topic as `topic[0], topic[2]`."""
    return ", ".join(f"{scope.input_topic}[{partition}]" for partition in partitions)
