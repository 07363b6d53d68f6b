"""The choice of the changelog records that a seed produces from an existing state store.

`hiertcn-stream changelog seed` (`stream.commands.changelog`) produces the records that
`stream.changelog` defines from an existing store, for the users that a pool stored before it
ran with the changelog. It produces every state whose partition is a partition of the input
topic with a stored position (`state_record_chunks`), then those positions (`position_records`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from statestore import REPLAY_PARTITION, PartitionPosition, StateStore, UserState
from statestore.codec import decode_state
from statestore.errors import StateCodecError
from statestore.maintenance import iter_records, plural
from stream.changelog import changelog_records
from stream.delivery import OutputRecord

# Users read per LMDB read transaction of a seed, and per list of records it yields.
SEED_CHUNK_USERS = 1000
# Skipped user ids that the warning of a seed names.
SEED_NAMED_SKIPS = 10


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
