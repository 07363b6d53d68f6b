"""The flags and settings of `hiertcn-stream changelog seed`.

Seed reads its flags, then the HIERTCN_* variables of `run`, and builds the producer's
librdkafka settings from its own defaults and the -X and HIERTCN_KAFKA_* settings.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stream.config import (
    DELIVERY_KAFKA_SETTINGS,
    OPTIONS,
    WorkerConfig,
    build_config,
    kafka_env_names,
    kafka_settings_from_env,
)
from stream.errors import ConfigError
from stream.kafka_settings import (
    CONSUMER_ONLY,
    PRODUCER_ONLY,
    add_kafka_setting_option,
    check_flag_settings,
    client_settings,
    parse_kafka_flags,
    property_of,
    setting_source,
)
from stream.logs import librdkafka_logger
from stream.produce import MESSAGE_TIMEOUT_NAMES, check_linger_below_message_timeout, last_setting

# Fields of `WorkerConfig` that seed takes from a flag or from `run`'s HIERTCN_* variable.
SEED_FIELDS = ("brokers", "state_dir", "input_topic", "changelog_topic", "group_id")
# Fields that seed takes from their HIERTCN_* variables only, so that it rejects a changelog
# topic that is one of the pool's other topics, as `run` does.
ENV_ONLY_FIELDS = ("output_topic", "dead_letter_topic")
# librdkafka settings that a flag of seed sets, with that flag.
SEED_FLAG_KAFKA_SETTINGS = {"bootstrap.servers": "--brokers", "group.id": "--group-id"}
# Milliseconds a record may wait for the broker's acknowledgement, retries included, unless -X
# message.timeout.ms sets it: the broker outage that a pool rides out with its default settings.
DEFAULT_MESSAGE_TIMEOUT_MS = 60_000
# Seed produces as fast as it reads the store, and no reader waits for a single record, so the
# producer may wait this long (ms) to fill its batches.
SEED_LINGER_MS = 20

_OPTIONS = {option.name: option for option in OPTIONS}


def _add_seed_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--state-dir",
        type=Path,
        metavar="DIR",
        help="the pool's state directory, which contains data.mdb "
        f"(env {_env('state_dir')}; required)",
    )
    parser.add_argument(
        "--brokers",
        metavar="HOSTS",
        help=f"Kafka bootstrap servers, HOST:PORT[,HOST:PORT...] (env {_env('brokers')}; required)",
    )
    parser.add_argument(
        "--changelog-topic",
        metavar="TOPIC",
        help="the pool's changelog topic: compacted, with as many partitions as the input "
        f"topic (env {_env('changelog_topic')}; required)",
    )
    parser.add_argument(
        "--input-topic",
        metavar="TOPIC",
        help="the pool's topic of interaction events, whose stored positions seed copies "
        f"(env {_env('input_topic')}; default interactions)",
    )
    parser.add_argument(
        "--group-id",
        metavar="GROUP",
        help="the pool's consumer group. Seed skips each partition where the group has "
        "committed an offset beyond the stored position, because another state directory has "
        "processed those events since, and exits 2 when that holds for every stored position "
        f"(env {_env('group_id')}; default hiertcn)",
    )
    parser.add_argument(
        "--create-topics",
        action="store_true",
        help="create the changelog topic when missing, with the input topic's partition count, "
        "cleanup.policy=compact, segment.ms=3600000 and min.cleanable.dirty.ratio=0.1",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="check the store, the topics and the group, print what seed would produce, and "
        "produce or create nothing",
    )
    add_kafka_setting_option(
        parser,
        "kafka_settings",
        "librdkafka setting for the producer and the admin client, repeatable (e.g. -X "
        "security.protocol=SSL). Settings that only a consumer reads do not apply, also not to "
        "the consumer that reads the group's committed offsets. -X message.timeout.ms sets how "
        "long a record may wait for the "
        f"broker, retries included (default {DEFAULT_MESSAGE_TIMEOUT_MS}; 0: no limit). "
        "enable.idempotence and acks take only true and all",
        SEED_FLAG_KAFKA_SETTINGS,
    )


def _env(name: str) -> str:
    return _OPTIONS[name].env


@dataclass(frozen=True)
class SeedConfig:
    """Settings of one seed."""

    # Topics, group, state directory and the librdkafka settings that every client reads.
    worker: WorkerConfig
    producer_settings: Mapping[str, Any]  # -X and HIERTCN_KAFKA_* settings included
    message_timeout: float | None  # seconds a record may wait for the broker, None for no limit
    dry_run: bool = False


def seed_config(args: argparse.Namespace, environ: Mapping[str, str]) -> SeedConfig:
    """Build the configuration from the flags, then `run`'s HIERTCN_* variables."""
    for name in ("state_dir", "changelog_topic"):
        if getattr(args, name) is None and not environ.get(_env(name)):
            flag = _OPTIONS[name].flag
            raise ConfigError(
                f"{flag} is missing: pass {flag} {_OPTIONS[name].metavar} or set {_env(name)}"
            )
    flags: dict[str, Any] = {name: getattr(args, name) for name in SEED_FIELDS}
    # `WorkerConfig` requires a bundle, which seed never loads.
    flags["bundle"] = Path()
    names = {_env(name) for name in SEED_FIELDS + ENV_ONLY_FIELDS}
    worker = build_config(
        flags,
        {name: value for name, value in environ.items() if name in names},
        create_topics=args.create_topics,
    )

    settings = kafka_settings_from_env(environ)
    from_flags = parse_kafka_flags(args.kafka_settings)
    settings.update(from_flags)
    env_names = {
        key: name for key, name in kafka_env_names(environ).items() if key not in from_flags
    }
    check_flag_settings(settings, SEED_FLAG_KAFKA_SETTINGS, env_names)
    # `WorkerConfig` rejects several consumer and producer settings with reasons that concern
    # the worker, so it gets only the settings that every client reads.
    client_only = CONSUMER_ONLY | PRODUCER_ONLY
    common = {key: value for key, value in settings.items() if property_of(key) not in client_only}
    worker = dataclasses.replace(worker, kafka_settings=common, kafka_env_names=env_names)

    producer = seed_producer_settings(worker.brokers, settings, env_names)
    return SeedConfig(worker, producer, _message_timeout(producer), args.dry_run)


def seed_producer_settings(
    brokers: str, settings: Mapping[str, str], env_names: Mapping[str, str]
) -> dict[str, Any]:
    """Return the producer's librdkafka settings, each with its reason, and the -X ones."""
    overrides = client_settings(settings, "producer")
    _check_producer_overrides(overrides, env_names)
    producer: dict[str, Any] = {
        "bootstrap.servers": brokers,
        # The broker writes each record once and in produce order, whatever librdkafka retries.
        "enable.idempotence": True,
        "acks": "all",
        # A record that the broker has not acknowledged by then fails, and seed exits 1.
        "message.timeout.ms": DEFAULT_MESSAGE_TIMEOUT_MS,
        "linger.ms": SEED_LINGER_MS,
        **overrides,
    }
    check_linger_below_message_timeout(producer, overrides, None, env_names)
    producer["logger"] = librdkafka_logger(f"{__name__}.librdkafka")
    return producer


def _check_producer_overrides(overrides: Mapping[str, str], env_names: Mapping[str, str]) -> None:
    """Reject a transactional producer, and delivery settings other than seed's own."""
    for key, value in overrides.items():
        source = setting_source(key, env_names)
        if property_of(key) == "transactional.id":
            raise ConfigError(
                f"{source} is rejected: seed never calls init_transactions(), so a "
                "transactional producer fails at its first record; remove it"
            )
        allowed = DELIVERY_KAFKA_SETTINGS.get(property_of(key))
        if allowed is not None and str(value).strip().lower() not in allowed:
            raise ConfigError(
                f"{source}={value} is invalid because seed counts a record as written once the "
                f"broker has acknowledged it, which needs {key}={' or '.join(allowed)}: use that "
                "value or remove it"
            )


def _message_timeout(settings: Mapping[str, Any]) -> float | None:
    """Return the producer's message timeout in seconds, or None for no limit."""
    _, value = last_setting(settings, MESSAGE_TIMEOUT_NAMES)
    try:
        milliseconds = float(str(value).strip())
    except ValueError:
        return None  # librdkafka rejects it when the producer is created
    return None if milliseconds == 0 else milliseconds / 1000
