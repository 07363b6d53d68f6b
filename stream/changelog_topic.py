"""The checks of the changelog topic before a pool or a seed starts, and its creation.

The topic needs as many partitions as the input topic and a cleanup.policy that contains
compact (`stream.changelog`). `hiertcn-stream run` and `hiertcn-stream changelog seed` check
both, and with --create-topics they create a missing topic with `CHANGELOG_TOPIC_CONFIG`. `run`
also warns when the topic contains no record while the state store contains users.

Two hosts that start in the same second with --create-topics race to create the topic. The one
that creates it waits for its leaders (`create_topics`). The other one may read it as missing,
or as listed without partitions, and then waits for its leaders before it checks it. Its
requests about the topic's configuration and offsets retry the errors of a topic that a
broker is still loading (`_retry_while_loading`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from confluent_kafka import KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic, OffsetSpec, ResourceType

from statestore.maintenance import plural
from stream.changelog import CHANGELOG_TOPIC_CONFIG, ChangelogError, create_command
from stream.config import WorkerConfig
from stream.kafka_admin import (
    BROKER_TIMEOUT_SECONDS,
    LEADER_POLL_SECONDS,
    BrokerUnavailableError,
    create_topics,
    settled_topic,
    wait_for_leaders,
)

logger = logging.getLogger(__name__)

# Errors of a topic that a broker lists already but is still loading. On the local KRaft broker
# of ops/kafka/kafka.sh, ListOffsets gave NOT_LEADER_FOR_PARTITION right after the metadata
# had shown every partition's leader.
_LOADING_ERRORS = frozenset(
    {
        KafkaError.UNKNOWN_TOPIC_OR_PART,
        KafkaError.LEADER_NOT_AVAILABLE,
        KafkaError.NOT_LEADER_FOR_PARTITION,
    }
)

_Result = TypeVar("_Result")


@dataclass(frozen=True)
class ChangelogStart:
    """The state of the changelog topic that the start checks found."""

    created: bool  # created by these checks (--create-topics)
    empty: bool  # contains no record in any partition


def check_changelog_topic(admin: AdminClient, config: WorkerConfig, metadata: Any) -> bool:
    """Raise ChangelogError unless the changelog topic exists with the input topic's partition
    count and a cleanup.policy that compacts. With `create_topics`, create it when missing, with
    `CHANGELOG_TOPIC_CONFIG`. Return whether this call created it.

    `metadata` is the cluster metadata read before any topic was created.
    """
    topic = config.changelog_topic
    input_topic = settled_topic(admin, config, metadata, config.input_topic)
    if input_topic is not None:
        partitions = len(input_topic.partitions)
    elif config.create_topics:
        partitions = config.partitions  # check_topics has just created it
    else:
        raise ChangelogError(
            f"input topic {config.input_topic} does not exist, so changelog topic {topic} "
            "cannot be checked against its partition count: create the input topic first, "
            "or pass --create-topics"
        )
    described = settled_topic(admin, config, metadata, topic)
    if described is None and config.create_topics:
        new_topic = NewTopic(topic, partitions, config=dict(CHANGELOG_TOPIC_CONFIG))
        if create_topics(admin, config, [new_topic]):
            return True
        # Another host created it since `metadata` was read, and `create_topics` has waited
        # for its leaders: check it as an existing topic.
        described = wait_for_leaders(admin, config, {topic: None}).topics[topic]
    if described is None:
        command = create_command(config.brokers, topic, partitions)
        raise ChangelogError(
            f"changelog topic {topic} does not exist: create it with {partitions} partitions "
            f"(as {config.input_topic}) and compaction, {command}, or pass --create-topics"
        )
    if len(described.partitions) != partitions:
        policy = read_cleanup_policy(admin, config)
        raise ChangelogError(
            describe_partition_mismatch(config, len(described.partitions), partitions, policy)
        )
    check_changelog_compaction(admin, config)
    return False


def describe_partition_mismatch(
    config: WorkerConfig, found: int, expected: int, policy: str
) -> str:
    """Return the error message for a changelog topic with `found` partitions where the input
    topic has `expected`, and the fix that Kafka allows: a topic can gain partitions only."""
    topic = config.changelog_topic
    message = (
        f"changelog topic {topic} has {plural(found, 'partition')}, but input topic "
        f"{config.input_topic} has {expected}: the states of each input partition go to the "
        f"changelog partition of the same number, so both need {expected}."
    )
    compacted = "compact" in _policies(policy)
    if found == 1 and not compacted:
        message += (
            f" With cleanup.policy={policy} and one partition, the broker probably created it "
            "on first use (auto.create.topics.enable=true), for example after the topic was "
            "deleted, so it contains no user states."
        )
    if found > expected or not compacted:
        if found > expected:
            reason = "A topic cannot lose partitions"
        else:
            reason = f"Its cleanup.policy={policy} lacks compact too"
        return message + (
            f" {reason}, so stop every host of the group, delete the topic and create it again "
            f"with {create_command(config.brokers, topic, expected)} (or `hiertcn-stream "
            "changelog seed --create-topics`). Then seed it from the state directory of every "
            'host (docs/runbook.md, "Recover a lost changelog topic")'
        )
    return message + (
        f" Add partitions with kafka-topics.sh --bootstrap-server {config.brokers} --alter "
        f"--topic {topic} --partitions {expected}"
    )


def changelog_is_empty(admin: AdminClient, config: WorkerConfig, partitions: list[int]) -> bool:
    """Return whether every partition of the changelog topic has its earliest offset at its end.

    A failed offset query logs a warning and returns False, because only a warning depends on it.
    """
    tps = [TopicPartition(config.changelog_topic, partition) for partition in partitions]
    try:
        earliest = _list_offsets(admin, tps, OffsetSpec.earliest())
        latest = _list_offsets(admin, tps, OffsetSpec.latest())
    except KafkaException as error:
        logger.warning(
            "reading the offsets of changelog topic %s failed, so the check that it contains "
            "records was skipped: %s",
            config.changelog_topic,
            error,
        )
        return False
    return all(latest[partition] <= earliest[partition] for partition in partitions)


def _list_offsets(
    admin: AdminClient, tps: list[TopicPartition], spec: OffsetSpec
) -> dict[int, int]:
    def request() -> dict[int, int]:
        futures = admin.list_offsets(
            {tp: spec for tp in tps}, request_timeout=BROKER_TIMEOUT_SECONDS
        )
        return {tp.partition: future.result().offset for tp, future in futures.items()}

    return _retry_while_loading(request)


def _retry_while_loading(request: Callable[[], _Result]) -> _Result:
    """Return `request()`, asked again every `LEADER_POLL_SECONDS` while it fails with one of
    `_LOADING_ERRORS`, for up to `BROKER_TIMEOUT_SECONDS`. Raise its last KafkaException."""
    deadline = time.monotonic() + BROKER_TIMEOUT_SECONDS
    while True:
        try:
            return request()
        except KafkaException as error:
            if error.args[0].code() not in _LOADING_ERRORS or time.monotonic() >= deadline:
                raise
        time.sleep(LEADER_POLL_SECONDS)


def read_cleanup_policy(admin: AdminClient, config: WorkerConfig) -> str:
    """Return the changelog topic's cleanup.policy, or raise BrokerUnavailableError."""
    topic = config.changelog_topic
    resource = ConfigResource(ResourceType.TOPIC, topic)

    def request() -> Any:
        return admin.describe_configs([resource])[resource].result(BROKER_TIMEOUT_SECONDS)

    try:
        entries = _retry_while_loading(request)
    except KafkaException as error:
        raise BrokerUnavailableError(
            f"reading the configuration of changelog topic {topic} on {config.brokers} failed: "
            f"{error}; check that the client's principal may describe the topic's configuration"
        ) from error
    entry = entries.get("cleanup.policy")
    return "" if entry is None or entry.value is None else entry.value


def _policies(policy: str) -> set[str]:
    return {part.strip() for part in policy.split(",")}


def check_changelog_compaction(admin: AdminClient, config: WorkerConfig) -> None:
    """Raise ChangelogError unless the changelog topic's cleanup.policy contains compact.

    Warn when it also contains delete, under which the broker deletes the states of users idle
    for longer than the topic's retention.ms.
    """
    topic = config.changelog_topic
    policy = read_cleanup_policy(admin, config)
    policies = _policies(policy)
    if "compact" not in policies:
        raise ChangelogError(
            f"changelog topic {topic} has cleanup.policy={policy}, without compact: the broker "
            "would delete user states after the topic's retention, and a restore would lose "
            f"them. Set it with kafka-configs.sh --bootstrap-server {config.brokers} --alter "
            f"--entity-type topics --entity-name {topic} --add-config cleanup.policy=compact"
        )
    if "delete" in policies:
        logger.warning(
            "changelog topic %s has cleanup.policy=%s: the broker deletes the states of users "
            "idle for longer than its retention.ms, and a host that restores their partition "
            "starts those users anew",
            topic,
            policy,
        )


def warn_unseeded_changelog(config: WorkerConfig, changelog: ChangelogStart, users: int) -> None:
    """Warn when the changelog topic contains no record while the state store contains users.

    A restore from that changelog writes no state of these users. A host that restores one of
    their partitions then starts them anew, or keeps serving an older copy that it stored.
    """
    if users == 0:
        return
    state_dir = config.state_dir.resolve()
    found = "was created just now" if changelog.created else "contains no record"
    logger.warning(
        "changelog topic %s %s, but state store %s contains %s: a host that restores a "
        "partition from this changelog misses every one of them. Before another host restores "
        "from it, stop this pool and copy the store into the changelog with `hiertcn-stream "
        "changelog seed --brokers %s --state-dir %s --changelog-topic %s` (and the pool's "
        "--input-topic and --group-id), then start the pool again",
        config.changelog_topic,
        found,
        state_dir,
        plural(users, "user"),
        config.brokers,
        state_dir,
        config.changelog_topic,
    )
