"""`hiertcn-stream run`: serve recommendations from a Kafka topic with a pool of workers.

    hiertcn-stream run --brokers 127.0.0.1:9092 --bundle bundle/ --processes 2

Every option also reads a `HIERTCN_*` environment variable (see `--help`); a flag wins over it.
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from stream.config import OPTIONS, WorkerConfig, build_config, check_k
from stream.errors import ConfigError, StreamError
from stream.logs import librdkafka_logger
from stream.pool import run_pool

if TYPE_CHECKING:
    from export.bundle import ModelBundle

logger = logging.getLogger(__name__)

# Seconds to wait for the broker's metadata before `run` gives up with an error.
BROKER_TIMEOUT_SECONDS = 15.0

_DEFAULTS = WorkerConfig(brokers="-", bundle=".")


class BrokerUnavailableError(StreamError):
    """The Kafka brokers did not respond, or a topic could not be created."""


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `run` subcommand."""
    parser = subparsers.add_parser(
        "run",
        help="consume interactions from Kafka and publish recommendations",
        description="Consume interaction events from Kafka with a pool of worker processes and "
        "publish a ranked list of items for every event.",
        epilog=(
            "librdkafka settings also come from HIERTCN_KAFKA_<KEY> variables: the key in upper "
            "case with _ for . and __ for _ (HIERTCN_KAFKA_SECURITY_PROTOCOL=SSL sets "
            "security.protocol). The switches --create-topics, --keep-going and "
            "--no-state-sync have no variable."
        ),
    )
    for option in OPTIONS:
        default = getattr(_DEFAULTS, option.name)
        if option.name in ("brokers", "bundle"):
            default_text = "required"
        elif default is None:
            default_text = "default: the bundle's"
        else:
            default_text = f"default {default}"
        parser.add_argument(
            option.flag,
            dest=option.name,
            type=argparse_type(option.parse),
            default=None,
            metavar=option.metavar,
            help=f"{option.help} (env {option.env}; {default_text})",
        )
    parser.add_argument(
        "--no-state-sync",
        dest="state_sync",
        action="store_false",
        help="do not fsync LMDB commits: faster, but an OS crash can lose the last commits "
        "(never consistency)",
    )
    parser.add_argument(
        "-X",
        dest="kafka_settings",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="librdkafka setting for the consumer and the producer, repeatable "
        "(e.g. -X security.protocol=SSL -X ssl.ca.location=ca.pem)",
    )
    parser.add_argument(
        "--create-topics",
        action="store_true",
        help="create the input, output and dead-letter topics when missing, with --partitions",
    )
    parser.add_argument(
        "--keep-going",
        action="store_true",
        help="keep the other workers running when one exits, instead of stopping the pool",
    )
    parser.add_argument(
        "--rebuild-state",
        action="store_true",
        help="start with a state directory that contains no position even when the consumer group "
        "has committed offsets: reads the partitions from their earliest offset, rebuilds the "
        "users' states and publishes their outputs again (for a new host that joins a group of "
        "several hosts, or a new state directory on purpose)",
    )
    parser.set_defaults(func=run, state_sync=None)


def run(args: argparse.Namespace) -> int:
    """Build the configuration, check the broker, and run the pool until it stops."""
    flags = {option.name: getattr(args, option.name) for option in OPTIONS}
    config = build_config(
        flags,
        os.environ,
        args.kafka_settings,
        create_topics=args.create_topics,
        keep_going=args.keep_going,
        rebuild_state=args.rebuild_state,
    )
    check_producer_settings(config)
    # The store comes after the broker check, so that a failed start leaves no new state folder.
    bundle = check_bundle(config)
    check_topics(config)
    check_store(config, bundle)
    return run_pool(config, logging.getLogger().getEffectiveLevel())


def check_producer_settings(config: WorkerConfig) -> None:
    """Check the workers' linger.ms against their message timeout before anything starts.

    Each worker creates its producer only after it has started, where librdkafka's rejection of
    an -X linger.ms would stop every worker with a traceback instead of one error line.
    """
    from stream.produce import check_linger_below_message_timeout
    from stream.worker import producer_settings

    settings = producer_settings(config)
    check_linger_below_message_timeout(settings, config.kafka_settings, timeout_flag=None)


def check_bundle(config: WorkerConfig) -> ModelBundle:
    """Load and verify the bundle, and check --k against its items, before any worker starts.

    A bad bundle then gives one error line here instead of one traceback per worker, with the
    exit code and message of `replay` for the same bundle. The workers load it again after they
    start, because a loaded bundle does not survive a process start.
    """
    from stream.commands.replay import open_bundle

    bundle = open_bundle(config.bundle, config.device)
    if config.k is not None:
        check_k(config.k, bundle.num_items)
    return bundle


def check_store(config: WorkerConfig, bundle: ModelBundle) -> None:
    """Open the state store once, creating it when missing, and check it against the bundle.

    The open checks that the recorded state shapes fit the bundle. The workers open the store
    again after they start.
    """
    from stream.worker import open_state_store

    open_state_store(config, bundle).close()
    logger.info("bundle %s and state store %s checked", bundle.version, config.state_dir.resolve())


def argparse_type(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """Wrap an option parser so that argparse shows its message, not only its name."""

    def parse_flag(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from error

    parse_flag.__name__ = getattr(parse, "__name__", "value")
    return parse_flag


def create_admin(config: WorkerConfig) -> AdminClient:
    """Create the admin client, with librdkafka's log lines routed to a rate-limited logger.

    librdkafka queues its log lines until `poll()`; an invalid -X setting raises `ConfigError`.
    """
    settings = {
        "bootstrap.servers": config.brokers,
        **config.kafka_settings,
        "logger": _LIBRDKAFKA_LOGGER,
    }
    try:
        return AdminClient(settings)
    except KafkaException as error:
        reason = error.args[0].str()
        # librdkafka quotes the property it rejects; values are left out, as they may be secrets.
        names = [key for key in config.kafka_settings if f'"{key}"' in reason]
        raise ConfigError(
            f"invalid librdkafka setting {names[0] if names else 'in -X'}: {reason}: fix or "
            "remove the -X option or the HIERTCN_KAFKA_ variable"
        ) from error


# librdkafka logs a failed connection attempt many times a second; a few lines tell the cause.
_LIBRDKAFKA_LOGGER = librdkafka_logger(f"{__name__}.librdkafka")


def check_topics(config: WorkerConfig) -> None:
    """Check that the brokers respond, and create missing topics when `create_topics` is set."""
    admin = create_admin(config)
    logger.info("connecting to Kafka brokers %s (waiting up to %.0f s)", config.brokers,
                BROKER_TIMEOUT_SECONDS)  # fmt: skip
    try:
        metadata = admin.list_topics(timeout=BROKER_TIMEOUT_SECONDS)
    except KafkaException as error:
        admin.poll(0)  # log the first librdkafka lines that explain the failure
        raise BrokerUnavailableError(
            f"Kafka brokers {config.brokers} did not respond within {BROKER_TIMEOUT_SECONDS} s "
            f"({error}): check --brokers and the -X security settings"
        ) from error
    admin.poll(0)
    topics = (config.input_topic, config.output_topic, config.dead_letter_topic)
    missing = [topic for topic in topics if topic not in metadata.topics]
    if not missing:
        return
    if not config.create_topics:
        logger.warning(
            "topics %s do not exist: the broker may create them on first use; "
            "pass --create-topics to create them with --partitions partitions",
            ", ".join(missing),
        )
        return
    new_topics = [NewTopic(topic, num_partitions=config.partitions) for topic in missing]
    for topic, future in admin.create_topics(new_topics).items():
        try:
            future.result(BROKER_TIMEOUT_SECONDS)
            logger.info("created topic %s with %d partitions", topic, config.partitions)
        except KafkaException as error:
            if error.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise BrokerUnavailableError(
                    f"could not create topic {topic!r} on {config.brokers}: {error}"
                ) from error
