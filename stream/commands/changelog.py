"""`hiertcn-stream changelog seed`: copy an existing state store into the changelog topic.

    hiertcn-stream changelog seed --state-dir state --brokers 127.0.0.1:9092 \\
        --changelog-topic interactions.changelog

A pool produces to its changelog topic only the states and positions that it writes while it
runs with `--changelog-topic`, so a host that restores a partition would miss every user idle
since. `seed` produces every stored user state and then the stored position of every input
partition, as the records that `stream.changelog` defines. It skips the partitions whose stored
position is behind the consumer group's committed offset, because another state directory has
processed them since. After a lost changelog topic, a seed from every host's state directory
thus copies each partition from the host that processed it last. It holds the writers lock of
the state directory exclusively, so it never runs beside a pool, a replay or `state import`
there.

Exit status: 0 on success, and 1 when the broker does not respond or a record is not delivered,
where a rerun is safe. Invalid input exits 2: no store, a missing input topic, a changelog topic
that `run` would reject, a state directory in use, or a store whose every stored position of the
input topic is behind the consumer group.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from statestore import (
    PartitionPosition,
    StateStore,
    StoreConfigError,
    StoreInUseError,
    locks,
)
from statestore.command import open_store
from statestore.maintenance import plural
from statestore.store import format_size
from stream.changelog_restore import REQUEST_TIMEOUT_SECONDS, changelog_consumer_settings
from stream.changelog_seed import (
    SeedCounts,
    SeedScope,
    describe_skips,
    position_records,
    state_record_chunks,
)
from stream.changelog_topic import check_changelog_topic
from stream.commands.changelog_args import SeedConfig, _add_seed_arguments, _env, seed_config
from stream.config import WorkerConfig
from stream.delivery import OutputRecord
from stream.errors import ConfigError, StreamError
from stream.kafka_admin import create_admin, settled_topic, wait_for_metadata
from stream.kafka_settings import describe_invalid_setting
from stream.logs import librdkafka_logger

logger = logging.getLogger(__name__)

# Seconds between two progress lines on stderr.
PROGRESS_SECONDS = 10.0
# Seconds after a record's message timeout that seed still waits for its delivery report.
REPORT_GRACE_SECONDS = 5.0
# Failed deliveries that seed logs one by one. The error message counts them all.
LOGGED_FAILURES = 10


class SeedInputError(StreamError):
    """The store, the topics or the consumer group rule out a seed, and a rerun fails the same."""

    exit_code = 2


class SeedDeliveryError(StreamError):
    """The broker did not acknowledge every record of a seed. A rerun is safe."""


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `changelog` command and its `seed` action."""
    parser = subparsers.add_parser(
        "changelog",
        help="maintain the changelog topic of the user states",
        description="Maintain the compacted changelog topic from which a host restores the "
        "user states of a partition that it receives from another host.",
    )
    actions = parser.add_subparsers(dest="changelog_command", metavar="ACTION", required=True)
    seed = actions.add_parser(
        "seed",
        help="copy the states and positions of a state store into the changelog topic",
        description="Produce every user state of the store in --state-dir to the changelog "
        "topic, then the stored position of every partition of the input topic, as the pool "
        "does with --changelog-topic. A host that restores a partition then finds the users "
        "who have been idle since the pool started writing to the changelog. A state whose "
        "partition is not a partition of the input topic with a stored position is skipped "
        "and named in a warning, and so are the states and the position of a partition whose "
        "stored position is behind the consumer group's committed offset, because another "
        "state directory has processed it since. Seed exits 2 when every stored position is "
        "behind. Stop the pool that uses --state-dir first: seed rejects a state directory that "
        "a pool, a replay or `state import` has open (exit status 2).",
        epilog="Start the pool with --changelog-topic after the seed. Its records of the same "
        "users come after the seeded ones, so compaction keeps the newer ones, and a seed "
        "followed by the pool is safe. A failed seed exits 1 and can run again: the topic "
        "keeps only the newest record of every key. Every option also reads the HIERTCN_* "
        "variable of `run`, and librdkafka settings come from HIERTCN_KAFKA_<KEY> variables too.",
    )
    _add_seed_arguments(seed)
    seed.set_defaults(func=run_seed)


# -- the store and the broker ----------------------------------------------------------------


@contextmanager
def locked_store(state_dir: Path) -> Iterator[StateStore]:
    """Open the existing store in `state_dir` with its writers lock held exclusively."""
    if not (state_dir / "data.mdb").is_file():
        raise StoreConfigError(
            f"state directory {state_dir} contains no LMDB store (data.mdb not found): pass "
            "the --state-dir of the pool whose states to copy"
        )
    with ExitStack() as stack:
        try:
            stack.enter_context(locks.lock_exclusive(state_dir))
        except StoreInUseError as error:
            # NOTE: the rejection of `locks.lock_exclusive` speaks of an import, so seed words
            # its own and cannot tell a pool from a replay here.
            raise StoreInUseError(
                f"state directory {state_dir} is in use: a worker pool, a replay or `state "
                f"import` has it open (they lock {state_dir / locks.WRITERS_LOCK_FILE}), and "
                "seed must copy the states that the last of them wrote. Stop the pool that "
                "uses it, or wait until the replay or import ends, then run seed again"
            ) from error
        yield stack.enter_context(open_store(state_dir))


def check_seed_topics(config: WorkerConfig, dry_run: bool) -> int:
    """Check the input and changelog topics as `run` does, and return the input partition count.

    With `create_topics`, create a missing changelog topic, except in a dry run.
    """
    admin = create_admin(config)
    logger.info("connecting to Kafka brokers %s", config.brokers)
    metadata = wait_for_metadata(admin, config.brokers)
    # A topic created a moment ago can be listed without its partitions yet.
    described = settled_topic(admin, config, metadata, config.input_topic)
    if described is None:
        raise SeedInputError(
            f"input topic {config.input_topic} does not exist on {config.brokers}, so the "
            "stored positions cannot be checked against its partitions: pass the pool's "
            f"--input-topic (or {_env('input_topic')})"
        )
    partitions = len(described.partitions)
    if dry_run and config.create_topics and config.changelog_topic not in metadata.topics:
        logger.info(
            "changelog topic %s does not exist: without --dry-run, seed creates it with %d "
            "partitions, cleanup.policy=compact, segment.ms=3600000 and "
            "min.cleanable.dirty.ratio=0.1",
            config.changelog_topic,
            partitions,
        )
        return partitions
    check_changelog_topic(admin, config, metadata)
    return partitions


def committed_offsets(config: WorkerConfig, partitions: Sequence[int]) -> dict[int, int]:
    """Return the offsets of `partitions` of the input topic that the group has committed."""
    client_log = librdkafka_logger(f"{__name__}.librdkafka")
    consumer = Consumer({**changelog_consumer_settings(config), "logger": client_log})
    requested = [TopicPartition(config.input_topic, partition) for partition in partitions]
    try:
        found = consumer.committed(requested, timeout=REQUEST_TIMEOUT_SECONDS)
    except KafkaException as error:
        raise StreamError(
            f"reading the offsets that consumer group {config.group_id} committed on "
            f"{config.input_topic} failed ({error}): check that the broker is up and that the "
            "client's principal may describe the group, then run seed again"
        ) from error
    finally:
        consumer.close()
    return {tp.partition: tp.offset for tp in found if tp.error is None and tp.offset >= 0}


def partitions_behind(
    positions: Mapping[int, PartitionPosition], committed: Mapping[int, int]
) -> list[int]:
    """Return the partitions whose committed offset lies beyond the stored position."""
    return sorted(
        partition
        for partition, offset in committed.items()
        if partition in positions and offset > positions[partition].next_offset
    )


def partitions_behind_group(
    config: WorkerConfig, positions: Mapping[int, PartitionPosition], partition_count: int
) -> dict[int, int]:
    """Return the group's committed offset of each partition of the input topic whose stored
    position lies behind it.

    The pool commits an offset only after it has stored the batch, so the store that processed
    a partition last is never behind. A store that is behind would put older states and an
    older position into the changelog than those of the host that has processed the partition
    since.
    """
    partitions = [partition for partition in positions if 0 <= partition < partition_count]
    if not partitions:
        return {}
    committed = committed_offsets(config, partitions)
    return {
        partition: committed[partition] for partition in partitions_behind(positions, committed)
    }


def check_not_all_behind(
    config: WorkerConfig,
    positions: Mapping[int, PartitionPosition],
    partition_count: int,
    behind: Mapping[int, int],
) -> None:
    """Raise `SeedInputError` when every stored position of the input topic is behind the
    group, so that a seed would produce nothing but skips."""
    partitions = [partition for partition in positions if 0 <= partition < partition_count]
    if not partitions or any(partition not in behind for partition in partitions):
        return
    offsets = ", ".join(
        f"{config.input_topic}[{partition}] stored {positions[partition].next_offset}, "
        f"committed {behind[partition]}"
        for partition in sorted(partitions)
    )
    raise SeedInputError(
        f"state store {config.state_dir} is behind consumer group {config.group_id} on every "
        f"partition that it has a position of ({offsets}): other state directories have "
        "processed those events since, and seeding this one would replace newer states in the "
        "changelog with older ones. Seed from the state directories that processed the "
        "partitions last, or pass the pool's --group-id"
    )


# -- producing --------------------------------------------------------------------------------


class SeedProducer:
    """Produce records and count their delivery reports without keeping the records, because a
    store may hold millions of users."""

    def __init__(self, producer: Producer, brokers: str, message_timeout: float | None) -> None:
        self.producer = producer
        self.brokers = brokers
        self.message_timeout = message_timeout
        self.produced = 0
        self.delivered = 0
        self.failed = 0
        self.errors: Counter[str] = Counter()
        self._last_produced = time.monotonic()

    @property
    def outstanding(self) -> int:
        """Records produced without a delivery report yet."""
        return self.produced - self.delivered - self.failed

    def produce(self, records: Sequence[OutputRecord]) -> None:
        """Hand `records` to librdkafka, each to the partition that it names."""
        for record in records:
            self._produce(record)
        self.producer.poll(0)

    def wait(self, on_progress: Callable[[], None]) -> None:
        """Serve delivery reports until every record has one, or until the message timeout
        has passed for the last one. Call `on_progress()` every PROGRESS_SECONDS at most."""
        deadline = math.inf
        if self.message_timeout is not None:
            deadline = self._last_produced + self.message_timeout + REPORT_GRACE_SECONDS
        while self.outstanding > 0:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self.producer.flush(min(left, PROGRESS_SECONDS))
            on_progress()

    def check_delivered(self, records: str, consequence: str) -> None:
        """Raise `SeedDeliveryError` unless the broker has acknowledged every record."""
        if self.delivered == self.produced:
            return
        errors = ", ".join(f"{name} x{count}" for name, count in self.errors.most_common())
        waiting = f"{self.outstanding} without a delivery report"
        raise SeedDeliveryError(
            f"{self.produced - self.delivered} of {self.produced} {records} were not delivered "
            f"to {self.brokers} ({', '.join(filter(None, (errors, waiting)))}){consequence}. "
            "Check that the broker is up and that the client may write to the changelog topic, "
            "then run seed again: a rerun is safe, because the topic keeps only the newest "
            "record of every key"
        )

    def _produce(self, record: OutputRecord) -> None:
        while True:
            try:
                self.producer.produce(
                    record.topic,
                    value=record.value,
                    key=record.key,
                    partition=record.partition,
                    on_delivery=self._on_delivery,
                )
                break
            except BufferError:
                # The local queue is full: serve delivery reports until there is room.
                self.producer.poll(0.1)
            except KafkaException as error:
                raise SeedDeliveryError(
                    f"producing to {record.topic}[{record.partition}] failed ({error}): check "
                    "the changelog topic, then run seed again (a rerun is safe)"
                ) from error
        self.produced += 1
        self._last_produced = time.monotonic()

    def _on_delivery(self, error: KafkaError | None, message: Message) -> None:
        if error is None:
            self.delivered += 1
            return
        self.failed += 1
        self.errors[error.name()] += 1
        if self.failed <= LOGGED_FAILURES:
            logger.error(
                "delivery of a changelog record to %s[%s] failed: %s",
                message.topic(),
                message.partition(),
                error,
            )


class SeedProgress:
    """Log a progress line at most every PROGRESS_SECONDS."""

    def __init__(self, topic: str, total_users: int, seeder: SeedProducer | None) -> None:
        self.topic = topic
        self.total_users = total_users
        self.seeder = seeder
        self._last = time.monotonic()

    def __call__(self, counts: SeedCounts) -> None:
        now = time.monotonic()
        if now - self._last < PROGRESS_SECONDS:
            return
        self._last = now
        delivered = "" if self.seeder is None else f", {self.seeder.delivered} records delivered"
        logger.info(
            "seeding %s: %d of %d users read%s",
            self.topic,
            counts.users_read,
            self.total_users,
            delivered,
        )


def produce_seed(
    store: StateStore, config: SeedConfig, scope: SeedScope, counts: SeedCounts
) -> None:
    """Produce the states, wait until all are delivered, then produce the positions and wait.

    A position goes out only when every state is delivered, so the changelog never gets a
    position of this seed without the states it covers.
    """
    topic = config.worker.changelog_topic
    seeder = SeedProducer(open_producer(config), config.worker.brokers, config.message_timeout)
    progress = SeedProgress(topic, store.user_count(), seeder)
    for records in state_record_chunks(store, topic, scope, counts):
        seeder.produce(records)
        progress(counts)
    seeder.wait(lambda: progress(counts))
    seeder.check_delivered("user states", ", so seed produced no partition position")

    seeder.produce(position_records(topic, scope, counts))
    seeder.wait(lambda: progress(counts))
    seeder.check_delivered("user states and partition positions", "")


def count_seed(store: StateStore, config: SeedConfig, scope: SeedScope, counts: SeedCounts) -> None:
    """Count the records that `produce_seed` would produce, and produce nothing."""
    topic = config.worker.changelog_topic
    progress = SeedProgress(topic, store.user_count(), None)
    for _ in state_record_chunks(store, topic, scope, counts):
        progress(counts)
    position_records(topic, scope, counts)


def open_producer(config: SeedConfig) -> Producer:
    """Create the producer, or raise `ConfigError` when librdkafka rejects a setting."""
    try:
        return Producer(dict(config.producer_settings))
    except KafkaException as error:
        raise ConfigError(
            describe_invalid_setting(
                error.args[0].str(),
                config.producer_settings,
                config.worker.kafka_env_names,
                origins="the -X options or the HIERTCN_KAFKA_ variables",
            )
        ) from error


# -- the command ------------------------------------------------------------------------------


def run_seed(args: argparse.Namespace) -> int:
    """Check the store, the topics and the group, then produce the store to the changelog."""
    config = seed_config(args, os.environ)
    worker = config.worker
    started = time.perf_counter()
    counts = SeedCounts()
    with locked_store(worker.state_dir) as store:
        positions = store.positions(worker.input_topic)
        partition_count = check_seed_topics(worker, config.dry_run)
        behind = partitions_behind_group(worker, positions, partition_count)
        check_not_all_behind(worker, positions, partition_count, behind)
        scope = SeedScope(worker.input_topic, partition_count, positions, behind)
        if config.dry_run:
            count_seed(store, config, scope, counts)
        else:
            produce_seed(store, config, scope, counts)
    warning = describe_skips(counts, scope)
    if warning is not None:
        logger.warning("%s", warning)
    print(format_report(config, counts, time.perf_counter() - started))
    return 0


def format_report(config: SeedConfig, counts: SeedCounts, seconds: float) -> str:
    """Return the summary line of a seed."""
    verb = "would produce" if config.dry_run else "produced"
    return (
        f"{verb} {plural(counts.users, 'user state')} and "
        f"{plural(counts.positions, 'partition position')} "
        f"({format_size(counts.bytes)} of keys and values) from {config.worker.state_dir} to "
        f"changelog topic {config.worker.changelog_topic}, skipped "
        f"{plural(counts.skipped, 'record')}, {seconds:.1f} s"
    )
