"""Configuration of the Kafka worker pool: `WorkerConfig` and where each value comes from.

Every option has a command-line flag and a `HIERTCN_*` environment variable. A flag wins over the
environment variable, and the environment variable wins over the default. librdkafka settings come
from `-X key=value` flags and from `HIERTCN_KAFKA_<KEY>` variables, where the key is written in
upper case with `_` for `.` and `__` for `_` (`HIERTCN_KAFKA_SECURITY_PROTOCOL=SSL` sets
`security.protocol`).
"""

from __future__ import annotations

import heapq
import ipaddress
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgpack

from export.manifest import MAX_SESSION_GAP, MIN_SESSION_GAP
from hiertcn.command_line import beyond_float_fix, format_number, parse_float_flag
from statestore.store import MAX_MAP_SIZE, format_size
from stream.dead_letters import DEFAULT_MESSAGE_MAX_BYTES
from stream.errors import ConfigError
from stream.events import DEFAULT_MAX_FUTURE_SECONDS, EventConfig
from stream.kafka_settings import (
    DEFAULT_MAX_POLL_INTERVAL_MS,
    check_flag_settings,
    parse_kafka_flags,
    property_of,
    setting_source,
)
from stream.pipeline import SESSION_CLOSE_TRIGGER, Recommendation

if TYPE_CHECKING:
    from export.bundle import ModelBundle

ENV_PREFIX = "HIERTCN_"
KAFKA_ENV_PREFIX = "HIERTCN_KAFKA_"

# Kafka's own rule for topic names (kafka.common.internals.Topic).
_TOPIC_NAME = re.compile(r"^[A-Za-z0-9._-]{1,249}$")

_SIZE_UNITS = {"": 1, "k": 1000, "m": 1000**2, "g": 1000**3, "t": 1000**4}
_SIZE_UNITS.update({"ki": 1024, "mi": 1024**2, "gi": 1024**3, "ti": 1024**4})
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]i?)?b?\s*$", re.IGNORECASE)
# Limits of --state-map-size (bytes). The maximum is the state store's maximum map size, because
# the store rejects a larger initial map.
MIN_STATE_MAP_SIZE = 1 << 20
MAX_STATE_MAP_SIZE = MAX_MAP_SIZE
# A day: an event that arrives later than that after its time is a backfill, not a delay.
MAX_IDLE_PARTITION_SECONDS = 86_400
# The fixes that the errors of --metrics-address name. The port has a flag of its own.
_BIND_ADDRESS_FIX = (
    "use a host name, an IPv4 address, or an IPv6 address with or without brackets, such as "
    "localhost, 127.0.0.1, ::1 or [::1]"
)
_BIND_ADDRESS_PORT_FIX = (
    "give the port with --metrics-port (HIERTCN_METRICS_PORT), and the address alone, such as "
    "127.0.0.1, localhost, ::1 or [::1]"
)
_BIND_ADDRESS_BRACKETS_FIX = (
    "write an IPv6 address in one pair of brackets or none (::1 or [::1]), or a host name or "
    "IPv4 address such as localhost or 127.0.0.1"
)

# librdkafka settings that a flag of `run` sets, with that flag. --delivery-timeout sets the
# producer's delivery.timeout.ms (message.timeout.ms), which must equal the worker's own wait
# for each try of a delivery (`stream.delivery`).
FLAG_KAFKA_SETTINGS = {
    "bootstrap.servers": "--brokers",
    "group.id": "--group-id",
    "delivery.timeout.ms": "--delivery-timeout",
}
# librdkafka settings that the worker sets itself because its delivery guarantees rest on them.
WORKER_KAFKA_SETTINGS = (
    "enable.auto.commit",
    "enable.auto.offset.store",
    "isolation.level",
    "partition.assignment.strategy",
    "on_delivery",
    # The worker never calls init_transactions(), so a producer with a transactional.id fails
    # at its first produce().
    "transactional.id",
    # The worker's cooperative-sticky assignment needs the classic protocol: librdkafka rejects
    # partition.assignment.strategy under group.protocol=consumer.
    "group.protocol",
)
# Delivery settings that -X may repeat with the worker's own value, and only with it: outputs
# count as delivered once the broker acknowledges them, and the worker then commits their
# input offsets. Lower acks or no idempotence can lose or reorder outputs after a broker failure.
DELIVERY_KAFKA_SETTINGS = {
    "enable.idempotence": ("true",),
    "request.required.acks": ("all", "-1"),
}


class OptionValueError(ValueError):
    """A flag or environment variable value that an option's parser rejects.

    `fix` is what to use instead, so that a message can name the flag or the variable.
    """

    def __init__(self, text: str, fix: str) -> None:
        super().__init__(f"{text!r} is invalid: {fix}")
        self.text = text
        self.fix = fix


def parse_size(text: str) -> int:
    """Parse a byte size such as `1073741824`, `512MiB` or `1GiB` (SI and binary units)."""
    match = _SIZE.match(text)
    if match is None:
        raise OptionValueError(text, "use bytes or a number with a unit, for example 1GiB")
    number, unit = match.groups()
    size = float(number) * _SIZE_UNITS[(unit or "").lower()]
    if not math.isfinite(size):
        raise OptionValueError(text, "use a finite size, for example 1GiB")
    return int(size)


def format_flag_size(size: int) -> str:
    """Return a byte count as `parse_size` reads it, for example `64KiB` or `1.5GiB`."""
    return format_size(size).replace(" ", "")


def parse_int(text: str) -> int:
    """Parse a whole number such as `64`."""
    try:
        return int(text)
    except ValueError:
        raise OptionValueError(text, "use a whole number") from None


def parse_bool(text: str) -> bool:
    """Parse `1/0`, `true/false`, `yes/no` or `on/off` (any case)."""
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise OptionValueError(text, "use true or false")


@dataclass(frozen=True)
class Option:
    """One worker option: its `WorkerConfig` field, flag, environment variable and help."""

    name: str
    flag: str
    parse: Callable[[str], Any]
    help: str
    metavar: str | None = None

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.name.upper()


class _GivenNone:
    """The value of a flag given with a text that means None, such as `off` or `bundle`."""

    def __repr__(self) -> str:
        return "GIVEN_NONE"


# A flag's parsed None, which must win over the option's variable as any other flag value does;
# `build_config` turns it into None. A flag that is not given stays None.
GIVEN_NONE = _GivenNone()


def flag_parser(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """Wrap an option's parser for its flag, so that a text parsed as None gives `GIVEN_NONE`."""

    def parse_flag(text: str) -> Any:
        value = parse(text)
        return GIVEN_NONE if value is None else value

    parse_flag.__name__ = getattr(parse, "__name__", "value")
    return parse_flag


def parse_float(text: str) -> float:
    """Parse a number such as `2.5`. A nonzero text that a 64-bit float reads as 0 or inf, such
    as `1e-400`, is rejected here, so that no range check reports a value the user never typed."""
    try:
        value = float(text)
    except ValueError:
        raise OptionValueError(text, "use a number such as 2.5") from None
    try:
        return parse_float_flag(text)
    except ValueError:
        raise OptionValueError(text, beyond_float_fix(value)) from None


def _optional_float(text: str) -> float | None:
    return None if text.strip().lower() in ("", "bundle") else parse_float(text)


def parse_tolerance(text: str) -> float | None:
    """Parse seconds from 0 up, or "off" for no limit."""
    if text.strip().lower() == "off":
        return None
    value = parse_float(text)
    if not (math.isfinite(value) and value >= 0):
        raise OptionValueError(text, "use off or a number of seconds >= 0")
    return value


def parse_bind_address(text: str) -> str:
    """Parse a listen address without port: a host name, an IPv4 address, or an IPv6 address
    with or without URL brackets (`::1` or `[::1]`). Return it without the brackets.

    Raises OptionValueError for a URL scheme, for white space, for a port in the address, for
    brackets that do not enclose exactly one IPv6 address, for colons outside an IPv6 address,
    and for a blank text. The resolver judges the host names that pass.
    """
    if "://" in text:
        raise OptionValueError(text, "remove the URL scheme: " + _BIND_ADDRESS_FIX)
    if text.strip() and any(character.isspace() for character in text):
        raise OptionValueError(text, "remove the white space: " + _BIND_ADDRESS_FIX)
    if text.startswith("["):
        inner, closed, rest = text[1:].partition("]")
        if closed and _is_port_suffix(rest) and _is_ipv6(inner):
            raise OptionValueError(text, _BIND_ADDRESS_PORT_FIX)
        if not closed or rest or not _is_ipv6(inner):
            raise OptionValueError(text, _BIND_ADDRESS_BRACKETS_FIX)
        return inner
    if "[" in text or "]" in text:
        raise OptionValueError(text, _BIND_ADDRESS_BRACKETS_FIX)
    if not text.strip():
        raise OptionValueError(text, _BIND_ADDRESS_FIX)
    if text.count(":") == 1:
        # HOST:PORT. An IPv6 address has at least two colons.
        raise OptionValueError(text, _BIND_ADDRESS_PORT_FIX)
    if ":" in text and not _is_ipv6(text):
        raise OptionValueError(text, _BIND_ADDRESS_FIX)
    return text


def _is_ipv6(text: str) -> bool:
    """Return whether `text` is an IPv6 address, with an optional zone such as `%eth0`."""
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


def _is_port_suffix(text: str) -> bool:
    return len(text) > 1 and text[0] == ":" and text[1:].isdigit()


def _optional_int(text: str) -> int | None:
    return None if text.strip().lower() in ("", "bundle") else parse_int(text)


# The options of `hiertcn-stream run`, in the order `--help` lists them.
OPTIONS: tuple[Option, ...] = (
    Option(
        "brokers", "--brokers", str, "Kafka bootstrap servers, HOST:PORT[,HOST:PORT...]", "HOSTS"
    ),
    Option("bundle", "--bundle", Path, "model bundle directory written by `hiertcn export`", "DIR"),
    Option("group_id", "--group-id", str, "Kafka consumer group of the pool", "GROUP"),
    Option("input_topic", "--input-topic", str, "topic of interaction events", "TOPIC"),
    Option("output_topic", "--output-topic", str, "topic the recommendations go to", "TOPIC"),
    Option("dead_letter_topic", "--dead-letter-topic", str, "topic of rejected messages", "TOPIC"),
    Option(
        "changelog_topic",
        "--changelog-topic",
        str,
        "compacted topic that receives every user state and partition position the pool writes, "
        "with as many partitions as the input topic. A host restores from it the states of a "
        "partition that it receives from another host. Empty: no changelog",
        "TOPIC",
    ),
    Option("processes", "--processes", parse_int, "worker processes in the pool", "N"),
    Option(
        "max_batch_size", "--max-batch-size", parse_int, "maximum events in one batch", "EVENTS"
    ),
    Option(
        "max_batch_delay_ms",
        "--max-batch-delay-ms",
        parse_float,
        "maximum wait after the first event of a batch for more events, in milliseconds",
        "MS",
    ),
    Option(
        "session_gap",
        "--session-gap",
        _optional_float,
        "idle gap that ends a session, in seconds",
        "SECONDS",
    ),
    Option(
        "max_pending_batches",
        "--max-pending-batches",
        parse_int,
        "processed batches that may wait for their LMDB commit while the next ones run; "
        "the commit thread writes them in one transaction. 0 commits each batch before the "
        "next one starts. A crash repeats the outputs of up to this many batches plus one",
        "N",
    ),
    Option(
        "delivery_timeout",
        "--delivery-timeout",
        parse_float,
        "seconds librdkafka may take over one try of an output (its delivery.timeout.ms), and "
        "the minimum time between the starts of two tries, from 0.1 to 600. A worker stops "
        "with exit status 1 when a batch's outputs are not delivered --delivery-timeout x "
        "--delivery-attempts seconds after its wait began: that product is the broker outage "
        "the pool rides out (60 s by default). It may be at most half of -X "
        "max.poll.interval.ms, whose default is 300000 ms",
        "SECONDS",
    ),
    Option(
        "delivery_attempts",
        "--delivery-attempts",
        parse_int,
        "tries of an output, the first one included, from 1 to 100. The worker stops with "
        "exit status 1 when the last try fails. --delivery-timeout x --delivery-attempts is "
        "the broker outage the pool rides out",
        "N",
    ),
    Option("k", "--k", _optional_int, "items per recommendation, at most the bundle's items", "K"),
    Option(
        "state_dir",
        "--state-dir",
        Path,
        "LMDB directory of user states and offsets; a relative path is relative to the working "
        "directory, and the pool logs the absolute one at start",
        "DIR",
    ),
    Option(
        "state_map_size",
        "--state-map-size",
        parse_size,
        f"initial LMDB map size in bytes, from {format_flag_size(MIN_STATE_MAP_SIZE)} to "
        f"{format_flag_size(MAX_STATE_MAP_SIZE)}; units such as 512MiB or 4GiB are accepted. "
        f"The map grows on demand up to {format_flag_size(MAX_STATE_MAP_SIZE)}",
        "BYTES",
    ),
    Option(
        "state_sync",
        "--state-sync",
        parse_bool,
        "sync every LMDB commit to disk (true/false); --no-state-sync turns it off",
        "BOOL",
    ),
    Option(
        "metrics_address",
        "--metrics-address",
        parse_bind_address,
        "address of the /metrics endpoint, without port (see --metrics-port): a host name, an "
        "IPv4 address, or an IPv6 address with or without brackets (::1 or [::1])",
        "ADDR",
    ),
    Option(
        "metrics_port",
        "--metrics-port",
        parse_int,
        "port of the HTTP server of Prometheus /metrics and the /healthz and /readyz probes; 0 "
        "turns the server off, health endpoints included",
        "PORT",
    ),
    Option(
        "health_stall_seconds",
        "--health-stall-seconds",
        parse_float,
        "seconds a worker's main loop may go without a turn before /healthz fails (HTTP 503), "
        "from 1 to 86400",
        "SECONDS",
    ),
    Option(
        "ts_unit",
        "--ts-unit",
        str,
        "unit of the input events' `ts` field: s or ms; the outputs' `ts` is in seconds (a "
        "float) with either unit",
        "UNIT",
    ),
    Option(
        "max_future_seconds",
        "--max-future-seconds",
        parse_tolerance,
        "seconds an event's `ts` may lie ahead of this host's clock; later events go to the "
        "dead-letter topic as ts_in_future, and off turns the check off",
        "SECONDS",
    ),
    Option(
        "idle_partition_seconds",
        "--idle-partition-seconds",
        parse_tolerance,
        "seconds after a partition's last event from which its session timers follow this "
        "host's clock, while no event waits unread: its event time then advances with the "
        "clock, this many seconds behind, so that idle sessions close (and "
        "--publish-on-session-close publishes) on a partition that receives no events. Set it "
        "to the longest delay expected between an event's `ts` and its arrival, from 0 to "
        "86400; off keeps the timers on event time alone",
        "SECONDS",
    ),
    Option("device", "--device", str, "ONNX Runtime device: cpu, cuda or auto", "DEVICE"),
    Option(
        "partitions",
        "--partitions",
        parse_int,
        "partitions of each topic that --create-topics creates",
        "N",
    ),
)

# The flag of each option, by field name.
_FLAGS = {option.name: option.flag for option in OPTIONS}


@dataclass(frozen=True)
class WorkerConfig:
    """Settings of the worker pool; the fields mirror `OPTIONS` (times in s unless named)."""

    brokers: str
    bundle: Path
    group_id: str = "hiertcn"
    input_topic: str = "interactions"
    output_topic: str = "recommendations"
    dead_letter_topic: str = "interactions.dlq"
    # Empty: no changelog topic, and a partition that moves between hosts is rebuilt from the
    # input topic (see `stream.changelog`).
    changelog_topic: str = ""
    processes: int = 1
    max_batch_size: int = 64  # bench/stream.py: p99 over 100 ms at half load with 256 on 2 cores
    max_batch_delay_ms: float = 10.0
    max_pending_batches: int = 4
    session_gap: float | None = None
    k: int | None = None
    state_dir: Path = Path("state")
    state_map_size: int = 1 << 30
    state_sync: bool = True
    metrics_address: str = "127.0.0.1"
    metrics_port: int = 9100
    # A worker's main loop turns at least every 0.2 s while idle. Its longest legitimate pauses
    # are the waits for the commit thread (a full --max-pending-batches queue, an assignment or
    # a revocation). Each lasts up to delivery_timeout * delivery_attempts (60 s by default)
    # plus one LMDB write. A batch delay adds at most 60 s, and an assignment's offset queries
    # 10 s each. 300 s is max.poll.interval.ms: a worker silent for that long has been evicted
    # from the group anyway, so a restart loses nothing.
    health_stall_seconds: float = DEFAULT_MAX_POLL_INTERVAL_MS / 1000
    ts_unit: str = "s"
    # Clock skew between producers and workers that an event time may show. A later time would
    # move the partition's watermark ahead and close its sessions early.
    max_future_seconds: float | None = DEFAULT_MAX_FUTURE_SECONDS
    device: str = "cpu"
    partitions: int = 4
    create_topics: bool = False
    keep_going: bool = False
    # Read partitions without a stored position from their earliest offset even when the store
    # is empty and the group has committed offsets (see `stream.rebalance`).
    rebuild_state: bool = False
    # Publish a session-start output when a timer closes a session (see `stream.worker`).
    publish_on_session_close: bool = False
    # Seconds without events after which a partition's timers follow the clock (see
    # `stream.timers`); None: event time alone.
    idle_partition_seconds: float | None = None
    kafka_settings: Mapping[str, str] = field(default_factory=dict)
    # Seconds between the starts of two tries of an output whose delivery failed
    # (--delivery-timeout). The worker stops without committing after `delivery_attempts` tries
    # (--delivery-attempts), or delivery_timeout * delivery_attempts seconds (60 s by default)
    # after its wait for a batch began.
    delivery_timeout: float = 10.0
    delivery_attempts: int = 6
    # Users whose idle session one timer pass closes per partition; a fuller backlog pauses the
    # partition until the timers catch up.
    timer_limit: int = 1024
    # The HIERTCN_* variables that set fields (by field name) and librdkafka settings (by key),
    # so that an error names the variable instead of the flag.
    env_names: Mapping[str, str] = field(default_factory=dict, compare=False, repr=False)
    kafka_env_names: Mapping[str, str] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        validate(self)

    @property
    def max_batch_delay(self) -> float:
        """Maximum batch delay in seconds."""
        return self.max_batch_delay_ms / 1000.0


def validate(config: WorkerConfig) -> None:
    """Raise ConfigError naming the first invalid value of `config` and the fix."""
    if not config.brokers.strip():
        raise ConfigError("no Kafka brokers given: pass --brokers HOST:PORT or set HIERTCN_BROKERS")
    for name in ("input_topic", "output_topic", "dead_letter_topic"):
        check_topic_name(getattr(config, name), source_of(config, name))
    if config.input_topic in (config.output_topic, config.dead_letter_topic):
        raise ConfigError(
            f"input topic {config.input_topic!r} is also an output topic: the worker would "
            "consume its own outputs; choose distinct topics"
        )
    if config.changelog_topic:
        _check_changelog_topic(config)

    _check_range(config, "processes", 1, 256)
    _check_range(config, "max_batch_size", 1, 100_000)
    _check_range(config, "max_batch_delay_ms", 0, 60_000)
    _check_range(config, "max_pending_batches", 0, 1_000)
    if config.session_gap is not None:
        _check_range(config, "session_gap", MIN_SESSION_GAP, MAX_SESSION_GAP)
    if config.k is not None:
        _check_range(config, "k", 1, 100_000)
    _check_size_range(config, "state_map_size", MIN_STATE_MAP_SIZE, MAX_STATE_MAP_SIZE)
    _check_range(config, "metrics_port", 0, 65_535)
    _check_range(config, "health_stall_seconds", 1, 86_400)
    _check_range(config, "partitions", 1, 10_000)
    _check_range(config, "delivery_timeout", 0.1, 600)
    _check_range(config, "delivery_attempts", 1, 100)
    _check_range(config, "timer_limit", 1, 1_000_000)

    if config.max_future_seconds is not None:
        _check_range(config, "max_future_seconds", 0, 365 * 86_400)
    if config.idle_partition_seconds is not None:
        _check_range(config, "idle_partition_seconds", 0, MAX_IDLE_PARTITION_SECONDS)
    if config.ts_unit not in ("s", "ms"):
        raise ConfigError(
            f"{format_option(config, 'ts_unit', repr(config.ts_unit))} is invalid: use s or ms"
        )
    if config.device not in ("cpu", "cuda", "auto"):
        raise ConfigError(
            f"{format_option(config, 'device', repr(config.device))} is invalid: "
            "use cpu, cuda or auto"
        )
    _check_delivery_wait(config)
    _check_kafka_settings(config)


def _check_changelog_topic(config: WorkerConfig) -> None:
    """Raise ConfigError when the changelog topic is invalid or is one of the other topics."""
    source = source_of(config, "changelog_topic")
    check_topic_name(config.changelog_topic, source)
    roles = {
        config.input_topic: "input",
        config.output_topic: "output",
        config.dead_letter_topic: "dead-letter",
    }
    role = roles.get(config.changelog_topic)
    if role is not None:
        raise ConfigError(
            f"{format_setting(source, config.changelog_topic)} is also the {role} topic, but "
            "the changelog must contain only the records of user states and positions: choose "
            "a topic of its own"
        )


def check_topic_name(topic: str, source: str) -> None:
    """Raise ConfigError when `topic`, set by the flag or variable `source`, is no valid name."""
    if not _TOPIC_NAME.match(topic) or topic in (".", ".."):
        raise ConfigError(
            f"{format_setting(source, repr(topic))} is invalid: use a topic name of 1 to 249 "
            "characters from A-Z a-z 0-9 . _ -"
        )


def source_of(config: WorkerConfig, name: str) -> str:
    """Return what set the field `name` of `config`: its HIERTCN_* variable, else its flag.

    A field without a flag is named as it is.
    """
    return config.env_names.get(name) or _FLAGS.get(name, name)


def format_setting(source: str, value: object) -> str:
    """Return `value` as the user writes it for `source`: `--k 5`, or `HIERTCN_K=5`."""
    return f"{source} {value}" if source.startswith("-") else f"{source}={value}"


def format_option(config: WorkerConfig, name: str, value: object) -> str:
    """Return the field `name` set to `value` as the user writes it with the flag or variable
    that set it: `--k 5`, or `HIERTCN_K=5`."""
    return format_setting(source_of(config, name), value)


def _check_kafka_settings(config: WorkerConfig) -> None:
    """Reject the librdkafka settings, aliases included, that a flag or the worker sets."""
    check_flag_settings(config.kafka_settings, FLAG_KAFKA_SETTINGS, config.kafka_env_names)
    managed = {property_of(key): key for key in WORKER_KAFKA_SETTINGS}
    for key in config.kafka_settings:
        name = managed.get(property_of(key))
        if name is None:
            continue
        alias = "" if key == name else f" (an alias of {name})"
        raise ConfigError(
            f"{setting_source(key, config.kafka_env_names)}{alias} is rejected: the worker's "
            f"delivery guarantees depend on its own value of {name}; remove it"
        )
    _check_delivery_settings(config)


def _check_delivery_settings(config: WorkerConfig) -> None:
    """Reject -X values of `DELIVERY_KAFKA_SETTINGS` other than the worker's own."""
    for key, value in config.kafka_settings.items():
        allowed = DELIVERY_KAFKA_SETTINGS.get(property_of(key))
        if allowed is None or str(value).strip().lower() in allowed:
            continue
        source = setting_source(key, config.kafka_env_names)
        raise ConfigError(
            f"{source}={value} is invalid because the worker commits input offsets only after "
            f"the broker has acknowledged their outputs, which needs {key}={' or '.join(allowed)}: "
            "use that value or remove it"
        )


def check_k(k: int, num_items: int, source: str = "--k") -> None:
    """Raise ConfigError when K exceeds the catalog of the bundle.

    A list cannot hold more items than the catalog has, so a larger K would give shorter lists
    than requested and a Recall@K whose K is not the list length. `source` is the flag or the
    environment variable that set K.
    """
    if k > num_items:
        verb = "pass" if source.startswith("-") else "set"
        raise ConfigError(
            f"{format_setting(source, k)} is invalid because the bundle has only {num_items} "
            f"items: {verb} {format_setting(source, num_items)} or less"
        )


# Bytes of an output message outside its key and value. They cover the headers `hiertcn.worker`
# (a process id) and `hiertcn.source` (`topic[partition]@offset`, at most about 300 bytes,
# because a topic name has at most 249 characters) with their names. They also cover
# librdkafka's record overhead, an estimate: librdkafka 2.16.0 rejected a value 40 bytes below
# message.max.bytes in produce() and accepted one 50 bytes below.
OUTPUT_MESSAGE_MARGIN_BYTES = 1024


def max_output_bytes(item_ids: Sequence[str], k: int, version: str) -> int:
    """Return an upper bound of the bytes of one output message of a bundle: key, value and
    `OUTPUT_MESSAGE_MARGIN_BYTES` for the headers.

    The value is the msgpack encoding of the largest output that the bundle can give. It lists
    the K item ids with the most UTF-8 bytes, and has a user id and an event id of the maximum
    length in 4-byte characters, the largest session number and the session-close trigger. An
    event id that is the input position (`topic[partition]@offset`) is shorter than that maximum.
    """
    longest = heapq.nlargest(k, item_ids, key=lambda item: len(item.encode("utf-8")))
    max_id = "\U0010ffff" * EventConfig().max_id_length
    output = Recommendation(
        user=max_id,
        event_id=max_id,
        ts=0.0,
        items=tuple(longest),
        scores=(0.0,) * len(longest),
        model=version,
        session=2**64 - 1,
        trigger=SESSION_CLOSE_TRIGGER,
    )
    value = msgpack.packb(output.to_dict(), use_bin_type=True)
    return len(max_id.encode("utf-8")) + len(value) + OUTPUT_MESSAGE_MARGIN_BYTES


def check_bundle_settings(config: WorkerConfig, bundle: ModelBundle) -> None:
    """Raise ConfigError when --k exceeds the bundle's items or an output could exceed the
    producer's message.max.bytes."""
    if config.k is not None:
        check_k(config.k, bundle.num_items, source_of(config, "k"))
    check_output_size(config, bundle)


def check_output_size(config: WorkerConfig, bundle: ModelBundle) -> None:
    """Raise ConfigError when an output of K items could exceed the producer's
    message.max.bytes, so that librdkafka would reject it with MSG_SIZE_TOO_LARGE and stop the
    pool at the first such output."""
    k = bundle.manifest.top_k if config.k is None else config.k
    limit_source = setting_source("message.max.bytes", config.kafka_env_names)
    limit_text = config.kafka_settings.get("message.max.bytes", DEFAULT_MESSAGE_MAX_BYTES)
    try:
        limit = int(limit_text)
    except ValueError:
        return  # librdkafka rejects the value when the producer is created
    bound = max_output_bytes(bundle.item_ids, k, bundle.manifest.version)
    if bound <= limit:
        return
    if config.k is None:
        k_text = f"the bundle's top_k {k} (no {source_of(config, 'k')})"
    else:
        k_text = format_option(config, "k", k)
    fits = _max_fitting_k(bundle, k, limit)
    lower = f"lower {source_of(config, 'k')} to {fits} or less, or " if fits else ""
    raise ConfigError(
        f"with {k_text}, an output message can reach {bound} bytes (the {k} longest item ids "
        f"of the bundle, the longest user and event ids, and the other fields), above the "
        f"producer's message.max.bytes of {limit}, so producing it would fail: {lower}set "
        f"{limit_source}={bound} or more, together with the output topic's "
        "max.message.bytes on the broker"
    )


def _max_fitting_k(bundle: ModelBundle, k: int, limit: int) -> int:
    """Return the largest K below `k` whose outputs fit in `limit` bytes, or 0 when none does."""
    low, high = 0, k - 1
    while low < high:
        middle = (low + high + 1) // 2
        if max_output_bytes(bundle.item_ids, middle, bundle.manifest.version) <= limit:
            low = middle
        else:
            high = middle - 1
    return low


def _check_delivery_wait(config: WorkerConfig) -> None:
    """Keep a batch's longest delivery wait within half of max.poll.interval.ms.

    The worker does not poll while it waits, and the group evicts a member that does not poll
    within max.poll.interval.ms.
    """
    source = setting_source("max.poll.interval.ms", config.kafka_env_names)
    interval_ms = config.kafka_settings.get("max.poll.interval.ms", DEFAULT_MAX_POLL_INTERVAL_MS)
    try:
        interval = int(interval_ms) / 1000.0
    except ValueError:
        raise ConfigError(
            f"{source}={interval_ms!r} is invalid: use a whole number of milliseconds"
        ) from None
    longest_wait = config.delivery_timeout * config.delivery_attempts
    if longest_wait > interval / 2:
        timeout = format_option(config, "delivery_timeout", f"{config.delivery_timeout:g}")
        attempts = format_option(config, "delivery_attempts", config.delivery_attempts)
        raise ConfigError(
            f"delivery retries can wait {longest_wait:g} s ({timeout} x {attempts}), more than "
            f"half of max.poll.interval.ms ({interval:g} s): raise {source} or lower "
            f"{source_of(config, 'delivery_timeout')} or {source_of(config, 'delivery_attempts')}"
        )


def _check_range(config: WorkerConfig, name: str, low: float, high: float) -> None:
    value = getattr(config, name)
    setting = format_option(config, name, format_number(value))
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{setting} is invalid: use a finite number")
    if not low <= value <= high:
        raise ConfigError(f"{setting} is invalid: use a value from {low} to {high}")


def _check_size_range(config: WorkerConfig, name: str, low: int, high: int) -> None:
    value = getattr(config, name)
    if not low <= value <= high:
        raise ConfigError(
            f"{format_option(config, name, value)} ({format_flag_size(value)}) is invalid: use a "
            f"size from {format_flag_size(low)} to {format_flag_size(high)}, for example 512MiB"
        )


def kafka_env_names(environ: Mapping[str, str]) -> dict[str, str]:
    """Map each librdkafka key set by a `HIERTCN_KAFKA_<KEY>` variable to the variable's name."""
    names = {}
    for name in environ:
        if name.startswith(KAFKA_ENV_PREFIX) and len(name) > len(KAFKA_ENV_PREFIX):
            words = name[len(KAFKA_ENV_PREFIX) :].lower().split("__")
            names["_".join(word.replace("_", ".") for word in words)] = name
    return names


def kafka_settings_from_env(environ: Mapping[str, str]) -> dict[str, str]:
    """Collect librdkafka settings from `HIERTCN_KAFKA_<KEY>` environment variables."""
    return {key: environ[name] for key, name in kafka_env_names(environ).items()}


def build_config(
    flags: Mapping[str, Any],
    environ: Mapping[str, str],
    kafka_flags: Sequence[str] = (),
    **extra: Any,
) -> WorkerConfig:
    """Build a WorkerConfig: a flag that is not None wins, then `HIERTCN_*`, then the default.

    `flags` maps option names (`OPTIONS[i].name`) to parsed flag values (`GIVEN_NONE` for a
    flag such as `--max-future-seconds off`) or None for a flag not given; `kafka_flags`
    are the raw `-X key=value` strings; `extra` sets fields that have no environment variable.
    The config records which values came from the environment, for its error messages.
    """
    values: dict[str, Any] = {}
    env_names: dict[str, str] = {}
    for option in OPTIONS:
        flag_value = flags.get(option.name)
        if flag_value is GIVEN_NONE:
            values[option.name] = None
        elif flag_value is not None:
            values[option.name] = flag_value
        elif environ.get(option.env, "") != "":
            try:
                values[option.name] = option.parse(environ[option.env])
            except ValueError as error:
                fix = error.fix if isinstance(error, OptionValueError) else str(error)
                raise ConfigError(
                    f"{option.env}={environ[option.env]!r} is invalid: {fix}, or unset it"
                ) from error
            env_names[option.name] = option.env
    kafka_settings = kafka_settings_from_env(environ)
    from_flags = parse_kafka_flags(kafka_flags)
    kafka_settings.update(from_flags)
    kafka_names = {
        key: name for key, name in kafka_env_names(environ).items() if key not in from_flags
    }
    if "brokers" not in values:
        raise ConfigError("no Kafka brokers given: pass --brokers HOST:PORT or set HIERTCN_BROKERS")
    if "bundle" not in values:
        raise ConfigError("no model bundle given: pass --bundle DIR or set HIERTCN_BUNDLE")
    return WorkerConfig(
        **values,
        kafka_settings=kafka_settings,
        env_names=env_names,
        kafka_env_names=kafka_names,
        **extra,
    )
