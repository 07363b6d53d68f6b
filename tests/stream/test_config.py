"""WorkerConfig: flag over environment over default, and validation errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from stream.config import (
    WorkerConfig,
    build_config,
    kafka_settings_from_env,
    parse_bool,
    parse_size,
)
from stream.errors import ConfigError

REQUIRED = {"brokers": "127.0.0.1:9092", "bundle": Path("bundle")}


def test_flag_wins_over_environment() -> None:
    environ = {"HIERTCN_MAX_BATCH_SIZE": "64", "HIERTCN_GROUP_ID": "from-env"}

    config = build_config({**REQUIRED, "max_batch_size": 128}, environ)

    assert config.max_batch_size == 128
    assert config.group_id == "from-env"


def test_environment_wins_over_default() -> None:
    environ = {
        "HIERTCN_BROKERS": "10.0.0.1:9092",
        "HIERTCN_BUNDLE": "/models/b1",
        "HIERTCN_STATE_MAP_SIZE": "2GiB",
        "HIERTCN_STATE_SYNC": "false",
        "HIERTCN_SESSION_GAP": "900",
    }

    config = build_config({}, environ)

    assert config.brokers == "10.0.0.1:9092"
    assert config.bundle == Path("/models/b1")
    assert config.state_map_size == 2 << 30
    assert config.state_sync is False
    assert config.session_gap == 900.0
    assert config.k is None


def test_default_when_neither_is_set() -> None:
    config = build_config(REQUIRED, {})

    assert config == WorkerConfig(**REQUIRED)
    assert config.input_topic == "interactions"
    assert config.dead_letter_topic == "interactions.dlq"


def test_max_future_seconds_from_environment() -> None:
    assert build_config(REQUIRED, {}).max_future_seconds == 300.0
    assert build_config(REQUIRED, {"HIERTCN_MAX_FUTURE_SECONDS": "60"}).max_future_seconds == 60.0
    assert build_config(REQUIRED, {"HIERTCN_MAX_FUTURE_SECONDS": "off"}).max_future_seconds is None


def test_health_stall_seconds_from_environment() -> None:
    config = build_config(REQUIRED, {"HIERTCN_HEALTH_STALL_SECONDS": "45"})

    assert config.health_stall_seconds == 45.0
    assert WorkerConfig(**REQUIRED).health_stall_seconds == 300.0


def test_kafka_settings_from_flags_and_env() -> None:
    environ = {
        "HIERTCN_KAFKA_SECURITY_PROTOCOL": "SSL",
        "HIERTCN_KAFKA_SSL_CA_LOCATION": "/env/ca.pem",
    }

    config = build_config(REQUIRED, environ, ["ssl.ca.location=/flag/ca.pem", "a.b=x=y"])

    assert config.kafka_settings == {
        "security.protocol": "SSL",
        "ssl.ca.location": "/flag/ca.pem",
        "a.b": "x=y",
    }


def test_kafka_env_double_underscore_is_underscore() -> None:
    assert kafka_settings_from_env({"HIERTCN_KAFKA_SASL_OAUTHBEARER__X": "v"}) == {
        "sasl.oauthbearer_x": "v"
    }


@pytest.mark.parametrize(
    ("text", "expected"),
    [("1024", 1024), ("512MiB", 512 << 20), ("1gib", 1 << 30), ("2G", 2_000_000_000)],
)
def test_parse_size_units(text: str, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "big", "1XB", "-5"])
def test_parse_size_rejects_junk(text: str) -> None:
    with pytest.raises(ValueError, match="invalid size"):
        parse_size(text)


def test_parse_bool_rejects_junk() -> None:
    assert parse_bool("Yes") is True
    with pytest.raises(ValueError, match="invalid boolean"):
        parse_bool("maybe")


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("processes", 0, "--processes"),
        ("max_batch_size", 0, "--max-batch-size"),
        ("max_batch_delay_ms", float("nan"), "--max-batch-delay-ms"),
        ("session_gap", -1.0, "--session-gap"),
        ("k", 0, "--k"),
        ("metrics_port", 70_000, "--metrics-port"),
        ("health_stall_seconds", 0.5, "--health-stall-seconds"),
        ("health_stall_seconds", float("inf"), "--health-stall-seconds"),
        ("ts_unit", "us", "--ts-unit"),
        ("device", "tpu", "--device"),
        ("max_future_seconds", -1.0, "--max-future-seconds"),
        ("input_topic", "bad topic", "invalid topic name"),
        ("output_topic", "interactions", "also an output topic"),
    ],
)
def test_invalid_value_names_the_option(field: str, value: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        WorkerConfig(**REQUIRED, **{field: value})


def test_managed_kafka_setting_is_rejected() -> None:
    with pytest.raises(ConfigError, match=r"enable\.auto\.commit"):
        build_config(REQUIRED, {}, ["enable.auto.commit=true"])
    with pytest.raises(ConfigError, match="use --group-id"):
        build_config(REQUIRED, {}, ["group.id=other"])


def test_malformed_kafka_flag_is_rejected() -> None:
    with pytest.raises(ConfigError, match="-X key=value"):
        build_config(REQUIRED, {}, ["no-equals-sign"])


def test_invalid_environment_value_names_the_variable() -> None:
    with pytest.raises(ConfigError, match="HIERTCN_PROCESSES"):
        build_config(REQUIRED, {"HIERTCN_PROCESSES": "two"})


def test_missing_brokers_is_an_error() -> None:
    with pytest.raises(ConfigError, match="--brokers"):
        build_config({"bundle": Path("b")}, {})


def test_delivery_wait_must_fit_poll_interval() -> None:
    with pytest.raises(ConfigError, match=r"max\.poll\.interval\.ms"):
        WorkerConfig(**REQUIRED, delivery_timeout=60.0, delivery_attempts=5)

    config = build_config(
        REQUIRED,
        {},
        ["max.poll.interval.ms=900000"],
        delivery_timeout=60.0,
        delivery_attempts=5,
    )

    assert config.delivery_attempts == 5
