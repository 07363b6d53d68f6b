"""The Kafka admin client of the start checks: broker metadata and topic creation.

`hiertcn-stream run` and `hiertcn-stream changelog seed` use it before they start, so that
brokers that do not respond or a topic that cannot be created give one error line.
"""

from __future__ import annotations

import logging
import time
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


def create_topics(admin: AdminClient, config: WorkerConfig, new_topics: list[NewTopic]) -> None:
    """Create `new_topics`, and leave each one that exists already as it is."""
    for topic, future in admin.create_topics(new_topics).items():
        try:
            future.result(BROKER_TIMEOUT_SECONDS)
            partitions = next(new.num_partitions for new in new_topics if new.topic == topic)
            logger.info("created topic %s with %s", topic, plural(partitions, "partition"))
        except KafkaException as error:
            if error.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise BrokerUnavailableError(
                    f"could not create topic {topic!r} on {config.brokers}: {error}"
                ) from error
