"""librdkafka settings: the `-X key=value` flags, and the Kafka clients of a worker.

`run` and `produce` register their `-X` option and parse its values here, so both commands
accept the same syntax and reject a key that one of their own flags sets. The worker's consumer
and producer get their settings, each with the reason it is set, and their error callback here.
"""

from __future__ import annotations

import argparse
import logging
import re
import threading
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from confluent_kafka import Consumer, KafkaError, Producer

from stream.errors import ConfigError
from stream.logs import RateLimitedLog, librdkafka_logger

if TYPE_CHECKING:
    from prometheus_client import Counter as PrometheusCounter

    from stream.config import WorkerConfig

logger = logging.getLogger(__name__)

# librdkafka's alias names and the property each one sets, from CONFIGURATION.md of librdkafka
# 2.16. librdkafka's errors name the property, not the alias that the user typed.
ALIASES = {
    "bootstrap.servers": "metadata.broker.list",
    "max.in.flight": "max.in.flight.requests.per.connection",
    "sasl.mechanism": "sasl.mechanisms",
    "sasl.oauthbearer.client.credentials.client.id": "sasl.oauthbearer.client.id",
    "sasl.oauthbearer.client.credentials.client.secret": "sasl.oauthbearer.client.secret",
    "max.partition.fetch.bytes": "fetch.message.max.bytes",
    "linger.ms": "queue.buffering.max.ms",
    "retries": "message.send.max.retries",
    "compression.type": "compression.codec",
    "acks": "request.required.acks",
    "delivery.timeout.ms": "message.timeout.ms",
}
# Properties that only a consumer (C) or only a producer (P) reads, from the C/P column of
# CONFIGURATION.md of librdkafka 2.16. The other client ignores them with a CONFWARN log line,
# so `client_settings` leaves them out of its settings. A key not listed here goes to both.
# An admin client is a librdkafka producer instance, so it gets the producer's keys.
CONSUMER_ONLY = frozenset(
    {
        "group.id", "group.instance.id", "group.protocol", "group.remote.assignor",
        "partition.assignment.strategy", "session.timeout.ms", "heartbeat.interval.ms",
        "group.protocol.type", "coordinator.query.interval.ms", "max.poll.interval.ms",
        "enable.auto.commit", "auto.commit.interval.ms", "enable.auto.offset.store",
        "queued.min.messages", "queued.max.messages.kbytes", "fetch.wait.max.ms",
        "fetch.queue.backoff.ms", "fetch.message.max.bytes", "fetch.max.bytes",
        "fetch.min.bytes", "fetch.error.backoff.ms", "offset.store.method",
        "isolation.level", "enable.partition.eof", "check.crcs", "auto.offset.reset",
        "auto.commit.enable", "consume.callback.max.messages", "consume_cb", "rebalance_cb",
        "offset_commit_cb", "offset.store.path", "offset.store.sync.interval.ms",
    }
)  # fmt: skip
PRODUCER_ONLY = frozenset(
    {
        "transactional.id", "transaction.timeout.ms", "enable.idempotence",
        "enable.gapless.guarantee", "queue.buffering.max.messages", "queue.buffering.max.kbytes",
        "queue.buffering.max.ms", "message.send.max.retries",
        "queue.buffering.backpressure.threshold", "compression.codec",
        "compression.level", "batch.num.messages", "batch.size", "delivery.report.only.error",
        "dr_cb", "dr_msg_cb", "sticky.partitioning.linger.ms", "request.required.acks",
        "request.timeout.ms", "message.timeout.ms", "partitioner", "partitioner_cb",
        "msg_order_cmp", "produce.offset.report", "queuing.strategy", "on_delivery",
    }
)  # fmt: skip
# librdkafka reads "topic.NAME" as the topic property NAME for every topic.
_TOPIC_PREFIX = "topic."
# A property name in double quotes or backticks, as librdkafka's configuration errors write it.
_QUOTED = re.compile(r'["`]([^"`]+)["`]')
# Secret-like properties, whose values error messages never show. A key is secret-like when it
# contains one of these words (sasl.password, ssl.key.pem, ssl.keystore.password,
# sasl.oauthbearer.client.secret, and also the harmless ssl.key.location) or is listed in
# _SECRET_KEYS, whose values hold OAUTHBEARER claims. librdkafka rejects Java's sasl.jaas.config,
# but a user who types it may be passing a Java client's credentials.
_SECRET_WORDS = ("password", "secret", "key", "token", "sasl.jaas")
_SECRET_KEYS = frozenset({"sasl.oauthbearer.config", "sasl.oauthbearer.extensions"})
# The characters that end a key in an -X text. No librdkafka property name contains them.
_KEY_END = re.compile(r"[:=\s]")
# The prefix of the environment variables that set librdkafka settings, read by stream.config.
_KAFKA_ENV_PREFIX = "HIERTCN_KAFKA_"


# Suffixes of librdkafka properties that is_secret_key matches by a word in their names, but
# whose values are file paths or URLs, such as ssl.key.location, sasl.kerberos.keytab
# and sasl.oauthbearer.token.endpoint.url.
_NOT_SECRET_SUFFIXES = (".location", ".url", ".keytab")


def is_secret_key(key: str) -> bool:
    """Return whether the librdkafka setting `key` may contain a credential."""
    lowered = key.strip().lower()
    return lowered in _SECRET_KEYS or any(word in lowered for word in _SECRET_WORDS)


def kafka_env_name(key: str) -> str:
    """Return the `HIERTCN_KAFKA_<KEY>` variable that sets `key`: `.` as `_`, `_` as `__`."""
    words = key.strip().split("_")
    return _KAFKA_ENV_PREFIX + "__".join(word.replace(".", "_") for word in words).upper()


def describe_malformed_setting(text: str) -> str:
    """Return why the -X text `text`, which lacks a valid `key=` part, is invalid, without "-X".

    When `text` contains a secret-like word anywhere, or has an empty key, the reason shows only
    the part before the first ':', '=' or whitespace and then "…", so that a mistyped
    `-X sasl.password:VALUE` does not print the password.
    """
    key = _KEY_END.split(text.strip(), maxsplit=1)[0]
    if key and not is_secret_key(text):
        return (
            f"{text!r} is invalid: write a librdkafka setting as -X key=value, for example "
            "-X acks=all"
        )
    if not key or not is_secret_key(key):
        return f"'{key}…' is invalid: write a librdkafka setting as -X key=value"
    return (
        f"'{key}…' is invalid: write a librdkafka setting as -X {key}=VALUE, or better set "
        f"{kafka_env_name(key)}, because ps shows command lines to other users of the host"
    )


def _split_setting(text: str) -> tuple[str, str] | None:
    """Split `key=value` at the first `=`, or return None when the key is empty or contains ':'
    or whitespace, which no librdkafka property name does."""
    key, separator, value = text.partition("=")
    key = key.strip()
    if not separator or not key or _KEY_END.search(key):
        return None
    return key, value


def parse_kafka_setting(text: str) -> tuple[str, str]:
    """Split one `-X key=value` librdkafka setting; the value may contain `=`."""
    setting = _split_setting(text)
    if setting is None:
        raise ConfigError(f"-X {describe_malformed_setting(text)}")
    return setting


def check_kafka_setting_text(text: str) -> str:
    """Return `text` when it is a `key=value` setting, else raise argparse's type error.

    The -X option checks its values while argparse parses them, so a secret that follows
    `-X sasl.password` as a separate argument stops the parse here, before argparse would
    print it as an unrecognized argument.
    """
    setting = _split_setting(text)
    if setting is None:
        raise argparse.ArgumentTypeError(describe_malformed_setting(text))
    key, value = setting
    # `-X sasl.password= SECRET` leaves the secret as a separate argument, which argparse would
    # print as unrecognized, so an empty secret value stops the parse here as well. Keys whose
    # names contain a secret-like word but whose values are paths or URLs may be empty.
    if value == "" and is_secret_key(key) and not key.endswith(_NOT_SECRET_SUFFIXES):
        raise argparse.ArgumentTypeError(
            f"'{key}=' has an empty value: write -X {key}=VALUE without a space, or better set "
            f"{kafka_env_name(key)}, because ps shows command lines to other users of the host"
        )
    return text


def parse_kafka_flags(texts: Iterable[str]) -> dict[str, str]:
    """Parse the `-X` flags in order; a later flag with the same key wins."""
    return dict(parse_kafka_setting(text) for text in texts)


def property_of(key: str) -> str:
    """Return the librdkafka property that `key` sets: its alias resolved, "topic." dropped."""
    if key in ALIASES:
        return ALIASES[key]
    if key.startswith(_TOPIC_PREFIX) and len(key) > len(_TOPIC_PREFIX):
        unprefixed = key[len(_TOPIC_PREFIX) :]
        return ALIASES.get(unprefixed, unprefixed)
    return key


def names_of(key: str) -> list[str]:
    """Return `key` and the other names of the librdkafka property it sets, `key` first."""
    target = property_of(key)
    others = [name for name, named in ALIASES.items() if named == target and name != key]
    if target != key:
        others.insert(0, target)
    return [key, *others]


def client_settings(settings: Mapping[str, Any], client: str) -> dict[str, Any]:
    """Return `settings` without the keys that only the other client reads.

    `client` is "consumer" or "producer". Aliases count as the property they set.
    """
    other_only = PRODUCER_ONLY if client == "consumer" else CONSUMER_ONLY
    return {key: value for key, value in settings.items() if property_of(key) not in other_only}


def setting_source(key: str, env_names: Mapping[str, str]) -> str:
    """Return where the setting `key` came from: its environment variable, or `-X key`."""
    return env_names.get(key, f"-X {key}")


def add_kafka_setting_option(
    parser: argparse.ArgumentParser, dest: str, help_text: str, flag_keys: Mapping[str, str]
) -> None:
    """Add the repeatable `-X KEY=VALUE` option, whose help lists the keys that flags set.

    `flag_keys` maps each librdkafka key that the command sets itself to the flag to use
    instead. Such a key given with -X stops the command (`check_flag_settings`).
    """
    rejected = ", ".join(
        f"{' or '.join(names_of(key))} (use {flag})" for key, flag in flag_keys.items()
    )
    parser.add_argument(
        "-X",
        dest=dest,
        action="append",
        type=check_kafka_setting_text,
        default=[],
        metavar="KEY=VALUE",
        help=f"{help_text}. Keys that a flag sets are rejected: {rejected}",
    )


def check_flag_settings(
    keys: Iterable[str], flag_keys: Mapping[str, str], env_names: Mapping[str, str]
) -> None:
    """Raise `ConfigError` when a key of `keys`, or an alias of it, is one that a flag sets.

    librdkafka applies the settings in order, so such a key would silently replace the flag's
    value. `flag_keys` maps each key to its flag, and `env_names` maps keys to the environment
    variables that set them.
    """
    flags = {property_of(key): (key, flag) for key, flag in flag_keys.items()}
    for key in keys:
        if property_of(key) not in flags:
            continue
        name, flag = flags[property_of(key)]
        alias = "" if key == name else f" (an alias of {name})"
        raise ConfigError(
            f"{setting_source(key, env_names)}{alias} would replace the value of {flag}: "
            f"remove it and use {flag}"
        )


def describe_invalid_setting(
    reason: str,
    keys: Iterable[str],
    env_names: Mapping[str, str] | None = None,
    origins: str = "the -X option",
) -> str:
    """Return one error line for librdkafka's rejection `reason` of the settings `keys`.

    librdkafka names the property it rejects, and names an alias by the property it sets
    (`linger.ms` as `queue.buffering.max.ms`). The line names the key as the user typed it,
    and where it came from. `origins` names where the settings may come from, for a reason
    that names none of `keys`. Some of librdkafka's reasons end with a line break.
    """
    env_names = env_names or {}
    reason = " ".join(reason.split())
    quoted = set(_QUOTED.findall(reason))
    # librdkafka stops at the first bad setting, and a later key replaces an earlier one.
    for key in reversed(list(keys)):
        named = property_of(key)
        if key in quoted or named in quoted:
            reason = reason.replace(f'"{named}"', f'"{key}"').replace(f"`{named}`", f"`{key}`")
            source = setting_source(key, env_names)
            fix = f"unset {source}" if key in env_names else f"remove {source}"
            return f"librdkafka setting {key} is invalid: {reason}: fix or {fix}"
    return f"a librdkafka setting is invalid: {reason}: fix or remove {origins}"


# -- the worker's consumer and producer ----------------------------------------------------------

# librdkafka's max.poll.interval.ms that the worker sets unless -X overrides it.
DEFAULT_MAX_POLL_INTERVAL_MS = 300_000
# Seconds between two metadata requests for the input topic's partition count when the
# consumer's own metadata refresh is off.
PARTITION_COUNT_SECONDS = 60.0
# librdkafka's topic.metadata.refresh.interval.ms of the worker's consumer, unless -X sets it.
# The consumer finds partitions added to the input topic only at this refresh, so librdkafka's
# default of 300000 ms (CONFIGURATION.md of librdkafka 2.16) leaves them unread for up to 5
# minutes. Each refresh is one small Metadata request per consumer for the subscribed topic
# (topic.metadata.refresh.sparse, on by default), and metadata.max.age.ms follows at 3 times it.
DEFAULT_METADATA_REFRESH_MS = 60_000


# librdkafka's error codes for a broker that cannot be reached.
OUTAGE_ERROR_CODES = (KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN)

# Consumer errors that the group coordinator repeats on every retry, with the fix for each.
FATAL_CONSUMER_ERRORS = {
    KafkaError.INVALID_SESSION_TIMEOUT: "set -X session.timeout.ms within the broker's "
    "group.min.session.timeout.ms and group.max.session.timeout.ms",
    KafkaError.GROUP_AUTHORIZATION_FAILED: "grant the client's principal Read on the consumer "
    "group (--group-id), or use a group it may read",
    KafkaError.TOPIC_AUTHORIZATION_FAILED: "grant the client's principal Read on --input-topic "
    "and Write on the output and dead-letter topics",
    KafkaError.INCONSISTENT_GROUP_PROTOCOL: "give every member of --group-id the same assignment "
    "strategy, or use another --group-id",
    KafkaError.INVALID_GROUP_ID: "pass a valid --group-id",
    KafkaError.UNSUPPORTED_ASSIGNOR: "use a --group-id whose members all use cooperative-sticky",
}


def close_consumer(consumer: Consumer, static_member: bool) -> None:
    """Close `consumer`, and make a dynamic member without partitions leave its group first.

    librdkafka 2.16 with cooperative-sticky sends no LeaveGroup when a member without partitions
    closes, so the group keeps it until session.timeout.ms and the next start waits that long.
    unsubscribe() sends the LeaveGroup. A static member keeps its membership on purpose.
    """
    if not static_member and not consumer.assignment():
        consumer.unsubscribe()
    consumer.close()


def consumer_settings(config: WorkerConfig, index: int = 0) -> dict[str, Any]:
    """Return the librdkafka consumer settings of worker `index`, each with the reason it is set."""
    settings: dict[str, Any] = {
        "bootstrap.servers": config.brokers,
        "group.id": config.group_id,
        # Offsets are committed only after the batch's outputs are delivered and its states
        # are in LMDB, never on a timer.
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        # A partition without a stored position starts at the oldest event, because the user
        # states must be built from every event.
        "auto.offset.reset": "earliest",
        # Only events of committed producer transactions are served, never aborted ones.
        "isolation.level": "read_committed",
        # A batch takes milliseconds to seconds, and WorkerConfig keeps its delivery retries
        # within half of this, so the group does not evict a busy worker.
        "max.poll.interval.ms": DEFAULT_MAX_POLL_INTERVAL_MS,
        # cooperative-sticky moves only the partitions that change owner, so a process that
        # joins or leaves the pool does not stop the others. on_revoke finishes and commits
        # each revoked partition before it moves.
        "partition.assignment.strategy": "cooperative-sticky",
        # Partition EOF events are not needed: an empty consume is the idle signal.
        "enable.partition.eof": False,
        # Partitions added to the input topic get assigned within about this interval.
        "topic.metadata.refresh.interval.ms": DEFAULT_METADATA_REFRESH_MS,
    }
    settings.update(client_settings(config.kafka_settings, "consumer"))
    # Static membership: the broker fences every member but one that joins with the same
    # group.instance.id, so each process of a pool gets the id with its index appended.
    instance = settings.get("group.instance.id")
    if instance and config.processes > 1:
        settings["group.instance.id"] = f"{instance}-{index}"
    return settings


def partition_count_seconds(settings: Mapping[str, Any]) -> float:
    """Return the seconds between two readings of the input topic's partition count.

    That is the consumer's topic.metadata.refresh.interval.ms, at least 1 s, because the
    consumer finds new partitions only at that refresh. A refresh that is off (-1) or a value
    that is not a number gives PARTITION_COUNT_SECONDS.
    """
    try:
        refresh_ms = float(str(settings.get("topic.metadata.refresh.interval.ms")).strip())
    except ValueError:
        return PARTITION_COUNT_SECONDS
    if refresh_ms < 0:
        return PARTITION_COUNT_SECONDS
    return max(refresh_ms / 1000, 1.0)


def producer_settings(config: WorkerConfig) -> dict[str, Any]:
    """Return the librdkafka producer settings, each with the reason it is set."""
    settings: dict[str, Any] = {
        "bootstrap.servers": config.brokers,
        # Retries inside librdkafka neither duplicate nor reorder the outputs of one user.
        "enable.idempotence": True,
        "acks": "all",
        # A failed delivery is reported within one wait of the worker, which then retries it.
        "delivery.timeout.ms": int(config.delivery_timeout * 1000),
        # A batch's outputs go out together; waiting 1 ms more adds little latency.
        "linger.ms": 1,
    }
    settings.update(client_settings(config.kafka_settings, "producer"))
    return settings


class KafkaErrorLog:
    """The error callback (`error_cb`) of a worker's consumer and producer.

    It counts every error in `hiertcn_kafka_errors_total{code}` and logs the first ones of each
    librdkafka error code, then a summary line per interval: while the broker is down,
    librdkafka reports a failed connection many times a second. librdkafka calls it from the
    thread that polls the client, which is the worker thread or the commit thread.
    """

    def __init__(self, errors: PrometheusCounter, log: RateLimitedLog | None = None) -> None:
        self.errors = errors
        self.log = log or RateLimitedLog(
            "Kafka client errors", "code", logger=logger, singular="Kafka client error"
        )
        self._lock = threading.Lock()
        # The codes of an unreachable broker start at 0, so that a rate over the first errors
        # of an outage counts all of them.
        for code in OUTAGE_ERROR_CODES:
            errors.labels(KafkaError(code).name())

    def __call__(self, error: KafkaError) -> None:
        code = error.name()
        self.errors.labels(code).inc()
        if error.fatal():
            # librdkafka cannot recover from a fatal error, and the client's next call raises it.
            logger.error("fatal Kafka client error: %s", error)
            return
        with self._lock:
            self.log.add(
                code, "Kafka client error %s (librdkafka retries it): %s", code, error.str()
            )
            self.log.flush()

    def flush(self) -> None:
        """Log the summary of the errors not logged yet, when its interval has passed."""
        with self._lock:
            self.log.flush()


def open_clients(
    config: WorkerConfig, index: int, on_error: KafkaErrorLog
) -> tuple[Consumer, Producer]:
    """Create the consumer and the producer of worker `index`, with `on_error` as error_cb."""
    # librdkafka's own lines go to a rate-limited logger instead of this process's stderr.
    client_log = librdkafka_logger(f"{__name__}.librdkafka")
    consumer = Consumer(
        {**consumer_settings(config, index), "error_cb": on_error, "logger": client_log}
    )
    producer = Producer({**producer_settings(config), "error_cb": on_error, "logger": client_log})
    return consumer, producer
