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

`stream.changelog_restore` reads these records back into a store, `stream.changelog_seed`
selects them from an existing store for `hiertcn-stream changelog seed`, and
`stream.changelog_topic` checks the topic before a pool or a seed starts.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from confluent_kafka import Consumer

from statestore import PartitionPosition, UserState
from statestore.codec import encode_state
from statestore.keys import encode_position, position_key
from stream.config import WorkerConfig
from stream.delivery import OutputRecord
from stream.errors import StreamError
from stream.logs import librdkafka_logger

if TYPE_CHECKING:
    from stream.changelog_restore import ChangelogReader

USER_PREFIX = b"u"
POSITION_PREFIX = b"p"

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
        # Imported here because stream.changelog_restore imports the record keys of this module.
        from stream.changelog_restore import ChangelogReader

        return ChangelogReader(
            self._open_consumer(), self.topic, self.input_topic, self.stall_seconds
        )


def _open_changelog_consumer(config: WorkerConfig) -> Consumer:
    # Imported here because stream.changelog_restore imports this module.
    from stream.changelog_restore import changelog_consumer_settings

    # librdkafka's own lines go to a rate-limited logger instead of this process's stderr.
    client_log = librdkafka_logger(f"{__name__}.librdkafka")
    return Consumer({**changelog_consumer_settings(config), "logger": client_log})
