"""The restore of a changelog partition into the state store of a host that receives the partition.

A restore reads one changelog partition from its beginning up to the high watermark taken when
it starts. It writes the states to the store in chunks, where a later record of a user replaces
an earlier one, and writes the newest position last. A stop request ends it with
`RestoreStoppedError` before the position is written, so that partition restores again next time.

`stream.changelog` defines the records that a restore reads.
"""

from __future__ import annotations

import logging
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition

from statestore import PartitionPosition, UserState
from statestore.codec import decode_state
from statestore.errors import SchemaVersionError, StateCodecError
from statestore.keys import decode_position, topic_partition_of_key
from statestore.maintenance import plural
from stream.changelog import POSITION_PREFIX, USER_PREFIX, ChangelogError, position_record_key
from stream.config import WorkerConfig
from stream.errors import StreamError
from stream.events import Position
from stream.kafka_settings import client_settings

logger = logging.getLogger(__name__)

# Users written per LMDB transaction of a restore: each chunk costs one fsync, and its states
# stay in memory until it is written.
RESTORE_CHUNK_USERS = 1000
# Seconds between two progress lines of a long restore.
RESTORE_PROGRESS_SECONDS = 10.0
# Messages that one consume call of a restore takes, and its longest wait in seconds.
RESTORE_CONSUME_MESSAGES = 1000
RESTORE_POLL_SECONDS = 0.2
# Seconds of one metadata or watermark request, and the pause before it is sent again.
REQUEST_TIMEOUT_SECONDS = 10.0
RETRY_PAUSE_SECONDS = 0.5


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
