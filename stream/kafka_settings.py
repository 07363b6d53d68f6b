"""librdkafka settings from `-X key=value` flags: parsing, aliases, conflicts and error messages.

`run` and `produce` register their `-X` option and parse its values here, so both commands
accept the same syntax and reject a key that one of their own flags sets.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Iterable, Mapping
from typing import Any

from stream.errors import ConfigError

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
        "offset_commit_cb",
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
        "msg_order_cmp", "produce.offset.report", "on_delivery",
    }
)  # fmt: skip
# librdkafka reads "topic.NAME" as the topic property NAME for every topic.
_TOPIC_PREFIX = "topic."
# A property name in double quotes or backticks, as librdkafka's configuration errors write it.
_QUOTED = re.compile(r'["`]([^"`]+)["`]')


def parse_kafka_setting(text: str) -> tuple[str, str]:
    """Split one `-X key=value` librdkafka setting; the value may contain `=`."""
    key, separator, value = text.partition("=")
    if not separator or not key.strip():
        raise ConfigError(
            f"invalid librdkafka setting {text!r}: write it as -X key=value, e.g. -X acks=all"
        )
    return key.strip(), value


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
            return f"invalid librdkafka setting {key}: {reason}: fix or {fix}"
    return f"invalid librdkafka setting: {reason}: fix or remove {origins}"
