"""Errors for a bad flag, variable or setting value read "<source> <value> is invalid: <fix>"."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from stream.config import build_config, parse_int, parse_tolerance
from stream.errors import ConfigError
from stream.events import EventConfig
from stream.kafka_settings import parse_kafka_setting
from stream.records import EventFileError, read_records
from stream.replay import ReplayConfig

REQUIRED = {"brokers": "127.0.0.1:9092", "bundle": Path("bundle")}


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        (
            {"HIERTCN_STATE_SYNC": "maybe"},
            "HIERTCN_STATE_SYNC='maybe' is invalid: use true or false, or unset it",
        ),
        (
            {"HIERTCN_MAX_FUTURE_SECONDS": "-1"},
            "HIERTCN_MAX_FUTURE_SECONDS='-1' is invalid: use off or a number of seconds >= 0, "
            "or unset it",
        ),
        (
            {"HIERTCN_STATE_MAP_SIZE": "big"},
            "HIERTCN_STATE_MAP_SIZE='big' is invalid: use bytes or a number with a unit, for "
            "example 1GiB, or unset it",
        ),
        (
            {"HIERTCN_PROCESSES": "two"},
            "HIERTCN_PROCESSES='two' is invalid: use a whole number, or unset it",
        ),
    ],
)
def test_unparsable_variable_message(environ: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        build_config(REQUIRED, environ)

    assert str(raised.value) == message


def test_parser_error_names_value_and_fix() -> None:
    with pytest.raises(ValueError) as raised:
        parse_int("2.5")
    assert str(raised.value) == "'2.5' is invalid: use a whole number"

    with pytest.raises(ValueError) as raised:
        parse_tolerance("nan")
    assert str(raised.value) == "'nan' is invalid: use off or a number of seconds >= 0"


def test_poll_interval_not_integer_message() -> None:
    with pytest.raises(ConfigError) as raised:
        build_config(REQUIRED, {}, ["max.poll.interval.ms=soon"])

    assert str(raised.value) == (
        "-X max.poll.interval.ms='soon' is invalid: use a whole number of milliseconds"
    )


def test_kafka_setting_without_equals_message() -> None:
    with pytest.raises(ConfigError) as raised:
        parse_kafka_setting("acks")

    assert str(raised.value) == (
        "-X 'acks' is invalid: write a librdkafka setting as -X key=value, for example -X acks=all"
    )


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: ReplayConfig(batch_size=0), "batch size 0 is invalid: use an integer >= 1"),
        (lambda: ReplayConfig(recall_k=0), "K 0 for Recall@K is invalid: use an integer >= 1"),
        (lambda: EventConfig(ts_unit="us"), "ts_unit 'us' is invalid: use 's' or 'ms'"),
        (
            lambda: EventConfig(max_id_length=0),
            "max_id_length 0 is invalid: use a positive integer",
        ),
    ],
)
def test_config_field_message(build: Callable[[], object], message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        build()

    assert str(raised.value) == message


def test_otto_time_unit_message(tmp_path: Path) -> None:
    path = tmp_path / "train.jsonl"
    path.write_text('{"session": 0, "events": [{"aid": 5, "ts": 1659304800, "type": "clicks"}]}\n')

    with pytest.raises(EventFileError) as raised:
        list(read_records(path, "otto", otto_time_unit="h"))

    assert str(raised.value) == "--otto-time-unit 'h' is invalid: use s or ms"
