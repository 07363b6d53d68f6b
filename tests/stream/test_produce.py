"""Tests of the load producer without a broker: keys, values, rate, limit and failures.

The round trip through a real broker is in tests/integration/test_produce.py.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO

import msgpack
import pytest
from confluent_kafka import KafkaError, KafkaException, Producer

from stream.errors import ConfigError
from stream.kafka_settings import parse_kafka_setting
from stream.produce import (
    EventProducer,
    ProduceConfig,
    ProduceError,
    check_linger_below_message_timeout,
    user_key,
)
from stream.records import Record


class FakeMessage:
    def topic(self) -> str:
        return "t"

    def partition(self) -> int:
        return 0


class FakeProducer:
    """Records what is produced; delivers each message on the next poll or flush."""

    def __init__(self, fail: bool = False, undelivered: int = 0, full_queue_once: bool = False):
        self.sent: list[tuple[str, bytes | None, bytes]] = []
        self.pending: list = []
        self.fail = fail
        self.undelivered = undelivered
        self.full_queue_once = full_queue_once

    def list_topics(self, timeout: float):
        return None

    def produce(self, topic, value, key, on_delivery) -> None:
        if self.full_queue_once:
            self.full_queue_once = False
            raise BufferError("queue full")
        self.sent.append((topic, key, value))
        self.pending.append(on_delivery)

    def poll(self, timeout: float) -> int:
        delivered = len(self.pending)
        for callback in self.pending:
            error = KafkaError(KafkaError._MSG_TIMED_OUT) if self.fail else None
            callback(error, FakeMessage())
        self.pending = []
        return delivered

    def flush(self, timeout: float) -> int:
        self.poll(0)
        return self.undelivered


def records(count: int) -> list[Record]:
    return [Record(n, {"user": f"u{n % 3}", "item": n, "ts": float(n)}) for n in range(count)]


def test_messages_keyed_by_user_in_file_order() -> None:
    fake = FakeProducer()
    producer = EventProducer(ProduceConfig("127.0.0.1:1", "events"), producer=fake)

    report = producer.run([*records(5), Record(5, None, "broken"), Record(6, {"user": 7})])

    assert report.produced == 6
    assert report.delivered == 6
    assert report.skipped == 1
    assert [key for _, key, _ in fake.sent] == [b"u0", b"u1", b"u2", b"u0", b"u1", b"7"]
    assert msgpack.unpackb(fake.sent[2][2]) == {"user": "u2", "item": 2, "ts": 2.0}
    assert {topic for topic, _, _ in fake.sent} == {"events"}


def test_limit_stops_early() -> None:
    fake = FakeProducer()
    config = ProduceConfig("127.0.0.1:1", "events", limit=3)

    report = EventProducer(config, producer=fake).run(records(10))

    assert report.produced == 3
    assert len(fake.sent) == 3


def test_rate_spaces_messages() -> None:
    config = ProduceConfig("127.0.0.1:1", "events", rate=100.0)
    started = time.perf_counter()

    report = EventProducer(config, producer=FakeProducer()).run(records(11))

    assert report.produced == 11
    assert time.perf_counter() - started >= 0.09


def test_full_queue_retried() -> None:
    fake = FakeProducer(full_queue_once=True)

    report = EventProducer(ProduceConfig("127.0.0.1:1", "t"), producer=fake).run(records(2))

    assert report.produced == 2
    assert len(fake.sent) == 2


def test_delivery_failures_counted() -> None:
    fake = FakeProducer(fail=True)

    report = EventProducer(ProduceConfig("127.0.0.1:1", "t"), producer=fake).run(records(4))

    assert report.failed == 4
    assert report.delivered == 0
    assert report.errors == {"_MSG_TIMED_OUT": 4}


def test_undelivered_after_flush_raises() -> None:
    fake = FakeProducer(undelivered=2)

    config = ProduceConfig("127.0.0.1:1", "t", flush_timeout=0.5)
    with pytest.raises(ProduceError, match=r"2 of 3 messages were not delivered within 0\.5 s"):
        EventProducer(config, producer=fake).run(records(3))


class SignallingProducer(FakeProducer):
    """Takes its delivery reports off the queue, as librdkafka does before it runs their
    callbacks, and sends SIGINT to this process just before the callback of message `at`."""

    def __init__(self, at: int) -> None:
        super().__init__()
        self.at = at
        self.reported = 0

    def __len__(self) -> int:
        return len(self.pending)

    def poll(self, timeout: float) -> int:
        reports, self.pending = self.pending, []
        for callback in reports:
            self.reported += 1
            if self.reported == self.at:
                os.kill(os.getpid(), signal.SIGINT)
            callback(None, FakeMessage())
        return len(reports)


def run_until_interrupted(fake: FakeProducer, count: int) -> EventProducer:
    """Run a producer over `count` records, expect the interrupt of its fake's SIGINT, and
    return the producer with the report of the stopped run."""
    producer = EventProducer(ProduceConfig("127.0.0.1:1", "t"), producer=fake)
    # A test run started in the background of a shell script ignores SIGINT, which
    # stop_requests leaves ignored.
    handler = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            producer.run(records(count))
    finally:
        signal.signal(signal.SIGINT, handler)
    return producer


def test_stop_signal_never_splits_a_delivery_report() -> None:
    fake = SignallingProducer(at=3)

    producer = run_until_interrupted(fake, 10)

    # The signal came during the third record's report: the run stopped after that record.
    assert producer.report.produced == 3
    assert producer.report.delivered == 3
    assert producer.report.queued == 0
    assert len(fake.sent) == 3


class FlushSignallingProducer(SignallingProducer):
    """Delivers nothing on poll, so that every report comes in the final flush."""

    def poll(self, timeout: float) -> int:
        return 0

    def flush(self, timeout: float) -> int:
        return super().poll(timeout)


def test_stop_signal_in_final_flush_counts_every_report() -> None:
    producer = run_until_interrupted(FlushSignallingProducer(at=4), 6)

    assert producer.report.produced == 6
    assert producer.report.delivered == 6
    assert producer.report.queued == 0
    assert producer.report.seconds > 0


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_unreachable_broker_fails_fast() -> None:
    config = ProduceConfig(f"127.0.0.1:{closed_port()}", "t", connect_timeout=1.0)
    started = time.perf_counter()

    with pytest.raises(ProduceError, match="did not respond within 1 s"):
        EventProducer(config).run(records(1))

    assert time.perf_counter() - started < 10


def test_user_key_of_event_maps() -> None:
    assert user_key({"user": "ü"}) == "ü".encode()
    assert user_key({"user": 12}) == b"12"
    assert user_key({"user": True}) is None
    assert user_key({"item": 1}) is None


def test_overrides_replace_defaults() -> None:
    config = ProduceConfig("h:1", "t", overrides={"acks": "1", "security.protocol": "SSL"})

    settings = config.producer_settings()

    assert settings["acks"] == "1"
    assert settings["security.protocol"] == "SSL"
    assert settings["bootstrap.servers"] == "h:1"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"brokers": ""}, "--brokers"),
        ({"topic": ""}, "--topic"),
        ({"rate": 0.0}, "--rate 0 is invalid"),
        ({"limit": -1}, "limit -1"),
        ({"connect_timeout": -1.0}, "--connect-timeout -1 is invalid"),
        ({"connect_timeout": 0.0}, "--connect-timeout 0 is invalid"),
        ({"connect_timeout": float("nan")}, "--connect-timeout nan is invalid"),
        ({"connect_timeout": float("inf")}, "--connect-timeout inf is invalid"),
        ({"flush_timeout": -1.0}, "--flush-timeout -1 is invalid"),
        ({"flush_timeout": 0.0001}, "--flush-timeout 0.0001 is invalid"),
        ({"flush_timeout": 0.005}, "--flush-timeout 0.005 is invalid"),
        ({"flush_timeout": float("nan")}, "--flush-timeout nan is invalid"),
        ({"flush_timeout": 1e7}, "--flush-timeout 10000000 is invalid"),
    ],
)
def test_invalid_produce_config_rejected(changes: dict, message: str) -> None:
    arguments = {"brokers": "h:1", "topic": "t", **changes}

    with pytest.raises(ConfigError, match=message):
        ProduceConfig(**arguments)


@pytest.mark.parametrize(
    ("flush_timeout", "overrides", "message"),
    [
        (
            1.0,
            {"linger.ms": "5000"},
            "-X linger.ms=5000 is not below the message timeout (1000 ms from --flush-timeout 1)"
            ", and librdkafka requires message.timeout.ms above linger.ms (or 0 for no limit): "
            "lower -X linger.ms or raise --flush-timeout above 5 s",
        ),
        (
            1.0,
            {"linger.ms": "1000"},
            "-X linger.ms=1000 is not below the message timeout (1000 ms from --flush-timeout 1)",
        ),
        (
            60.0,
            {"linger.ms": "1000", "message.timeout.ms": "500"},
            "-X linger.ms=1000 is not below the message timeout (-X message.timeout.ms=500), and "
            "librdkafka requires message.timeout.ms above linger.ms (or 0 for no limit): "
            "lower -X linger.ms or raise -X message.timeout.ms above 1000 ms",
        ),
        (
            60.0,
            {"queue.buffering.max.ms": "900", "delivery.timeout.ms": "900"},
            "-X queue.buffering.max.ms=900 is not below the message timeout "
            "(-X delivery.timeout.ms=900)",
        ),
        (
            60.0,
            {"message.timeout.ms": "3"},
            "linger.ms=5 (the default of this command) is not below the message timeout "
            "(-X message.timeout.ms=3)",
        ),
        (
            60.0,
            {"linger.ms": "2000", "message.timeout.ms": "5000", "delivery.timeout.ms": "1000"},
            "-X linger.ms=2000 is not below the message timeout (-X delivery.timeout.ms=1000)",
        ),
    ],
)
def test_linger_not_below_message_timeout_rejected(
    flush_timeout: float, overrides: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        ProduceConfig("h:1", "t", overrides=overrides, flush_timeout=flush_timeout)

    assert message in str(caught.value)


def test_linger_check_env_sources_use_equals() -> None:
    settings = {"linger.ms": "5000", "message.timeout.ms": 1000}
    env_names = {"linger.ms": "HIERTCN_KAFKA_LINGER_MS"}

    with pytest.raises(ConfigError) as caught:
        check_linger_below_message_timeout(
            settings, {"linger.ms": "5000"}, "HIERTCN_FLUSH_TIMEOUT", env_names
        )

    message = str(caught.value)
    assert "HIERTCN_KAFKA_LINGER_MS=5000 is not below the message timeout" in message
    assert "(1000 ms from HIERTCN_FLUSH_TIMEOUT=1)" in message
    assert "raise HIERTCN_FLUSH_TIMEOUT above 5 s" in message


@pytest.mark.parametrize(
    ("flush_timeout", "overrides"),
    [
        (1.0, {"linger.ms": "999.9"}),
        (60.0, {"linger.ms": "1000", "message.timeout.ms": "0"}),
        (60.0, {"linger.ms": "2000", "message.timeout.ms": "1000", "delivery.timeout.ms": "3000"}),
        (60.0, {"linger.ms": "not a number"}),
    ],
)
def test_linger_below_message_timeout_accepted(
    flush_timeout: float, overrides: dict[str, str]
) -> None:
    config = ProduceConfig("h:1", "t", overrides=overrides, flush_timeout=flush_timeout)

    assert config.overrides == overrides


def test_linger_check_agrees_with_librdkafka() -> None:
    # Each pair sits on one side of librdkafka's own rule; the Producer is created offline.
    accepted = {"linger.ms": "999.9", "message.timeout.ms": "1000"}
    rejected = {"linger.ms": "1000", "message.timeout.ms": "1000"}
    # The logger keeps librdkafka's connection errors off stderr.
    settings = {"bootstrap.servers": f"127.0.0.1:{closed_port()}", "logger": logging.getLogger()}

    Producer({**settings, **accepted}).flush(0)
    with pytest.raises(KafkaException, match=re.escape("must be greater than `linger.ms`")):
        Producer({**settings, **rejected})
    ProduceConfig("h:1", "t", overrides=accepted)
    with pytest.raises(ConfigError, match="is not below the message timeout"):
        ProduceConfig("h:1", "t", overrides=rejected)


def test_invalid_kafka_setting_is_config_error() -> None:
    config = ProduceConfig("h:1", "t", overrides={"linger.ms": "soon"})

    with pytest.raises(ConfigError) as caught:
        EventProducer(config)

    assert str(caught.value) == (
        "librdkafka setting linger.ms is invalid: Invalid value for configuration property "
        '"linger.ms": fix or remove -X linger.ms'
    )
    assert caught.value.exit_code == 2


def test_setting_parsed() -> None:
    assert parse_kafka_setting("acks=all") == ("acks", "all")
    assert parse_kafka_setting("sasl.password=a=b") == ("sasl.password", "a=b")
    with pytest.raises(ConfigError, match=r"^-X 'acks' is invalid: write .* as -X key=value"):
        parse_kafka_setting("acks")


def test_unreachable_broker_exit_code_matches_run() -> None:
    assert ProduceError.exit_code == 1


def _run_produce_command(monkeypatch: pytest.MonkeyPatch, events: Path, *extra: str) -> int:
    from stream import cli
    from stream.commands import produce as produce_command

    def fake_producer(config: ProduceConfig) -> EventProducer:
        return EventProducer(config, FakeProducer())

    monkeypatch.setattr(produce_command, "EventProducer", fake_producer)
    argv = ["produce", "--events", str(events), "--brokers", "127.0.0.1:1", "--topic", "t"]
    return cli.main([*argv, *extra])


def test_produce_command_without_readable_record_exits_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    events = tmp_path / "garbage.jsonl"
    events.write_text("not json\n[1]\n")

    code = _run_produce_command(monkeypatch, events)

    captured = capsys.readouterr()
    assert code == 2
    assert "skipped 2 unreadable records (run with -v to list them)" in captured.out
    assert "no readable record" in captured.err


@pytest.mark.parametrize("flag", ["--connect-timeout", "--flush-timeout"])
def test_produce_command_negative_timeout_exits_2(
    flag: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    events = tmp_path / "events.jsonl"
    events.write_text('{"user": "u1", "item": "i1", "ts": 1600000000}\n')

    code = _run_produce_command(monkeypatch, events, flag, "-1")

    captured = capsys.readouterr()
    assert code == 2
    assert f"{flag} -1 is invalid: use a number of seconds" in captured.err
    assert "Traceback" not in captured.err


def test_produce_command_reads_training_csv(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    events = tmp_path / "log.csv"
    events.write_text("user,item,timestamp\nu1,5,100\nu2,6,101\n")

    code = _run_produce_command(monkeypatch, events)

    assert code == 0
    assert "produced 2, delivered 2" in capsys.readouterr().out


@pytest.mark.parametrize("name", ["shop.tsv", "shop.jsonl"])
def test_produce_command_column_flags(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from stream import cli
    from stream.commands import produce as produce_command

    events = tmp_path / name
    if events.suffix == ".tsv":
        events.write_text("customer_id\tcategory\tclock\nC1\t5\t1600000000\n")
    else:
        events.write_text('{"customer_id": "C1", "category": "5", "clock": "1600000000"}\n')
    fake = FakeProducer()
    monkeypatch.setattr(
        produce_command, "EventProducer", lambda config: EventProducer(config, fake)
    )
    argv = ["produce", "--events", str(events), "--brokers", "127.0.0.1:1", "--topic", "t"]
    flags = ["--user-col", "customer_id", "--item-col", "category", "--time-col", "clock"]

    code = cli.main([*argv, *flags])

    assert code == 0
    assert "produced 1, delivered 1" in capsys.readouterr().out
    ((_, key, value),) = fake.sent
    assert key == b"C1"
    assert msgpack.unpackb(value) == {"user": "C1", "item": "5", "ts": 1600000000}


def write_otto_in_seconds(path: Path) -> None:
    event = '{"aid": 5, "ts": 1659304800, "type": "clicks"}'
    path.write_text(f'{{"session": 0, "events": [{event}, {event}]}}\n')


def test_produce_rejects_otto_unit_before_connect(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from stream import cli

    events = tmp_path / "train.jsonl"
    write_otto_in_seconds(events)
    brokers = f"127.0.0.1:{closed_port()}"
    argv = ["produce", "--events", str(events), "--brokers", brokers, "--topic", "t"]

    code = cli.main([*argv, "--connect-timeout", "30"])

    assert code == 2
    error = capsys.readouterr().err
    assert "pass --otto-time-unit s" in error
    assert "did not respond" not in error


def test_produce_reads_otto_in_seconds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    events = tmp_path / "train.jsonl"
    write_otto_in_seconds(events)

    code = _run_produce_command(monkeypatch, events, "--otto-time-unit", "s")

    assert code == 0
    assert "produced 2" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            ["--flush-timeout", "1", "-X", "linger.ms=5000"],
            "-X linger.ms=5000 is not below the message timeout (1000 ms from --flush-timeout 1)",
        ),
        (
            ["-X", "linger.ms=1000", "-X", "delivery.timeout.ms=500"],
            "-X linger.ms=1000 is not below the message timeout (-X delivery.timeout.ms=500)",
        ),
        (["-X", "linger.ms=soon"], "librdkafka setting linger.ms is invalid: Invalid value"),
    ],
)
def test_produce_command_linger_checked_before_connect(
    extra: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from stream import cli

    events = tmp_path / "events.jsonl"
    events.write_text('{"user": "u1", "item": "i1", "ts": 1600000000}\n')
    brokers = f"127.0.0.1:{closed_port()}"
    argv = ["produce", "--events", str(events), "--brokers", brokers, "--topic", "t"]

    code = cli.main([*argv, "--connect-timeout", "30", *extra])

    error = capsys.readouterr().err
    assert code == 2
    assert message in error
    assert "did not respond" not in error
    assert "Traceback" not in error


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            ["-X", "bootstrap.servers=127.0.0.1:1"],
            "hiertcn-stream: error: -X bootstrap.servers would replace the value of --brokers: "
            "remove it and use --brokers",
        ),
        (
            ["-X", "linger.ms=-1"],
            "hiertcn-stream: error: librdkafka setting linger.ms is invalid: Configuration "
            'property "linger.ms" value -1 is outside allowed range 0..900000: fix or remove -X '
            "linger.ms",
        ),
        (
            ["--flush-timeout", "30", "-X", "delivery.timeout.ms=5000"],
            "hiertcn-stream: error: -X delivery.timeout.ms would replace the delivery wait of "
            "--flush-timeout 30: pass only one of them",
        ),
    ],
)
def test_produce_command_rejects_setting_in_one_line(
    extra: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from stream import cli

    events = tmp_path / "events.jsonl"
    events.write_text('{"user": "u1", "item": "i1", "ts": 1600000000}\n')
    brokers = f"127.0.0.1:{closed_port()}"
    argv = ["produce", "--events", str(events), "--brokers", brokers, "--topic", "t"]

    code = cli.main([*argv, "--connect-timeout", "30", *extra])

    assert code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert errors == [message]


def test_produce_config_rejects_bootstrap_alias() -> None:
    with pytest.raises(ConfigError, match=r"metadata\.broker\.list \(an alias of bootstrap"):
        ProduceConfig("h:1", "t", overrides={"metadata.broker.list": "h:2"})


def test_invalid_topic_name_rejected() -> None:
    with pytest.raises(ConfigError) as raised:
        ProduceConfig("127.0.0.1:1", "bad topic")

    assert str(raised.value).startswith("--topic 'bad topic' is invalid: use a topic name ")


def grouped_by_user() -> list[Record]:
    """Two users' events, all of the first user before those of the second."""
    times = {"u0": [0.0, 600.0, 5_000.0], "u1": [100.0, 2_000.0, 6_000.0]}
    fields = [
        {"user": user, "item": 1, "ts": ts} for user, ts_list in times.items() for ts in ts_list
    ]
    return [Record(number, event) for number, event in enumerate(fields)]


def test_events_behind_watermark_counted() -> None:
    config = ProduceConfig("127.0.0.1:1", "t", session_gap=1_800.0)

    report = EventProducer(config, producer=FakeProducer()).run(grouped_by_user())

    # u1's 100 is 4900 s and its 2000 is 3000 s behind 5000, more than the gap. 6000 is newer.
    assert report.late == 2


def test_time_ordered_events_not_late() -> None:
    config = ProduceConfig("127.0.0.1:1", "t", session_gap=1_800.0)
    ordered = sorted(grouped_by_user(), key=lambda record: record.fields["ts"])

    report = EventProducer(config, producer=FakeProducer()).run(ordered)

    assert report.late == 0


def test_failed_delivery_not_checked_for_order() -> None:
    config = ProduceConfig("127.0.0.1:1", "t", session_gap=1_800.0)

    report = EventProducer(config, producer=FakeProducer(fail=True)).run(grouped_by_user())

    assert report.late == 0


def write_grouped_log(path: Path) -> None:
    lines = [
        '{"user": "u0", "item": "i1", "ts": 1600000000}',
        '{"user": "u0", "item": "i2", "ts": 1600005000}',
        '{"user": "u1", "item": "i1", "ts": 1600000100}',
    ]
    path.write_text("\n".join(lines) + "\n")


def test_produce_command_warns_of_late_events(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    events = tmp_path / "grouped.jsonl"
    write_grouped_log(events)

    with caplog.at_level(logging.WARNING, logger="stream.commands.produce"):
        code = _run_produce_command(monkeypatch, events)

    assert code == 0
    (warning,) = [r.getMessage() for r in caplog.records if r.name == "stream.commands.produce"]
    assert warning.startswith(
        f"1 of 3 delivered events in {events} are older than the newest event time published "
        "before them on their partition minus the session gap (1800 s)"
    )
    assert "pass --order time" in warning


@pytest.mark.parametrize(
    "flags",
    [
        ["--order", "time"],  # sorted by time, no event falls behind its partition
        ["--session-gap", "5000"],  # a gap wider than the log's lag behind its partition
    ],
)
def test_produce_command_no_late_warning(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    flags: list[str],
) -> None:
    events = tmp_path / "grouped.jsonl"
    write_grouped_log(events)

    with caplog.at_level(logging.WARNING, logger="stream.commands.produce"):
        code = _run_produce_command(monkeypatch, events, *flags)

    assert code == 0
    assert [r for r in caplog.records if r.name == "stream.commands.produce"] == []


def test_produce_command_invalid_session_gap_exits_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    events = tmp_path / "grouped.jsonl"
    write_grouped_log(events)

    code = _run_produce_command(monkeypatch, events, "--session-gap", "0")

    captured = capsys.readouterr()
    assert code == 2
    assert "--session-gap 0 is invalid: use a value from 0.001 to 31536000000" in captured.err
    assert "Traceback" not in captured.err


# Runs `hiertcn-stream produce` with Python's KeyboardInterrupt handler for SIGINT, which a child
# of a process that ignores SIGINT (a background job of a non-interactive shell) would lack.
PRODUCE_WITH_SIGINT = """
import signal, sys
signal.signal(signal.SIGINT, signal.default_int_handler)
from stream.cli import main
sys.exit(main(sys.argv[1:]))
"""


def wait_for_line(stream: IO[str], text: str, seconds: float) -> bool:
    """Read `stream` in a thread until a line contains `text`, or return False after `seconds`."""
    found = threading.Event()

    def read() -> None:
        for line in stream:
            if text in line:
                found.set()
                return

    threading.Thread(target=read, daemon=True).start()
    return found.wait(seconds)


def test_sigint_stops_broker_wait(tmp_path: Path) -> None:
    events = tmp_path / "events.jsonl"
    events.write_text('{"user": "u1", "item": "i1", "ts": 1600000000}\n')
    argv = ["produce", "--events", str(events), "--brokers", f"127.0.0.1:{closed_port()}",
            "--topic", "t", "--connect-timeout", "600"]  # fmt: skip
    process = subprocess.Popen(
        [sys.executable, "-c", PRODUCE_WITH_SIGINT, *argv],
        stderr=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    try:
        assert process.stderr is not None
        waiting = wait_for_line(process.stderr, "waiting up to 600 s for broker", 60)
        time.sleep(1.0)  # inside list_topics, where librdkafka blocks
        process.send_signal(signal.SIGINT)
        sent = time.monotonic()
        code = process.wait(timeout=30)
        elapsed = time.monotonic() - sent
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()

    assert waiting
    assert code == 130
    assert elapsed < 2.0


def test_signal_while_reading_file_says_nothing_was_produced(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from hiertcn.errors import Terminated
    from stream.cli import main
    from stream.commands import produce as produce_command

    def read_until_signal(args: object) -> list[Record]:
        raise Terminated  # a SIGTERM while `--order time` reads the whole file

    monkeypatch.setattr(produce_command, "read_records_from_args", read_until_signal)
    events = tmp_path / "events.jsonl"
    events.write_text('{"user": "u1", "item": "i1", "ts": 1600000000}\n')

    code = main(["produce", "--events", str(events), "--brokers", "127.0.0.1:1", "--topic", "t"])

    captured = capsys.readouterr()
    assert code == 143
    assert captured.out.startswith("produced 0, delivered 0, failed 0")
    assert f"interrupted before the first event of {events} was produced" in captured.err
