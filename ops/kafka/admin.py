"""Topic administration on a Kafka broker through confluent-kafka's AdminClient."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

logger = logging.getLogger(__name__)


class TopicCreationError(Exception):
    """A topic could not be created; the message names the topic and the broker's error."""


def create_topics(
    bootstrap: str,
    names: Iterable[str],
    partitions: int = 1,
    replication_factor: int = 1,
    timeout_s: float = 30.0,
) -> None:
    """Create each topic in `names` and wait until every partition of it has a leader.

    A topic that already exists is left as it is, whatever its partition count.
    """
    if partitions < 1:
        raise ValueError(f"partitions={partitions} is invalid: a topic needs at least 1")
    names = list(names)
    admin = AdminClient({"bootstrap.servers": bootstrap})
    new_topics = [NewTopic(name, partitions, replication_factor) for name in names]
    futures = admin.create_topics(
        new_topics, operation_timeout=timeout_s, request_timeout=timeout_s
    )
    for name, future in futures.items():
        try:
            future.result(timeout=timeout_s)
        except KafkaException as error:
            if error.args[0].code() == KafkaError.TOPIC_ALREADY_EXISTS:
                logger.info("topic %s already exists on %s", name, bootstrap)
                continue
            raise TopicCreationError(
                f"creating topic {name!r} on {bootstrap} failed: {error}"
            ) from error
        logger.info("created topic %s with %d partitions on %s", name, partitions, bootstrap)
    wait_for_leaders(admin, names, timeout_s)


def wait_for_leaders(admin: AdminClient, names: list[str], timeout_s: float) -> None:
    """Wait until the cluster metadata lists every topic in `names` with a leader per partition.

    Producing right after CreateTopics can otherwise fail with UNKNOWN_TOPIC_OR_PART while the
    broker is still loading the new partitions.
    """
    deadline = time.monotonic() + timeout_s
    pending = set(names)
    while pending:
        metadata = admin.list_topics(timeout=timeout_s)
        for name in list(pending):
            topic = metadata.topics.get(name)
            if topic is None or topic.error is not None:
                continue
            if all(partition.leader >= 0 for partition in topic.partitions.values()):
                pending.discard(name)
        if pending and time.monotonic() > deadline:
            raise TopicCreationError(
                f"topics {sorted(pending)} have no leader after {timeout_s:.0f}s: "
                "check the broker log"
            )
        if pending:
            time.sleep(0.1)
