"""The Kafka admin client of the start checks: broker metadata and topic creation.

`hiertcn-stream run` and `hiertcn-stream changelog seed` use it before they start, so that
brokers that do not respond or a topic that cannot be created give one error line.

A topic that CreateTopics has just created can be missing from the metadata, or be listed
without partitions or leaders, for a moment: another host that starts in the same second
could read it so. `create_topics` therefore returns only once every partition has a leader, and
`wait_for_leaders` lets a check wait for a topic that another host has just created.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from statestore.maintenance import plural
from stream.config import WorkerConfig
from stream.errors import ConfigError, StreamError
from stream.kafka_settings import client_settings, describe_invalid_setting
from stream.logs import librdkafka_logger

logger = logging.getLogger(__name__)

# Seconds to wait for the broker's metadata before `run` gives up with an error.
BROKER_TIMEOUT_SECONDS = 15.0
# Seconds of one metadata request of the broker check. A signal handler runs only between two
# requests, because confluent-kafka's list_topics() blocks in C.
BROKER_POLL_SECONDS = 0.5
# Seconds between two metadata requests while a new topic's partitions wait for their leaders.
LEADER_POLL_SECONDS = 0.1


class BrokerUnavailableError(StreamError):
    """The Kafka brokers did not respond, or a topic could not be created."""


def describe_client_error(config: WorkerConfig, error: KafkaException) -> str:
    """Return one error line for librdkafka's rejection of a client's settings."""
    return describe_invalid_setting(
        error.args[0].str(),
        config.kafka_settings,
        config.kafka_env_names,
        origins="the -X options or the HIERTCN_KAFKA_ variables",
    )


def create_admin(config: WorkerConfig) -> AdminClient:
    """Create the admin client, with librdkafka's log lines routed to a rate-limited logger.

    librdkafka queues its log lines until `poll()`; an invalid -X setting raises `ConfigError`.
    The admin client is a librdkafka producer instance, which would log a CONFWARN line for
    each consumer-only -X setting (`-X session.timeout.ms`), so it gets none of them.
    """
    settings = {
        "bootstrap.servers": config.brokers,
        **client_settings(config.kafka_settings, "producer"),
        "logger": _LIBRDKAFKA_LOGGER,
    }
    try:
        return AdminClient(settings)
    except KafkaException as error:
        raise ConfigError(describe_client_error(config, error)) from error


# librdkafka logs a failed connection attempt many times a second; a few lines tell the cause.
_LIBRDKAFKA_LOGGER = librdkafka_logger(f"{__name__}.librdkafka")


def wait_for_metadata(admin: AdminClient, brokers: str) -> Any:
    """Return the cluster metadata, asking every `BROKER_POLL_SECONDS` until the timeout.

    Raise `BrokerUnavailableError` with librdkafka's last error text when no broker responds.
    """
    deadline = time.monotonic() + BROKER_TIMEOUT_SECONDS
    while True:
        started = time.monotonic()
        timeout = min(BROKER_POLL_SECONDS, max(deadline - started, 0.01))
        try:
            metadata = admin.list_topics(timeout=timeout)
        except KafkaException as error:
            if time.monotonic() < deadline:
                # A refused connection fails at once; wait out the request's time before the next.
                time.sleep(max(started + timeout - time.monotonic(), 0.0))
                continue
            admin.poll(0)  # log the first librdkafka lines that explain the failure
            raise BrokerUnavailableError(
                f"Kafka brokers {brokers} did not respond within {BROKER_TIMEOUT_SECONDS:g} s "
                f"({error.args[0].str()}): check --brokers and the -X security settings"
            ) from error
        admin.poll(0)
        return metadata


def create_topics(admin: AdminClient, config: WorkerConfig, new_topics: list[NewTopic]) -> set[str]:
    """Create `new_topics`, leave each one that exists already as it is, and wait until the
    metadata shows a leader for every partition of each. Return the names of those created.

    Raise `BrokerUnavailableError` when a creation fails or the leaders do not come within
    `BROKER_TIMEOUT_SECONDS`.
    """
    created: set[str] = set()
    for topic, future in admin.create_topics(new_topics).items():
        try:
            future.result(BROKER_TIMEOUT_SECONDS)
        except KafkaException as error:
            if error.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise BrokerUnavailableError(
                    f"could not create topic {topic!r} on {config.brokers}: {error}"
                ) from error
            logger.info("topic %s exists already: another client created it just now", topic)
            continue
        partitions = next(new.num_partitions for new in new_topics if new.topic == topic)
        logger.info("created topic %s with %s", topic, plural(partitions, "partition"))
        created.add(topic)
    # A topic that another client created keeps its own partition count, which the caller checks.
    expected = {
        new.topic: new.num_partitions if new.topic in created else None for new in new_topics
    }
    wait_for_leaders(admin, config, expected)
    return created


def wait_for_leaders(
    admin: AdminClient,
    config: WorkerConfig,
    topics: Mapping[str, int | None],
    timeout: float = BROKER_TIMEOUT_SECONDS,
) -> Any:
    """Return the cluster metadata once it lists each topic of `topics` with its partition count
    (at least one where the count is None) and a leader for every partition.

    Ask every `LEADER_POLL_SECONDS`, and raise `BrokerUnavailableError` after `timeout` seconds.
    The requests list every topic: one for named topics would make a broker with
    auto.create.topics.enable create a missing one with the default partition count.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            metadata = admin.list_topics(timeout=BROKER_POLL_SECONDS)
            missing = {
                topic: problem
                for topic, partitions in topics.items()
                if (problem := _leader_problem(metadata, topic, partitions))
            }
        except KafkaException as error:
            missing = {
                topic: f"metadata request failed ({error.args[0].str()})" for topic in topics
            }
        if not missing:
            return metadata
        if time.monotonic() >= deadline:
            problems = "; ".join(f"{topic} {problem}" for topic, problem in missing.items())
            raise BrokerUnavailableError(
                f"topics on {config.brokers} still lack partition leaders after {timeout:g} s: "
                f"{problems}. Check the broker logs and that every broker runs, then start again"
            )
        time.sleep(LEADER_POLL_SECONDS)


def settled_topic(admin: AdminClient, config: WorkerConfig, metadata: Any, topic: str) -> Any:
    """Return the metadata of `topic` from `metadata`, or None when it is not listed.

    A topic listed without partitions, or with an error, can be one that another host created
    a moment ago. Its metadata then comes from `wait_for_leaders`, which raises
    `BrokerUnavailableError` when the leaders do not come within `BROKER_TIMEOUT_SECONDS`.
    """
    described = metadata.topics.get(topic)
    if described is None or (described.partitions and described.error is None):
        return described
    logger.info(
        "topic %s is listed without partitions or with an error, as a topic created a moment "
        "ago can be: waiting up to %g s for the leaders of its partitions",
        topic,
        BROKER_TIMEOUT_SECONDS,
    )
    return wait_for_leaders(admin, config, {topic: None}).topics[topic]


def _leader_problem(metadata: Any, topic: str, partitions: int | None) -> str:
    """Return what keeps `topic` from being usable in `metadata`, or "" when it lists
    `partitions` partitions (at least one for None), each with a leader."""
    described = metadata.topics.get(topic)
    if described is None:
        return "is not listed"
    if described.error is not None:
        return f"is listed with error {described.error.str()}"
    count = len(described.partitions)
    if count == 0:
        return "is listed without partitions"
    if partitions is not None and count < partitions:
        return f"is listed with {count} of {plural(partitions, 'partition')}"
    leaderless = sorted(p.id for p in described.partitions.values() if p.leader < 0)
    if leaderless:
        return f"has no leader for partitions {', '.join(map(str, leaderless))}"
    return ""
