"""WorkerConfig: flag over environment over default, and validation errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from stream.cli import main
from stream.config import (
    OPTIONS,
    WorkerConfig,
    build_config,
    check_k,
    flag_parser,
    format_option,
    kafka_settings_from_env,
    parse_bool,
    parse_size,
    source_of,
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


def test_idle_partition_seconds_off_by_default() -> None:
    assert build_config(REQUIRED, {}).idle_partition_seconds is None
    environ = {"HIERTCN_IDLE_PARTITION_SECONDS": "30"}
    assert build_config(REQUIRED, environ).idle_partition_seconds == 30.0
    environ = {"HIERTCN_IDLE_PARTITION_SECONDS": "off"}
    assert build_config(REQUIRED, environ).idle_partition_seconds is None


@pytest.mark.parametrize(
    ("name", "text"),
    [("idle_partition_seconds", "off"), ("max_future_seconds", "off"), ("session_gap", "bundle")],
)
def test_flag_meaning_none_wins_over_bad_variable(name: str, text: str) -> None:
    option = next(option for option in OPTIONS if option.name == name)

    config = build_config({**REQUIRED, name: flag_parser(option.parse)(text)}, {option.env: "abc"})

    assert getattr(config, name) is None


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
    with pytest.raises(ValueError, match=r"is invalid: use bytes or a number with a unit"):
        parse_size(text)


@pytest.mark.parametrize("text", ["9" * 400, "9" * 400 + "GiB"])
def test_parse_size_rejects_infinite(text: str) -> None:
    with pytest.raises(ValueError, match=r"is invalid: use a finite size"):
        parse_size(text)


def test_huge_map_size_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["run", "--brokers", "127.0.0.1:1", "--bundle", "b", "--state-map-size", "9" * 400]

    with pytest.raises(SystemExit) as exit_info:
        main(argv)

    assert exit_info.value.code == 2
    assert "is invalid: use a finite size" in capsys.readouterr().err


def test_parse_bool_rejects_junk() -> None:
    assert parse_bool("Yes") is True
    with pytest.raises(ValueError, match=r"^'maybe' is invalid: use true or false$"):
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
        (
            "idle_partition_seconds",
            86_401.0,
            "--idle-partition-seconds 86401 is invalid: use a value from 0 to 86400",
        ),
        (
            "delivery_timeout",
            0.05,
            r"--delivery-timeout 0\.05 is invalid: use a value from 0\.1 to 600",
        ),
        (
            "delivery_timeout",
            float("nan"),
            "--delivery-timeout nan is invalid: use a finite number",
        ),
        ("delivery_attempts", 0, "--delivery-attempts 0 is invalid: use a value from 1 to 100"),
        ("delivery_attempts", 101, "--delivery-attempts 101"),
        ("input_topic", "bad topic", "--input-topic 'bad topic' is invalid: use a topic name"),
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


def test_delivery_settings_from_flags_and_environment() -> None:
    environ = {"HIERTCN_DELIVERY_TIMEOUT": "2.5", "HIERTCN_DELIVERY_ATTEMPTS": "4"}

    from_env = build_config(REQUIRED, environ)
    from_flags = build_config(
        {**REQUIRED, "delivery_timeout": 1.0, "delivery_attempts": 3}, environ
    )

    assert (from_env.delivery_timeout, from_env.delivery_attempts) == (2.5, 4)
    assert (from_flags.delivery_timeout, from_flags.delivery_attempts) == (1.0, 3)
    assert source_of(from_env, "delivery_timeout") == "HIERTCN_DELIVERY_TIMEOUT"
    assert source_of(from_flags, "delivery_attempts") == "--delivery-attempts"


def test_delivery_settings_default_to_60_s_outage() -> None:
    config = build_config(REQUIRED, {})

    assert config.delivery_timeout == 10.0
    assert config.delivery_attempts == 6


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        (
            {"HIERTCN_DELIVERY_TIMEOUT": "600.5"},
            "HIERTCN_DELIVERY_TIMEOUT=600.5 is invalid: use a value from 0.1 to 600",
        ),
        (
            {"HIERTCN_DELIVERY_ATTEMPTS": "0"},
            "HIERTCN_DELIVERY_ATTEMPTS=0 is invalid: use a value from 1 to 100",
        ),
        (
            {"HIERTCN_DELIVERY_ATTEMPTS": "three"},
            "HIERTCN_DELIVERY_ATTEMPTS='three' is invalid: use a whole number, or unset it",
        ),
        (
            {"HIERTCN_DELIVERY_TIMEOUT": "inf"},
            "HIERTCN_DELIVERY_TIMEOUT=inf is invalid: use a finite number",
        ),
    ],
)
def test_invalid_delivery_variable_names_it(environ: dict, message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        build_config(REQUIRED, environ)

    assert str(raised.value) == message


def test_delivery_wait_error_names_variables() -> None:
    environ = {"HIERTCN_DELIVERY_TIMEOUT": "40", "HIERTCN_DELIVERY_ATTEMPTS": "4"}

    with pytest.raises(ConfigError) as raised:
        build_config(REQUIRED, environ)

    assert str(raised.value) == (
        "delivery retries can wait 160 s (HIERTCN_DELIVERY_TIMEOUT=40 x "
        "HIERTCN_DELIVERY_ATTEMPTS=4), more than half of max.poll.interval.ms (300 s): raise "
        "-X max.poll.interval.ms or lower HIERTCN_DELIVERY_TIMEOUT or HIERTCN_DELIVERY_ATTEMPTS"
    )


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


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"HIERTCN_DEVICE": "gpu"}, "HIERTCN_DEVICE='gpu' is invalid: use cpu, cuda or auto"),
        ({"HIERTCN_PROCESSES": "0"}, "HIERTCN_PROCESSES=0 is invalid: use a value from 1"),
        ({"HIERTCN_TS_UNIT": "us"}, "HIERTCN_TS_UNIT='us' is invalid: use s or ms"),
        ({"HIERTCN_INPUT_TOPIC": "a b"}, "HIERTCN_INPUT_TOPIC='a b' is invalid: use a topic name"),
    ],
)
def test_invalid_environment_value_names_variable(environ: dict, message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        build_config(REQUIRED, environ)

    assert str(raised.value).startswith(message)
    assert "--" not in str(raised.value).split(":")[0]


def test_invalid_flag_value_names_the_flag() -> None:
    with pytest.raises(ConfigError, match=r"^--device 'gpu' is invalid: use cpu, cuda or auto$"):
        build_config({**REQUIRED, "device": "gpu"}, {"HIERTCN_DEVICE": "cpu"})


@pytest.mark.parametrize(
    ("environ", "flags", "message"),
    [
        (
            {"HIERTCN_KAFKA_BOOTSTRAP_SERVERS": "h:1"},
            [],
            "HIERTCN_KAFKA_BOOTSTRAP_SERVERS would replace the value of --brokers: remove it "
            "and use --brokers",
        ),
        (
            {},
            ["metadata.broker.list=h:1"],
            "-X metadata.broker.list (an alias of bootstrap.servers) would replace the value of "
            "--brokers: remove it and use --brokers",
        ),
        (
            {"HIERTCN_KAFKA_ENABLE_AUTO_COMMIT": "true"},
            [],
            "HIERTCN_KAFKA_ENABLE_AUTO_COMMIT is rejected: the worker's delivery guarantees "
            "depend on its own value of enable.auto.commit; remove it",
        ),
    ],
)
def test_kafka_setting_of_flag_or_worker_rejected(
    environ: dict, flags: list[str], message: str
) -> None:
    with pytest.raises(ConfigError) as raised:
        build_config(REQUIRED, environ, flags)

    assert str(raised.value) == message


@pytest.mark.parametrize(
    ("environ", "flags", "message"),
    [
        (
            {},
            ["delivery.timeout.ms=5000"],
            "-X delivery.timeout.ms would replace the value of --delivery-timeout: remove it "
            "and use --delivery-timeout",
        ),
        (
            {},
            ["message.timeout.ms=5000"],
            "-X message.timeout.ms (an alias of delivery.timeout.ms) would replace the value of "
            "--delivery-timeout: remove it and use --delivery-timeout",
        ),
        (
            {},
            ["topic.delivery.timeout.ms=5000"],
            "-X topic.delivery.timeout.ms (an alias of delivery.timeout.ms) would replace the "
            "value of --delivery-timeout: remove it and use --delivery-timeout",
        ),
        (
            {"HIERTCN_KAFKA_DELIVERY_TIMEOUT_MS": "5000"},
            [],
            "HIERTCN_KAFKA_DELIVERY_TIMEOUT_MS would replace the value of --delivery-timeout: "
            "remove it and use --delivery-timeout",
        ),
        (
            {"HIERTCN_KAFKA_MESSAGE_TIMEOUT_MS": "5000"},
            [],
            "HIERTCN_KAFKA_MESSAGE_TIMEOUT_MS (an alias of delivery.timeout.ms) would replace "
            "the value of --delivery-timeout: remove it and use --delivery-timeout",
        ),
    ],
)
def test_delivery_timeout_setting_rejected(environ: dict, flags: list[str], message: str) -> None:
    # The worker's wait for each try of a delivery is --delivery-timeout, so librdkafka's
    # delivery.timeout.ms must be the same value.
    with pytest.raises(ConfigError) as raised:
        build_config({**REQUIRED, "delivery_timeout": 10.0}, environ, flags)

    assert str(raised.value) == message


def test_kafka_flag_replaces_variable_in_messages() -> None:
    environ = {"HIERTCN_KAFKA_MAX_POLL_INTERVAL_MS": "1000"}

    with pytest.raises(ConfigError, match="raise HIERTCN_KAFKA_MAX_POLL_INTERVAL_MS"):
        build_config(REQUIRED, environ)
    with pytest.raises(ConfigError, match=r"raise -X max\.poll\.interval\.ms"):
        build_config(REQUIRED, environ, ["max.poll.interval.ms=2000"])


def test_k_above_items_names_its_source() -> None:
    with pytest.raises(ConfigError) as raised:
        check_k(500, 50, "HIERTCN_K")

    assert str(raised.value) == (
        "HIERTCN_K=500 is invalid because the bundle has only 50 items: set HIERTCN_K=50 or less"
    )


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["acks=1"], "-X acks=1 is invalid because "),
        (["request.required.acks=0"], "-X request.required.acks=0 is invalid because "),
        (["topic.acks=0"], "-X topic.acks=0 is invalid because "),
        (["enable.idempotence=false"], "-X enable.idempotence=false is invalid because "),
        (["transactional.id=t"], "-X transactional.id is rejected: "),
        (["group.protocol=classic"], "-X group.protocol is rejected: "),
    ],
)
def test_delivery_setting_below_worker_rejected(flags: list[str], message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        build_config(REQUIRED, {}, flags)

    assert str(raised.value).startswith(message)


@pytest.mark.parametrize("flags", [["acks=all"], ["acks=-1"], ["enable.idempotence=TRUE"]])
def test_delivery_setting_of_worker_accepted(flags: list[str]) -> None:
    config = build_config(REQUIRED, {}, flags)

    assert config.kafka_settings


def test_delivery_variable_named_in_error() -> None:
    with pytest.raises(ConfigError) as raised:
        build_config(REQUIRED, {"HIERTCN_KAFKA_ACKS": "0"})

    assert str(raised.value).startswith("HIERTCN_KAFKA_ACKS=0 is invalid because ")


def test_source_of_names_variable() -> None:
    config = build_config(REQUIRED, {"HIERTCN_HEALTH_STALL_SECONDS": "4"})

    assert source_of(config, "health_stall_seconds") == "HIERTCN_HEALTH_STALL_SECONDS"
    assert source_of(config, "metrics_address") == "--metrics-address"


def test_format_option_as_user_writes_it() -> None:
    config = build_config(REQUIRED, {"HIERTCN_HEALTH_STALL_SECONDS": "4"})

    assert format_option(config, "health_stall_seconds", 4) == "HIERTCN_HEALTH_STALL_SECONDS=4"
    assert format_option(config, "metrics_address", "0.0.0.0") == "--metrics-address 0.0.0.0"


def test_bad_float_variable_gives_project_message() -> None:
    with pytest.raises(ConfigError) as raised:
        build_config(REQUIRED, {"HIERTCN_SESSION_GAP": "abc"})

    message = str(raised.value)
    assert message.startswith("HIERTCN_SESSION_GAP='abc' is invalid: ")
    assert "use a number" in message
    assert "could not convert" not in message


@pytest.mark.parametrize("text, read_as", [("1e-400", "0"), ("-2e999", "-inf")])
def test_parse_float_rejects_numbers_beyond_float(text: str, read_as: str) -> None:
    from stream.config import OptionValueError, parse_float

    with pytest.raises(OptionValueError) as error:
        parse_float(text)
    assert f"'{text}' is invalid: a 64-bit float reads it as {read_as}" in str(error.value)


def test_parse_float_keeps_zero_and_words() -> None:
    import math

    from stream.config import parse_float

    assert parse_float("0e-400") == 0.0
    assert math.isinf(parse_float("inf"))
