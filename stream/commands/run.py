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
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import FrameType
from typing import TYPE_CHECKING, Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic, OffsetSpec, ResourceType

from statestore.maintenance import plural
from stream.changelog import CHANGELOG_TOPIC_CONFIG, ChangelogError, create_command
from stream.commands.common import SESSION_CLOSE_HELP, argparse_type, open_bundle
from stream.config import (
    FLAG_KAFKA_SETTINGS,
    OPTIONS,
    WORKER_KAFKA_SETTINGS,
    WorkerConfig,
    build_config,
    check_k,
    format_flag_size,
    format_option,
    parse_size,
    source_of,
)
from stream.errors import ConfigError, StreamError
from stream.kafka_settings import (
    add_kafka_setting_option,
    consumer_settings,
    describe_invalid_setting,
    producer_settings,
    setting_source,
)
from stream.logs import librdkafka_logger
from stream.metrics import check_temporary_directory
from stream.pool import run_pool

if TYPE_CHECKING:
    from export.bundle import ModelBundle

logger = logging.getLogger(__name__)

# Seconds to wait for the broker's metadata before `run` gives up with an error.
BROKER_TIMEOUT_SECONDS = 15.0
# Seconds of one metadata request of the broker check. A signal handler runs only between two
# requests, because confluent-kafka's list_topics() blocks in C.
BROKER_POLL_SECONDS = 0.5

_DEFAULTS = WorkerConfig(brokers="-", bundle=".")


class BrokerUnavailableError(StreamError):
    """The Kafka brokers did not respond, or a topic could not be created."""


@dataclass(frozen=True)
class ChangelogStart:
    """The state of the changelog topic that the start checks found."""

    created: bool  # created by these checks (--create-topics)
    empty: bool  # contains no record in any partition


class StartInterruptedError(StreamError):
    """A SIGTERM or SIGINT arrived before the pool started; the exit code is 128 + signal."""

    def __init__(self, signum: int) -> None:
        name = signal.Signals(signum).name
        super().__init__(f"received {name} during the start checks: stopped before any worker")
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
        elif default is None:
            default_text = "default: the bundle's"
        elif option.parse is parse_size:
            default_text = f"default {format_flag_size(default)}"
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
    with stop_on_signal():
        return _run(args)


@contextmanager
def stop_on_signal() -> Iterator[None]:
    """Make SIGTERM and SIGINT raise `StartInterruptedError` until the pool installs its own.

    `run_pool` replaces these handlers while the pool runs and puts them back after it.
    """

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise StartInterruptedError(signum)

    previous = {signum: signal.signal(signum, interrupt) for signum in STOP_SIGNALS}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


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


def describe_client_error(config: WorkerConfig, error: KafkaException) -> str:
    """Return one error line for librdkafka's rejection of a client's settings."""
    return describe_invalid_setting(
        error.args[0].str(),
        config.kafka_settings,
        config.kafka_env_names,
        origins="the -X options or the HIERTCN_KAFKA_ variables",
    )


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
    """Load and verify the bundle, and check --k against its items, before any worker starts.

    A bad bundle then gives one error line here instead of one traceback per worker, with the
    exit code and message of `replay` for the same bundle. The workers load it again after they
    start, because a loaded bundle does not survive a process start.
    """
    bundle = open_bundle(config.bundle, config.device, source_of(config, "device"))
    if config.k is not None:
        check_k(config.k, bundle.num_items, source_of(config, "k"))
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
        raise ConfigError(describe_client_error(config, error)) from error


# librdkafka logs a failed connection attempt many times a second; a few lines tell the cause.
_LIBRDKAFKA_LOGGER = librdkafka_logger(f"{__name__}.librdkafka")
# The check of the workers' settings gets its own rate limit, so that it cannot use up the lines
# that explain a failed broker check right after it.
_CLIENT_CHECK_LOGGER = librdkafka_logger(f"{__name__}.client_check")


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


def check_topics(config: WorkerConfig) -> ChangelogStart | None:
    """Check that the brokers respond, create missing topics when `create_topics` is set, and
    check the changelog topic. Return what the changelog check found, None without one."""
    admin = create_admin(config)
    logger.info("connecting to Kafka brokers %s (waiting up to %.0f s)", config.brokers,
                BROKER_TIMEOUT_SECONDS)  # fmt: skip
    metadata = wait_for_metadata(admin, config.brokers)
    topics = (config.input_topic, config.output_topic, config.dead_letter_topic)
    missing = [topic for topic in topics if topic not in metadata.topics]
    if config.create_topics and config.input_topic in metadata.topics:
        warn_if_fewer_partitions(config, len(metadata.topics[config.input_topic].partitions))
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
    partitions = sorted(metadata.topics[config.changelog_topic].partitions)
    return ChangelogStart(created=False, empty=changelog_is_empty(admin, config, partitions))


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


def check_changelog_topic(admin: AdminClient, config: WorkerConfig, metadata: Any) -> bool:
    """Raise ChangelogError unless the changelog topic exists with the input topic's partition
    count and a cleanup.policy that compacts. With `create_topics`, create it when missing, with
    `CHANGELOG_TOPIC_CONFIG`. Return whether this call created it.

    `metadata` is the cluster metadata read before any topic was created.
    """
    topic = config.changelog_topic
    input_topic = metadata.topics.get(config.input_topic)
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
    described = metadata.topics.get(topic)
    if described is None and config.create_topics:
        new_topic = NewTopic(topic, partitions, config=dict(CHANGELOG_TOPIC_CONFIG))
        create_topics(admin, config, [new_topic])
        return True
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
    futures = admin.list_offsets({tp: spec for tp in tps}, request_timeout=BROKER_TIMEOUT_SECONDS)
    return {tp.partition: future.result().offset for tp, future in futures.items()}


def read_cleanup_policy(admin: AdminClient, config: WorkerConfig) -> str:
    """Return the changelog topic's cleanup.policy, or raise BrokerUnavailableError."""
    topic = config.changelog_topic
    resource = ConfigResource(ResourceType.TOPIC, topic)
    try:
        entries = admin.describe_configs([resource])[resource].result(BROKER_TIMEOUT_SECONDS)
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
