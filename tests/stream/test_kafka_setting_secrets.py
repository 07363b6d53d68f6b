"""Malformed -X settings: errors hide the values of secret-like keys, in parse_kafka_setting and
in the argument parser of each command that takes -X."""

from __future__ import annotations

import argparse

import pytest

from stream.cli import main
from stream.config import kafka_env_names
from stream.errors import ConfigError
from stream.kafka_settings import (
    check_kafka_setting_text,
    is_secret_key,
    kafka_env_name,
    parse_kafka_setting,
)

SECRET = "TOPSECRET2"


@pytest.mark.parametrize(
    ("key", "secret"),
    [
        ("sasl.password", True),
        ("ssl.key.password", True),
        ("ssl.key.pem", True),
        ("ssl.keystore.password", True),
        ("sasl.oauthbearer.client.secret", True),
        ("sasl.oauthbearer.config", True),
        ("sasl.oauthbearer.extensions", True),
        ("sasl.jaas.config", True),
        ("SASL.PASSWORD", True),
        ("topic.sasl.password", True),
        ("acks", False),
        ("sasl.username", False),
        ("security.protocol", False),
        ("linger.ms", False),
    ],
)
def test_is_secret_key_table(key: str, secret: bool) -> None:
    assert is_secret_key(key) is secret


@pytest.mark.parametrize(
    ("text", "key"),
    [
        (f"sasl.password:{SECRET}", "sasl.password"),
        (f"sasl.password {SECRET}", "sasl.password"),
        (f"  ssl.key.pem\t{SECRET}", "ssl.key.pem"),
        (f"sasl.oauthbearer.config:principal={SECRET}", "sasl.oauthbearer.config"),
        (f"ssl_key:{SECRET}", "ssl_key"),
        (f"sasl.password:{SECRET}=x", "sasl.password"),
    ],
)
def test_malformed_secret_setting_hidden(text: str, key: str) -> None:
    with pytest.raises(ConfigError) as raised:
        parse_kafka_setting(text)

    message = str(raised.value)
    assert SECRET not in message
    assert message.startswith(f"-X '{key}…' is invalid: write a librdkafka setting as ")
    assert f"-X {key}=VALUE" in message
    assert kafka_env_name(key) in message


def test_empty_key_value_hidden() -> None:
    with pytest.raises(ConfigError) as raised:
        parse_kafka_setting("=hunter2")

    assert str(raised.value) == "-X '…' is invalid: write a librdkafka setting as -X key=value"


def test_secret_word_in_value_hides_it() -> None:
    with pytest.raises(ConfigError) as raised:
        parse_kafka_setting(f"linger.ms:{SECRET}")

    assert str(raised.value) == (
        "-X 'linger.ms…' is invalid: write a librdkafka setting as -X key=value"
    )


def test_key_with_colon_rejected() -> None:
    with pytest.raises(ConfigError) as raised:
        parse_kafka_setting("acks:x=all")

    assert str(raised.value).startswith("-X 'acks:x=all' is invalid: ")


def test_plain_malformed_setting_shown() -> None:
    with pytest.raises(ConfigError) as raised:
        parse_kafka_setting("acks:all")

    assert str(raised.value) == (
        "-X 'acks:all' is invalid: write a librdkafka setting as -X key=value, for example "
        "-X acks=all"
    )


@pytest.mark.parametrize(
    "key", ["sasl.password", "ssl.key.pem", "ssl_key", "sasl.oauthbearer.client.secret"]
)
def test_env_name_read_back_by_config(key: str) -> None:
    name = kafka_env_name(key)

    assert name.startswith("HIERTCN_KAFKA_")
    assert kafka_env_names({name: "value"}) == {key: name}


COMMANDS = [
    ["run", "--brokers", "127.0.0.1:9092", "--bundle", "b"],
    ["produce", "--events", "e", "--brokers", "127.0.0.1:9092", "--topic", "t"],
    ["changelog", "seed", "--brokers", "127.0.0.1:9092", "--state-dir", "s"],
]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda argv: argv[0])
@pytest.mark.parametrize(
    "flag", [["-X", "sasl.password", "TOPSECRET1"], ["-X", f"sasl.password:{SECRET}"]]
)
def test_command_hides_secret_after_x(
    command: list[str], flag: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([*command, *flag])

    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert "TOPSECRET" not in err
    assert "unrecognized arguments" not in err
    assert "error: argument -X: 'sasl.password…' is invalid" in err
    assert "HIERTCN_KAFKA_SASL_PASSWORD" in err


@pytest.mark.parametrize("command", COMMANDS, ids=lambda argv: argv[0])
def test_command_hides_secret_after_empty_value(
    command: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([*command, "-X", "sasl.password=", "TOPSECRET2"])

    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert "TOPSECRET" not in err
    assert "unrecognized arguments" not in err
    assert "error: argument -X: 'sasl.password=' has an empty value" in err
    assert "HIERTCN_KAFKA_SASL_PASSWORD" in err


@pytest.mark.parametrize(
    "text",
    [
        "client.id=",
        "ssl.key.location=",
        "sasl.kerberos.keytab=",
        "sasl.oauthbearer.token.endpoint.url=",
    ],
)
def test_empty_value_of_path_or_plain_key_accepted(text: str) -> None:
    assert check_kafka_setting_text(text) == text


@pytest.mark.parametrize("key", ["ssl.key.password", "sasl.oauthbearer.client.secret"])
def test_empty_secret_value_rejected(key: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match=f"'{key}=' has an empty value"):
        check_kafka_setting_text(f"{key}=")


def test_command_shows_plain_malformed_setting(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([*COMMANDS[0], "-X", "acks", "all"])

    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert (
        "error: argument -X: 'acks' is invalid: write a librdkafka setting as -X key=value" in err
    )
