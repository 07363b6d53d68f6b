"""librdkafka -X settings: aliases, settings that a flag sets, one-line error messages, and which
client gets which key."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from confluent_kafka import Consumer, KafkaException, Producer

from stream import kafka_admin
from stream.config import WorkerConfig, build_config
from stream.errors import ConfigError
from stream.kafka_settings import (
    CONSUMER_ONLY,
    PRODUCER_ONLY,
    check_flag_settings,
    client_settings,
    consumer_settings,
    describe_invalid_setting,
    parse_kafka_flags,
    producer_settings,
    property_of,
)


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("linger.ms", "queue.buffering.max.ms"),
        ("bootstrap.servers", "metadata.broker.list"),
        ("delivery.timeout.ms", "message.timeout.ms"),
        ("topic.delivery.timeout.ms", "message.timeout.ms"),
        ("topic.message.timeout.ms", "message.timeout.ms"),
        ("security.protocol", "security.protocol"),
    ],
)
def test_property_of_resolves_aliases(key: str, expected: str) -> None:
    assert property_of(key) == expected


def test_later_flag_wins() -> None:
    assert parse_kafka_flags(["acks=1", "acks=all"]) == {"acks": "all"}


@pytest.mark.parametrize("key", ["linger.ms", "delivery.timeout.ms", "acks", "compression.type"])
def test_alias_error_names_the_typed_key(key: str) -> None:
    # librdkafka 2.16 names the property an alias sets, and ends some reasons with a line break.
    with pytest.raises(KafkaException) as raised:
        Producer({key: "-1" if key.endswith(".ms") else "x", "logger": logging.getLogger()})
    reason = raised.value.args[0].str()
    assert f'"{property_of(key)}"' in reason

    message = describe_invalid_setting(reason, ["security.protocol", key])

    assert message.startswith(f"librdkafka setting {key} is invalid: ")
    assert message.endswith(f": fix or remove -X {key}")
    assert f'"{key}"' in message
    assert f'"{property_of(key)}"' not in message
    assert "\n" not in message


def test_error_names_the_environment_variable() -> None:
    reason = 'Invalid value for configuration property "queue.buffering.max.ms"\n'

    message = describe_invalid_setting(
        reason, ["linger.ms"], {"linger.ms": "HIERTCN_KAFKA_LINGER_MS"}
    )

    assert message == (
        "librdkafka setting linger.ms is invalid: Invalid value for configuration property "
        '"linger.ms": fix or unset HIERTCN_KAFKA_LINGER_MS'
    )


def test_error_without_a_known_key() -> None:
    message = describe_invalid_setting("`acks` must be set to `all`", ["linger.ms"])

    assert message == (
        "a librdkafka setting is invalid: `acks` must be set to `all`: fix or remove the -X option"
    )


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        (
            "bootstrap.servers",
            "-X bootstrap.servers would replace the value of --brokers: remove it and use "
            "--brokers",
        ),
        (
            "metadata.broker.list",
            "-X metadata.broker.list (an alias of bootstrap.servers) would replace the value of "
            "--brokers: remove it and use --brokers",
        ),
    ],
)
def test_key_that_a_flag_sets_is_rejected(key: str, expected: str) -> None:
    with pytest.raises(ConfigError) as raised:
        check_flag_settings(["acks", key], {"bootstrap.servers": "--brokers"}, {})

    assert str(raised.value) == expected
    assert raised.value.exit_code == 2


def test_key_that_no_flag_sets_is_accepted() -> None:
    check_flag_settings(["acks", "linger.ms"], {"bootstrap.servers": "--brokers"}, {})


def _confwarn_lines(client_class: type, settings: dict, caplog: pytest.LogCaptureFixture) -> list:
    log = logging.getLogger("tests.confwarn")
    client = client_class({"bootstrap.servers": "127.0.0.1:1", **settings, "logger": log})
    with caplog.at_level(logging.DEBUG, logger="tests.confwarn"):
        client.poll(0)
    if isinstance(client, Consumer):
        client.close()
    return [r.getMessage() for r in caplog.records if "CONFWARN" in r.getMessage()]


def test_instance_id_gives_no_confwarn(caplog: pytest.LogCaptureFixture) -> None:
    settings = {"group.instance.id": "pod-0", "session.timeout.ms": "45000", "acks": "all"}

    consumer = client_settings({"group.id": "g", **settings}, "consumer")
    producer = client_settings(settings, "producer")

    assert _confwarn_lines(Consumer, consumer, caplog) == []
    assert _confwarn_lines(Producer, producer, caplog) == []
    assert consumer["group.instance.id"] == "pod-0"
    assert "acks" not in consumer
    assert producer == {"acks": "all"}


def test_unknown_key_goes_to_both_clients() -> None:
    settings = {"client.id": "a", "topic.acks": "all", "retry.backoff.ms": "50"}

    assert client_settings(settings, "consumer") == {"client.id": "a", "retry.backoff.ms": "50"}
    assert client_settings(settings, "producer") == settings


# -- which client gets which -X key ----------------------------------------------------------------

# Consumer-only keys of the kind the README advises, and one producer-only and one shared key.
MIXED_SETTINGS = [
    "session.timeout.ms=45000",
    "group.instance.id=pod-0",
    "max.partition.fetch.bytes=2097152",
    "fetch.min.bytes=1",
    "compression.type=lz4",
    "client.id=app",
]


def _worker_config() -> WorkerConfig:
    return build_config({"brokers": "127.0.0.1:1", "bundle": Path("bundle")}, {}, MIXED_SETTINGS)


def test_producer_settings_have_no_consumer_key() -> None:
    settings = producer_settings(_worker_config())

    consumer_keys = [key for key in settings if property_of(key) in CONSUMER_ONLY]
    assert consumer_keys == []
    assert settings["compression.type"] == "lz4"
    assert settings["client.id"] == "app"


def test_consumer_settings_have_no_producer_key() -> None:
    settings = consumer_settings(_worker_config())

    producer_keys = [key for key in settings if property_of(key) in PRODUCER_ONLY]
    assert producer_keys == []
    assert settings["session.timeout.ms"] == "45000"
    assert settings["client.id"] == "app"


def test_admin_client_gives_no_confwarn(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # The admin client is a librdkafka producer instance: a consumer key would log a CONFWARN.
    log = logging.getLogger("tests.admin_confwarn")
    monkeypatch.setattr(kafka_admin, "_LIBRDKAFKA_LOGGER", log)

    with caplog.at_level(logging.DEBUG, logger="tests.admin_confwarn"):
        admin = kafka_admin.create_admin(_worker_config())
        admin.poll(0)

    confwarn = [r.getMessage() for r in caplog.records if "CONFWARN" in r.getMessage()]
    assert confwarn == []


# A valid value for each listed key that takes one. Callbacks cannot be set from Python, so the
# test leaves them out.
_LISTED_VALUES = {
    "group.protocol": "classic",
    "group.remote.assignor": "uniform",
    "partition.assignment.strategy": "range",
    "group.protocol.type": "consumer",
    "offset.store.method": "broker",
    "offset.store.path": ".",
    "isolation.level": "read_committed",
    "auto.offset.reset": "earliest",
    "transactional.id": "t",
    "compression.codec": "none",
    "partitioner": "murmur2",
    "queuing.strategy": "fifo",
    "offset.store.sync.interval.ms": "-1",
    "compression.level": "-1",
    "queue.buffering.backpressure.threshold": "1",
    "request.required.acks": "1",
}
_BOOLEAN_KEYS = (
    "enable.auto.commit", "auto.commit.enable", "enable.auto.offset.store", "enable.partition.eof",
    "check.crcs", "enable.idempotence", "enable.gapless.guarantee", "delivery.report.only.error",
    "produce.offset.report",
)  # fmt: skip
_CALLBACK_KEYS = frozenset(
    {"consume_cb", "rebalance_cb", "offset_commit_cb", "dr_cb", "dr_msg_cb", "partitioner_cb",
     "msg_order_cmp", "on_delivery"}
)  # fmt: skip


def _value_of(key: str) -> str:
    if key in _BOOLEAN_KEYS:
        return "false"
    return _LISTED_VALUES.get(key, "60000")


@pytest.mark.parametrize(
    ("key", "client_class", "owner"),
    [(key, Producer, "consumer") for key in sorted(CONSUMER_ONLY - _CALLBACK_KEYS)]
    + [(key, Consumer, "producer") for key in sorted(PRODUCER_ONLY - _CALLBACK_KEYS)],
)
def test_listed_key_ignored_by_other_client(
    key: str, client_class: type, owner: str, caplog: pytest.LogCaptureFixture
) -> None:
    settings = {key: _value_of(key)}
    if client_class is Consumer:
        settings["group.id"] = "g"

    lines = _confwarn_lines(client_class, settings, caplog)

    assert any(f"is a {owner} property" in line for line in lines), lines
