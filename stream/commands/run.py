"""`hiertcn-stream run`: serve recommendations from a Kafka topic with a pool of workers.

    hiertcn-stream run --brokers 127.0.0.1:9092 --bundle bundle/ --processes 2

Every option also reads a `HIERTCN_*` environment variable (see `--help`); a flag wins over it.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import TYPE_CHECKING, Any

from confluent_kafka import Consumer, KafkaException, Producer
from confluent_kafka.admin import NewTopic

from hiertcn.signals import STOP_SIGNALS
from stream.changelog_topic import (
    ChangelogStart,
    changelog_is_empty,
    check_changelog_topic,
    warn_unseeded_changelog,
)
from stream.commands.common import SESSION_CLOSE_HELP, argparse_type, open_bundle
from stream.config import (
    FLAG_KAFKA_SETTINGS,
    OPTIONS,
    WORKER_KAFKA_SETTINGS,
    WorkerConfig,
    build_config,
    check_bundle_settings,
    flag_parser,
    format_flag_size,
    format_option,
    parse_size,
    parse_tolerance,
    source_of,
)
from stream.errors import ConfigError, StreamError
from stream.kafka_admin import (
    BROKER_TIMEOUT_SECONDS,
    create_admin,
    create_topics,
    describe_client_error,
    settled_topic,
    wait_for_metadata,
)
from stream.kafka_settings import (
    add_kafka_setting_option,
    consumer_settings,
    producer_settings,
    setting_source,
)
from stream.logs import librdkafka_logger
from stream.metrics import check_temporary_directory
from stream.pool import check_metrics_port, run_pool

if TYPE_CHECKING:
    from export.bundle import ModelBundle

logger = logging.getLogger(__name__)

_DEFAULTS = WorkerConfig(brokers="-", bundle=".")


class StartInterruptedError(StreamError):
    """A SIGTERM or SIGINT arrived before the pool started; the exit code is 128 + signal."""

    def __init__(self, signum: int) -> None:
        name = signal.Signals(signum).name
        super().__init__(f"{name} received during the start checks, before any worker started")
        self.exit_code = 128 + signum


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
            "security.protocol). The switches --create-topics, --keep-going, --no-state-sync, "
            "--rebuild-state and --publish-on-session-close have no variable."
        ),
    )
    for option in OPTIONS:
        default = getattr(_DEFAULTS, option.name)
        if option.name in ("brokers", "bundle"):
            default_text = "required"
        elif default == "":
            default_text = "default: empty"
        elif default is None and option.parse is parse_tolerance:
            default_text = "default: off"
        elif default is None:
            default_text = "default: the bundle's"
        elif option.parse is parse_size:
            default_text = f"default {format_flag_size(default)}"
        else:
            default_text = f"default {default}"
        parser.add_argument(
            option.flag,
            dest=option.name,
            type=argparse_type(flag_parser(option.parse)),
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
    add_kafka_setting_option(
        parser,
        "kafka_settings",
        "librdkafka setting for the consumer and the producer, repeatable "
        "(e.g. -X security.protocol=SSL -X ssl.ca.location=ca.pem). Rejected, because the "
        f"worker's delivery guarantees depend on them: {', '.join(WORKER_KAFKA_SETTINGS)}",
        FLAG_KAFKA_SETTINGS,
    )
    parser.add_argument(
        "--create-topics",
        action="store_true",
        help="create the input, output and dead-letter topics when missing, with --partitions, "
        "and the --changelog-topic with the input topic's partition count, "
        "cleanup.policy=compact, segment.ms=3600000 and min.cleanable.dirty.ratio=0.1",
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
    parser.add_argument(
        "--publish-on-session-close",
        action="store_true",
        help=f"{SESSION_CLOSE_HELP} The live recall then scores that first event against this "
        "output, and the end-to-end latency leaves it out (default: off)",
    )
    parser.set_defaults(func=run, state_sync=None)


def run(args: argparse.Namespace) -> int:
    """Build the configuration, check the broker, and run the pool until it stops."""
    # The handlers come first: as PID 1 of a container, the process ignores a SIGTERM that has
    # no handler, and the checks below can take the bundle load plus 15 s.
    try:
        with stop_on_signal():
            return _run(args)
    except StartInterruptedError as stopped:
        # A stop on request, so in the form of the pool's last line, not as an error.
        logger.info("pool exits with %d: %s", stopped.exit_code, stopped)
        return stopped.exit_code


@contextmanager
def stop_on_signal() -> Iterator[None]:
    """Make SIGTERM and SIGINT raise `StartInterruptedError` until the pool installs its own.

    `run_pool` replaces these handlers while the pool runs and leaves both signals ignored
    after it, which this keeps until the process exits.
    """

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise StartInterruptedError(signum)

    previous = {signum: signal.signal(signum, interrupt) for signum in STOP_SIGNALS}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            if signal.getsignal(signum) is interrupt:
                signal.signal(signum, handler)


def _run(args: argparse.Namespace) -> int:
    flags = {option.name: getattr(args, option.name) for option in OPTIONS}
    config = build_config(
        flags,
        os.environ,
        args.kafka_settings,
        create_topics=args.create_topics,
        keep_going=args.keep_going,
        rebuild_state=args.rebuild_state,
        publish_on_session_close=args.publish_on_session_close,
    )
    # The pool writes its workers' metrics under TMPDIR: fail here, before the slow broker check.
    check_temporary_directory()
    # Before the checks below create topics and the state directory.
    check_metrics_port(config)
    check_producer_settings(config)
    check_client_settings(config)
    # The store comes after the broker check, so that a failed start leaves no new state folder.
    bundle = check_bundle(config)
    config = device_for_workers(config, bundle)
    changelog = check_topics(config)
    users = check_store(config, bundle)
    if changelog is not None and changelog.empty:
        warn_unseeded_changelog(config, changelog, users)
    log_delivery_settings(config)
    return run_pool(config, logging.getLogger().getEffectiveLevel())


def log_delivery_settings(config: WorkerConfig) -> None:
    """Log the tries of a failed output and the broker outage that the workers ride out."""
    longest_wait = config.delivery_timeout * config.delivery_attempts
    logger.info(
        "failed outputs get %d tries at least %g s apart (%s, %s). A worker whose outputs are "
        "still undelivered %g s after its wait began stops with exit status 1, so the pool "
        "rides out a broker outage of up to %g s",
        config.delivery_attempts,
        config.delivery_timeout,
        format_option(config, "delivery_attempts", config.delivery_attempts),
        format_option(config, "delivery_timeout", f"{config.delivery_timeout:g}"),
        longest_wait,
        longest_wait,
    )


def check_producer_settings(config: WorkerConfig) -> None:
    """Check the workers' linger.ms against their message timeout before anything starts.

    Each worker creates its producer only after it has started, where librdkafka's rejection of
    an -X linger.ms would stop every worker with a traceback instead of one error line.
    """
    check_linger_below_delivery_timeout(config, producer_settings(config))


def check_client_settings(config: WorkerConfig) -> None:
    """Create and close one consumer and one producer with the workers' settings.

    librdkafka checks combinations of settings (acks with enable.idempotence, the assignment
    strategy with group.protocol) only when a client is created, and the workers create theirs
    after they start, where a rejection would stop each one with a traceback. A client connects
    in the background, so this needs no broker.
    """
    for client, settings in (
        (Consumer, consumer_settings(config)),
        (Producer, producer_settings(config)),
    ):
        try:
            instance = client({**settings, "logger": _CLIENT_CHECK_LOGGER})
        except KafkaException as error:
            raise ConfigError(describe_client_error(config, error)) from error
        if isinstance(instance, Consumer):
            instance.close()
        else:
            instance.flush(0)


# The check of the workers' settings gets its own rate limit, so that it cannot use up the lines
# that explain a failed broker check right after it.
_CLIENT_CHECK_LOGGER = librdkafka_logger(f"{__name__}.client_check")


def check_linger_below_delivery_timeout(config: WorkerConfig, settings: dict[str, Any]) -> None:
    """Raise `ConfigError` unless the message timeout that --delivery-timeout sets is above
    linger.ms.

    librdkafka 2.16 fails to create a producer whose message.timeout.ms is not above linger.ms
    ("`message.timeout.ms` must be greater than `linger.ms`").
    """
    from stream.produce import LINGER_NAMES, last_setting

    linger_name, linger = last_setting(settings, LINGER_NAMES)
    try:
        linger_ms = float(str(linger).strip())
    except ValueError:
        return  # librdkafka rejects it when the admin client is created
    timeout_ms = settings["delivery.timeout.ms"]
    if linger_ms < timeout_ms:
        return
    source = setting_source(linger_name, config.kafka_env_names)
    timeout = format_option(config, "delivery_timeout", f"{config.delivery_timeout:g}")
    raise ConfigError(
        f"{source}={linger} is not below the message timeout that {timeout} sets "
        f"({timeout_ms:g} ms), and librdkafka requires message.timeout.ms above linger.ms: "
        f"lower {source} below {timeout_ms:g} ms, or raise "
        f"{source_of(config, 'delivery_timeout')} above {linger_ms / 1000:g} s"
    )


def check_bundle(config: WorkerConfig) -> ModelBundle:
    """Load and verify the bundle, and check --k against its items and the output message size
    against the producer's message.max.bytes, before any worker starts.

    A bad bundle then gives one error line here instead of one traceback per worker, with the
    exit code and message of `replay` for the same bundle. The workers load it again after they
    start, because a loaded bundle does not survive a process start.
    """
    bundle = open_bundle(config.bundle, config.device, source_of(config, "device"))
    check_bundle_settings(config, bundle)
    return bundle


def device_for_workers(config: WorkerConfig, bundle: ModelBundle) -> WorkerConfig:
    """Return `config` with device "cpu" when "auto" found no usable CUDA provider here.

    Each worker loads the bundle again, and would log again why "auto" runs on the CPU, which
    `check_bundle` has logged once already.
    """
    from export.providers import CUDA_PROVIDER

    if config.device != "auto" or CUDA_PROVIDER in bundle.providers:
        return config
    return dataclasses.replace(config, device="cpu")


def check_store(config: WorkerConfig, bundle: ModelBundle) -> int:
    """Open the state store once, creating it when missing, and check it against the bundle.
    Return the number of users that it contains.

    The open checks that the recorded state shapes fit the bundle. It takes the writers lock
    shared, as the workers do, so it runs beside a pool that uses the store (a rolling restart).
    The workers open the store again after they start.
    """
    from stream.worker import open_state_store

    store = open_state_store(config, bundle)
    try:
        users = store.user_count()
    finally:
        store.close()
    logger.info("bundle %s and state store %s checked", bundle.version, config.state_dir.resolve())
    return users


def check_topics(config: WorkerConfig) -> ChangelogStart | None:
    """Check that the brokers respond, create missing topics when `create_topics` is set, and
    check the changelog topic. Return what the changelog check found, None without one."""
    admin = create_admin(config)
    logger.info("connecting to Kafka brokers %s (waiting up to %.0f s)", config.brokers,
                BROKER_TIMEOUT_SECONDS)  # fmt: skip
    metadata = wait_for_metadata(admin, config.brokers)
    topics = (config.input_topic, config.output_topic, config.dead_letter_topic)
    missing = [topic for topic in topics if topic not in metadata.topics]
    input_topic = settled_topic(admin, config, metadata, config.input_topic)
    if config.create_topics and input_topic is not None:
        warn_if_fewer_partitions(config, len(input_topic.partitions))
    if missing and not config.create_topics:
        logger.warning(
            "topics %s do not exist: the broker may create them on first use; "
            "pass --create-topics to create them with --partitions partitions",
            ", ".join(missing),
        )
    elif missing:
        create_topics(admin, config, [NewTopic(topic, config.partitions) for topic in missing])
    if not config.changelog_topic:
        return None
    if check_changelog_topic(admin, config, metadata):
        return ChangelogStart(created=True, empty=True)
    # The check found the input topic's partition count, and Kafka numbers partitions from 0.
    # `metadata` may predate the topic, which another host can have created a moment ago.
    count = len(input_topic.partitions) if input_topic is not None else config.partitions
    partitions = list(range(count))
    return ChangelogStart(created=False, empty=changelog_is_empty(admin, config, partitions))


def warn_if_fewer_partitions(config: WorkerConfig, partitions: int) -> None:
    """Warn when the existing input topic has fewer partitions than --create-topics would create.

    `--create-topics` leaves an existing topic as it is, for example one that the broker created
    with its default partition count when a producer wrote to it first.
    """
    if partitions >= config.partitions:
        return
    processes = config.processes
    if processes > partitions:
        effect = (
            f"{processes - partitions} of the {processes} workers "
            f"({format_option(config, 'processes', processes)}) will get no partition and stay idle"
        )
    else:
        effect = f"at most {partitions} workers of the consumer group can get partitions"
    logger.warning(
        "input topic %s already exists with %d partition(s), fewer than %s, and --create-topics "
        "leaves it as it is: %s. To add partitions, run kafka-topics.sh --bootstrap-server %s "
        "--alter --topic %s --partitions %d. Producers then send the new events of some users "
        "to other partitions",
        config.input_topic,
        partitions,
        format_option(config, "partitions", config.partitions),
        effect,
        config.brokers,
        config.input_topic,
        config.partitions,
    )
